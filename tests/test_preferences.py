"""Preference data for reward models: {prompt, chosen, rejected} files in every form, the human
judge's labels.jsonl (shown orders, ties, skips, ratings, a line cut short), and bad input."""

from __future__ import annotations

import json

import pytest

from tui_trainer.errors import DataError
from tui_trainer.plugins.builtin.human import HumanJudge
from tui_trainer.plugins.judge import JudgeContext, Verdict
from tui_trainer.preferences import Pair, read_preferences


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_json_and_parquet_rows(tmp_path):
    rows = [{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."},
            {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Q?"}],
             "chosen": "A.", "rejected": "B."}]
    for path in (write_jsonl(tmp_path / "p.jsonl", rows), tmp_path / "p.json", tmp_path / "p.parquet"):
        if path.suffix == ".json":
            path.write_text(json.dumps(rows))
        elif path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist([rows[0], {**rows[0], "prompt": "Other?"}]), path)
        pairs = read_preferences([str(path)]).pairs
        assert pairs[0] == Pair((("user", "Hi?"),), "Hello!", "Go away.", pairs[0].where)
        if path.suffix != ".parquet":
            assert pairs[1].messages == rows[1]["prompt"] and pairs[1].prompt_text == "Q?"
            assert (pairs[1].chosen, pairs[1].rejected) == ("A.", "B.")
        else:
            assert pairs[1].prompt_text == "Other?"


def test_conversations_ultrafeedback_style(tmp_path):
    """chosen / rejected as conversations; the prompt comes from the messages before the reply."""
    conv = [{"role": "user", "content": "2+2?"}]
    path = write_jsonl(tmp_path / "uf.jsonl", [
        {"chosen": conv + [{"role": "assistant", "content": "4"}],
         "rejected": conv + [{"role": "assistant", "content": "5"}]},
        {"prompt": "3+3?", "chosen": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}],
         "rejected": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "7"}]},
    ])
    a, b = read_preferences(str(path)).pairs
    assert (a.messages, a.chosen, a.rejected) == (conv, "4", "5")
    assert (b.prompt_text, b.chosen, b.rejected) == ("3+3?", "6", "7")


@pytest.mark.parametrize("row, message", [
    ({"prompt": "x", "chosen": "y"}, "line 2: no field 'rejected'"),
    ({"prompt": "x", "rejected": "y"}, "line 2: no field 'chosen'"),
    ({"chosen": "y", "rejected": "z"}, "line 2: no field 'prompt'"),
    ({"prompt": "x", "chosen": 3, "rejected": "z"}, "line 2: 'chosen' must be text"),
    ({"prompt": "x", "chosen": [{"role": "user", "content": "y"}], "rejected": "z"},
     "line 2: the last message of 'chosen' must be the assistant's reply"),
    ({"prompt": "  ", "chosen": "y", "rejected": "z"}, "line 2: the prompt is empty"),
])
def test_bad_rows_name_the_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError) as err:
        read_preferences([str(path)])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_preferences([str(tmp_path / "missing.jsonl")])
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(DataError, match="without labels.jsonl"):
        read_preferences([str(tmp_path / "empty_run")])
    (tmp_path / "p.txt").write_text("hello\n")
    with pytest.raises(DataError, match="unsupported file type"):
        read_preferences([str(tmp_path / "p.txt")])
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match="no pairs"):
        read_preferences([str(tmp_path / "e.jsonl")])


class _Scripted:
    """A prompter answering from a list (what a person would press), in shown order."""

    def __init__(self, answers):
        self.answers = list(answers)

    def compare(self, prompt, a, b, *, judge, step):
        return Verdict(self.answers.pop(0))

    def rate(self, prompt, completion, *, judge, step, scale=(0, 9)):
        return 7.0


def test_labels_from_the_human_judge_both_orders_ties_skips(tmp_path):
    """Labels written by the real human judge with shuffled display: the person always presses
    "1" (the first shown), so the winner is whichever completion was shown first; ties, skips
    and ratings are left out."""
    run = tmp_path / "run"
    judge = HumanJudge({"scale_min": 0, "scale_max": 9, "shuffle": True, "labels": True},
                       JudgeContext(name="human", run_dir=run, prompter=_Scripted(["a"] * 6 + ["tie", "skip"]),
                                    seed=3))
    verdicts = [judge.compare(f"p{i}", f"A{i}", f"B{i}") for i in range(8)]
    judge.score(["rate me"], ["x"])
    records = [json.loads(line) for line in (run / "labels.jsonl").read_text().splitlines()]
    shown = [r["shown"] for r in records[:6]]
    assert ["a", "b"] in shown and ["b", "a"] in shown  # both display orders happened
    data = read_preferences([str(run)])
    assert len(data.pairs) == 6
    for i, (pair, rec) in enumerate(zip(data.pairs, records)):
        first_shown = rec[rec["shown"][0]]
        assert pair.chosen == first_shown and verdicts[i].choice == rec["shown"][0]
        assert {pair.chosen, pair.rejected} == {f"A{i}", f"B{i}"} and pair.prompt_text == f"p{i}"
    assert "1 tie" in data.notes[0] and "1 skip" in data.notes[0] and "1 rating" in data.notes[0]


def test_labels_cut_line_and_several_sources(tmp_path):
    labels = tmp_path / "labels.jsonl"
    good = {"kind": "pairwise", "prompt": "p", "a": "x", "b": "y", "shown": ["b", "a"], "choice": "b"}
    labels.write_text(json.dumps(good) + "\n" + '{"kind": "pairwise", "prompt": "p", "a"\n')
    other = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "c", "rejected": "r"}])
    data = read_preferences([str(labels), str(other)])
    assert [(p.chosen, p.rejected) for p in data.pairs] == [("y", "x"), ("c", "r")]
    assert "1 unreadable" in data.notes[0]
    # a labels file under another name is recognised by its records
    renamed = write_jsonl(tmp_path / "mine.jsonl", [good])
    assert read_preferences(str(renamed)).pairs[0].chosen == "y"


def test_labels_with_no_usable_pairs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "labels.jsonl", [
        {"kind": "pairwise", "prompt": "p", "a": "x", "b": "y", "shown": ["a", "b"], "choice": "tie"},
        {"kind": "pairwise", "prompt": "p", "a": "x", "b": "y", "shown": ["a", "b"], "choice": "skip"},
        {"kind": "rating", "prompt": "p", "a": "x", "b": None, "shown": ["a"], "choice": "rate", "rating": 3},
    ])
    with pytest.raises(DataError) as err:
        read_preferences([str(run)])
    assert "no usable pairs in 3 label(s) (1 tie, 1 skip, 1 rating)" in str(err.value)
