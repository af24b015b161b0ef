"""Columns reach the judges: the dataset row's other fields go to the judges that declare them
(TRL's ``f(prompts, completions, **columns)``), the built-in ``answer`` judge checks completions
against an answer column, ``rules.callable`` and the TRL-style ``reward_function`` judge get
columns, old two-argument judges keep working, and a GSM8K-format run hands the column through."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from tui_trainer import events as ev
from tui_trainer.config import AdapterConfig, Config, DataConfig, JudgeSpec
from tui_trainer.data import PromptSet
from tui_trainer.errors import ConfigError, DataError, JudgeFailure
from tui_trainer.plugins.builtin.answer import final_number
from tui_trainer.plugins.judge import ColumnUse, column_use
from tui_trainer.plugins.manager import JudgeRegistry, build_judge_set, load_plugins
from tui_trainer.run import build_run

REG = load_plugins(entry_points=[], disabled=[])


def judge_set(name, options=None, registry=REG, **kw):
    return build_judge_set([{"name": name, "options": options or {}}], registry=registry, failure="stop", **kw)


# ----------------------------------------------------------------------------- declaring columns

def test_column_use_reads_the_signature():
    assert column_use(lambda prompts, completions: None) == ColumnUse()
    assert column_use(lambda p, c, answer, tests=None: None) == ColumnUse(False, ("answer", "tests"), ("answer",))
    assert column_use(lambda p, c, **kw: None) == ColumnUse(True, (), ())
    # TRL's style, everything by keyword: prompts / completions / completion_ids are not columns
    use = column_use(lambda prompts, completions, answer, completion_ids=None, **kw: None, skip=0)
    assert use == ColumnUse(True, ("answer",), ("answer",))


class TwoArgs:
    """A judge written before columns existed."""

    def __init__(self, options, context):
        self.calls = []

    def score(self, prompts, completions):
        self.calls.append((prompts, completions))
        return [float(len(c)) for c in completions]


class Named:
    def __init__(self, options, context):
        self.calls = []

    def score(self, prompts, completions, answer, level="easy"):
        self.calls.append({"answer": answer, "level": level})
        return [1.0 if a is not None and a in c else 0.0 for c, a in zip(completions, answer)]


class Everything:
    def __init__(self, options, context):
        self.calls = []

    def score(self, prompts, completions, **columns):
        self.calls.append(columns)
        return [0.0] * len(completions)


def registry():
    reg = JudgeRegistry()

    class Plugin:
        @staticmethod
        def register_judges(register):
            register("two_args", TwoArgs)
            register("named", Named)
            register("everything", Everything)

    from tui_trainer.plugins.hookspecs import hookimpl

    Plugin.register_judges = hookimpl(Plugin.register_judges)
    reg.add_plugin("test", Plugin, "0")
    return reg


ROWS = [{"answer": "4", "id": 1}, {"answer": "9", "id": 2}, {"id": 3}]


def test_judges_get_the_columns_they_declare_and_old_judges_none():
    reg = registry()
    js = build_judge_set([{"name": "two_args"}, {"name": "named"}, {"name": "everything"}], registry=reg,
                         failure="stop")
    res = js.score(["a", "b", "c"], ["is 4", "is 8", "is 3"], columns=ROWS)
    two, named, every = (m.judge for m in js.members)
    assert two.calls == [(["a", "b", "c"], ["is 4", "is 8", "is 3"])]
    # named: only answer (level has a default and no row has it); a row without it gives None
    assert named.calls == [{"answer": ["4", "9", None], "level": "easy"}]
    assert res.per_judge["named"] == [1.0, 0.0, 0.0]
    assert every.calls == [{"answer": ["4", "9", None], "id": [1, 2, 3]}]
    assert js.required_columns() == {"named": ("answer",)}
    # without a dataset (`tui-trainer judge`), the two-argument judge is called as ever
    assert judge_set("two_args", registry=reg).score(["p"], ["xyz"]).scores == [3.0]


# ----------------------------------------------------------------------------- the answer judge

@pytest.mark.parametrize("text, number", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", Fraction(72)),
    ("so the total is\n#### 1,234", Fraction(1234)),
    ("#### -3.50", Fraction("-3.5")),
    ("The answer is $\\boxed{\\frac{3}{4}}$.", Fraction(3, 4)),
    ("first \\boxed{2}, then \\boxed{{10}}", Fraction(10)),
    ("5 apples and 7 pears make 12 fruit.", Fraction(12)),
    ("no digits here", None),
])
def test_final_number(text, number):
    assert final_number(text) == number


GSM_GOLD = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"


def test_answer_judge_scores_right_and_wrong_gsm8k_completions():
    js = judge_set("answer")
    completions = ["48 + 24 = 72 clips.\n#### 72", "She sold 70 clips.\n#### 70", "In total: 72.0", "I don't know"]
    res = js.score(["q"] * 4, completions, columns=[{"answer": GSM_GOLD}] * 4)
    assert res.scores == [1.0, 0.0, 1.0, 0.0]
    assert js.required_columns() == {"answer": ("answer",)}


def test_answer_judge_match_kinds_column_and_extract():
    js = judge_set("answer", {"match": "exact", "column": "solution"})
    assert js.required_columns() == {"answer": ("solution",)}
    cols = [{"solution": "Paris"}] * 3
    assert js.score(["q"] * 3, ["Paris", "paris", "It is \\boxed{Paris}"], columns=cols).scores == [1.0, 0.0, 1.0]
    js = judge_set("answer", {"match": "normalized", "column": "solution"})
    assert js.score(["q"] * 3, ["  PARIS. ", "$\\text{Paris}$", "Lyon"], columns=cols).scores == [1.0, 1.0, 0.0]
    js = judge_set("answer", {"match": "regex"})
    cols = [{"answer": r"^(yes|y)\b"}] * 3
    assert js.score(["q"] * 3, ["yes indeed", "Y", "no"], columns=cols).scores == [1.0, 0.0, 0.0]
    js = judge_set("answer", {"extract": r"Answer:\s*(\S+)"})
    cols = [{"answer": 42}] * 3  # a number in the JSON is an answer too
    assert js.score(["q"] * 3, ["Answer: 42 (not 41)", "41 ... Answer: 41", "42"], columns=cols).scores == \
        [1.0, 0.0, 0.0]


def test_answer_judge_without_the_column_fails_its_call_in_one_line():
    with pytest.raises(JudgeFailure, match="no 'answer' column was passed"):
        judge_set("answer").score(["q"], ["#### 1"])
    with pytest.raises(ConfigError, match="not a valid regex"):
        judge_set("answer", {"extract": "("})
    with pytest.raises(ConfigError, match="must be one of number, exact, normalized, regex"):
        judge_set("answer", {"match": "fuzzy"})


def test_answer_without_a_number_skips_its_samples_and_says_so():
    logged = []
    js = judge_set("answer", log=logged.append)
    res = js.score(["q", "q"], ["#### 1", "#### 2"], columns=[{"answer": "n/a"}, {"answer": "#### 2"}])
    assert res.scores == [None, 1.0]
    assert len(logged) == 1 and "holds no number" in logged[0]


# ----------------------------------------------------------------------------- rules.callable, reward_function

def test_rules_callable_gets_the_row_columns_one_sample_at_a_time(tmp_path):
    (tmp_path / "checks.py").write_text(
        "def contains_answer(prompt, completion, answer):\n"
        "    return 1.0 if str(answer) in completion else 0.0\n"
        "def plain(prompt, completion):\n"
        "    return float(len(completion))\n")
    js = judge_set("rules", {"callable": f"{tmp_path / 'checks.py'}:contains_answer"})
    assert js.required_columns() == {"rules": ("answer",)}
    res = js.score(["a", "b"], ["it is 4", "it is 8"], columns=[{"answer": 4, "x": 1}, {"answer": 9, "x": 2}])
    assert res.scores == [1.0, 0.0]
    js = judge_set("rules", {"callable": f"{tmp_path / 'checks.py'}:plain"})
    assert js.required_columns() == {}
    assert js.score(["a"], ["abc"], columns=[{"answer": 4}]).scores == [3.0]


def test_reward_function_is_called_as_trl_calls_it(tmp_path):
    (tmp_path / "rewards.py").write_text(
        "CALLS = []\n"
        "def correctness(prompts, completions, answer, **kwargs):\n"
        "    CALLS.append(dict(prompts=prompts, completions=completions, answer=answer, **kwargs))\n"
        "    return [1.0 if c.strip() == a else 0.0 if a is not None else None for c, a in zip(completions, answer)]\n"
        "def needs_ids(prompts, completions, completion_ids, **kwargs):\n"
        "    return [0.0] * len(completions)\n"
        "def only_completions(completions, **kwargs):\n"
        "    return [float(len(c)) for c in completions]\n")
    js = judge_set("reward_function", {"function": f"{tmp_path / 'rewards.py'}:correctness"})
    assert js.required_columns() == {"reward_function": ("answer",)}
    res = js.score(["p1", "p2", "p3"], ["4", "5", "x"], columns=[{"answer": "4", "level": 1},
                                                                {"answer": "6", "level": 2}, {"answer": "x"}])
    assert res.scores == [1.0, 0.0, 1.0]
    calls = js.members[0].judge.func.__globals__["CALLS"]
    assert calls == [{"prompts": ["p1", "p2", "p3"], "completions": ["4", "5", "x"], "answer": ["4", "6", "x"],
                      "level": [1, 2, None]}]
    js = judge_set("reward_function", {"func": f"{tmp_path / 'rewards.py'}:only_completions"})
    assert js.score(["p"], ["abcd"], columns=[{"answer": "1"}]).scores == [4.0]
    with pytest.raises(ConfigError, match="needs completion_ids, which tui-trainer does not pass"):
        judge_set("reward_function", {"function": f"{tmp_path / 'rewards.py'}:needs_ids"})
    with pytest.raises(ConfigError, match="option function is required"):
        judge_set("reward_function")
    with pytest.raises(ConfigError, match="no such file"):
        judge_set("reward_function", {"function": f"{tmp_path / 'nope.py'}:f"})


# ----------------------------------------------------------------------------- a run

GSM_ROWS = [
    {"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"}
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1)]
]


def test_gsm8k_format_run_hands_each_row_answer_to_the_judges(tiny_dir, tmp_path):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in GSM_ROWS))
    (tmp_path / "recorder.py").write_text(
        "import json\n"
        "def record(prompts, completions, answer, **kwargs):\n"
        f"    with open({str(tmp_path / 'calls.jsonl')!r}, 'a') as f:\n"
        "        f.write(json.dumps({'prompts': prompts, 'completions': completions, 'answer': answer}) + '\\n')\n"
        "    return [0.0] * len(completions)\n")
    cfg = Config(
        model=str(tiny_dir), run_dir=str(tmp_path / "run"),
        data=DataConfig(path=str(data), prompt_field="question", chat_template=False, split="train[:4]"),
        steps=2, batch_size=2, num_samples=2, max_new_tokens=6, minibatch_size=4, ppo_epochs=1,
        save_every=0, seed=0, adapter=AdapterConfig(rank=2, layers=1),
        judges=[JudgeSpec("answer", 1.0, {}),
                JudgeSpec("reward_function", 1.0, {"function": f"{tmp_path / 'recorder.py'}:record"})])
    events: list = []
    state = build_run(cfg, observer=events.append).run()
    assert state.status == "finished"
    gold = {r["question"]: r["answer"] for r in GSM_ROWS[:4]}
    calls = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 2
    for call in calls:
        assert len(call["answer"]) == len(call["prompts"]) == len(call["completions"]) == 4
        assert call["answer"] == [gold[p] for p in call["prompts"]]  # each sample got its own row's answer
    # the answer judge scored every sample (a random model's digits may even be right): 0 or 1
    samples = [s for e in events if isinstance(e, list) for s in e if isinstance(s, ev.Sample)]
    assert len(samples) == 8 and {s.scores["answer"] for s in samples} <= {0.0, 1.0}
    for s in samples:
        want = 1.0 if final_number(s.completion) == final_number(gold[s.prompt]) else 0.0
        assert s.scores["answer"] == want


def test_a_run_whose_rows_lack_the_answer_stops_before_the_model_loads(tiny_dir, tmp_path):
    data = tmp_path / "g.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [GSM_ROWS[0], {"question": "2+2?"}]))
    cfg = Config(model=str(tiny_dir), run_dir=str(tmp_path / "run"),
                 data=DataConfig(path=str(data), prompt_field="question"), judges=[JudgeSpec("answer")])
    with pytest.raises(DataError, match=r"g.jsonl line 2: no 'answer' value, which judge answer needs"):
        build_run(cfg).run()
    assert not (tmp_path / "run").exists()


def test_prompts_keep_columns_through_tokenizing(tmp_path):
    class Chars:
        chat_template = "x"

        def encode(self, text):
            return [ord(c) for c in text]

    data = tmp_path / "g.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in GSM_ROWS[:2]))
    ps = PromptSet.load(DataConfig(path=str(data), prompt_field="question", chat_template=False), Chars())
    assert [p.columns for p in ps.prompts] == [{"answer": GSM_ROWS[0]["answer"]}, {"answer": GSM_ROWS[1]["answer"]}]


def test_judge_command_takes_columns(capsys):
    from tui_trainer.cli import main

    assert main(["judge", "answer", "--prompt", "What is 3 + 4?", "--a", "3 + 4 = 7. #### 7",
                 "--column", "answer=#### 7"]) == 0
    assert "score: 1.0000" in capsys.readouterr().out
    assert main(["judge", "answer", "--prompt", "q", "--a", "#### 8", "-c", "answer=#### 7"]) == 0
    assert "score: 0.0000" in capsys.readouterr().out
