"""The reward judge learning online from a person (learn_from: human), on a tiny random model
with a scripted person: a rule answering the questions."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from helpers import make_tiny_model_dir
from tui_trainer import events as ev
from tui_trainer.config import AdapterConfig, Config, DataConfig, JudgeSpec
from tui_trainer.engine.reward import preference_probability
from tui_trainer.engine.reward_online import least_sure_pairs
from tui_trainer.events import Verdict

def person_rule(text: str) -> float:
    """The person's taste: the more letters 'a', the better."""
    return float(text.count("a"))


class ScriptedPerson:
    """A Prompter that answers each question with ``person_rule`` (tie when it cannot tell)."""

    def __init__(self) -> None:
        self.asked: list[int] = []  # the step of each question

    def compare(self, prompt: str, a: str, b: str, *, judge: str, step: int) -> Verdict:
        self.asked.append(step)
        ra, rb = person_rule(a), person_rule(b)
        return Verdict("a" if ra > rb else "b" if rb > ra else "tie")

    def rate(self, *args, **kwargs):
        raise AssertionError("the online reward judge only compares")


def test_least_sure_pairs_picks_the_closest_rewards_within_a_prompt():
    prompts = ["p", "p", "p", "q", "q", "q"]
    completions = ["a", "b", "c", "d", "e", "d"]
    rewards = [0.0, 3.0, 0.2, 1.0, 1.05, 1.0]
    # (3, 5) have equal rewards but the same completion: never asked; each sample asked once
    assert least_sure_pairs(prompts, completions, rewards, 2) == [(3, 4), (0, 2)]
    assert least_sure_pairs(prompts, completions, rewards, 9) == [(3, 4), (0, 2)]
    assert least_sure_pairs(prompts, completions, rewards, 1) == [(3, 4)]
    assert least_sure_pairs(["p"], ["a"], [0.0], 2) == []


def test_online_loop_learns_the_persons_rule(tmp_path):
    """Budget 2 questions per step, refit every 4 labels: the reward model comes to rank the
    person's rule (agreement with the person on fresh pairs of the last steps' samples: 0.90 with
    this seed, chance is 0.5), and the policy's score under the person's rule rises (0.39 -> 3.77
    letters 'a' per completion). Seeds 0-5 all pass at actor_lr 5e-3 (rises 1.2-3.4; at 1e-2, 4 of
    the 6 did not rise by 1). About 10 s on 2 idle CPU cores."""
    from tui_trainer.run import build_run

    # a small alphabet (the chat template's and prompts' letters) and an untied head: the random
    # model writes varied short words from it
    tiny = make_tiny_model_dir(tmp_path / "tiny", alphabet="aeinrstu: \n", tie_word_embeddings=False)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in ["sun", "tea", "rat", "nut"]))
    steps = 30
    options = {"learn_from": "human", "questions": 2, "refit_every": 4, "epochs": 12, "learning_rate": 3e-3,
               "layers": -1, "adapter": "full", "agreement_window": 10}
    cfg = Config(model=str(tiny), run_dir=str(tmp_path / "run"), data=DataConfig(path=str(prompts)), steps=steps,
                 batch_size=2, num_samples=4, max_new_tokens=8, minibatch_size=8, ppo_epochs=2, save_every=0,
                 actor_lr=5e-3, adapter=AdapterConfig(rank=4, layers=2),
                 judges=[JudgeSpec("reward", 1.0, options)])
    person = ScriptedPerson()
    events: list = []
    trainer = build_run(cfg, observer=events.append, prompter=person)
    trainer.run()

    # the budget: two questions a step, each in labels.jsonl
    assert [person.asked.count(s) for s in range(1, steps + 1)] == [2] * steps
    labels = [json.loads(line) for line in (tmp_path / "run" / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 2 * steps and {x["judge"] for x in labels} == {"reward"}
    answered = sum(x["choice"] in ("a", "b") for x in labels)

    metrics = [e.values for e in events if isinstance(e, ev.StepMetrics)]
    assert metrics[-1]["reward/labels"] == answered
    assert [m["reward/labels"] for m in metrics] == sorted(m["reward/labels"] for m in metrics)
    assert 0.0 <= metrics[-1]["reward/agreement"] <= 1.0
    assert math.isnan(metrics[0]["reward/heldout_accuracy"])  # no refit before 4 labels
    judge = trainer.judges.members[0].judge
    assert answered // 8 <= judge.online.refits <= answered // 4

    samples = [[s for s in batch if isinstance(s, ev.Sample)] for batch in events if isinstance(batch, list)]
    samples = [b for b in samples if b]
    assert len(samples) == steps
    # every sample is scored by the reward model (normalised), not by the person
    last = samples[-1]
    expected = judge.rewards([s.prompt for s in last], [s.completion for s in last], normalised=True)
    assert [s.scores["reward"] for s in last] == pytest.approx(expected, rel=1e-4, abs=1e-5)

    # the final reward model agrees with the person on fresh pairs of the last steps' samples
    fresh = [(s.prompt, a.completion, s.completion) for b in samples[-10:]
             for a, s in itertools.combinations(b, 2)
             if a.prompt == s.prompt and person_rule(a.completion) != person_rule(s.completion)]
    fresh = [(p, a, b) if person_rule(a) > person_rule(b) else (p, b, a) for p, a, b in fresh]
    r_win = judge.rewards([p for p, _, _ in fresh], [a for _, a, _ in fresh])
    r_lose = judge.rewards([p for p, _, _ in fresh], [b for _, _, b in fresh])
    agree = sum(preference_probability(w, v) > 0.5 for w, v in zip(r_win, r_lose)) / len(fresh)
    print(f"fresh pairs {len(fresh)}, agreement {agree:.2f}")
    assert len(fresh) >= 20 and agree > 0.8

    # the policy's score under the person's rule rises
    def rule_score(batches):
        return sum(person_rule(s.completion) for b in batches for s in b) / sum(len(b) for b in batches)

    early, late = rule_score(samples[:10]), rule_score(samples[-10:])
    print(f"person's rule: first 10 steps {early:.2f}, last 10 steps {late:.2f}")
    assert late > early + 1.0


def test_dashboard_and_headless_line_show_the_learning_numbers():
    import asyncio

    from helpers import screen_text
    from tui_trainer.app import TrainerApp
    from tui_trainer.commands.train import metrics_line
    from tui_trainer.config import Config

    values = {"step": 3, "score_mean": 0.2, "kl": 0.01, "clip_fraction": 0.0, "time_step": 1.2,
              "samples_per_second": 6.5, "reward/labels": 12.0, "reward/heldout_accuracy": 0.75,
              "reward/agreement": 0.625}
    line = metrics_line(values)
    assert "reward labels 12" in line and "reward rm acc 0.75" in line and "reward agreement 0.625" in line

    async def go():
        cfg = Config(steps=5)
        app = TrainerApp(cfg)
        async with app.run_test(size=(80, 24)) as pilot:
            app.open_dashboard(cfg)
            await pilot.pause()
            app.handle_event(ev.StepMetrics(3, values))
            app.redraw()
            await pilot.pause()
            text = screen_text(app)
            assert "labels 12 · RM acc 0.75 · agrees 0.62" in text.splitlines()[0], text

    asyncio.run(go())


def test_resumed_run_counts_earlier_answers_and_a_bad_path_is_refused(tmp_path):
    from tui_trainer.errors import ConfigError, ModelError
    from tui_trainer.plugins.manager import build_judge_set

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"kind": "pairwise", "prompt": "p", "a": "x", "b": "y", "shown": ["a", "b"], "choice": c,
             "judge": "reward", "step": 1} for c in ("a", "b", "tie", "skip", "a")]
    (run / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    judges = build_judge_set([{"name": "reward", "options": {"learn_from": "human", "refit_every": 3}}],
                             prompter=ScriptedPerson(), run_dir=run)
    online = judges.members[0].judge.online
    assert [(p.chosen, p.rejected) for p in online.pairs] == [("x", "y"), ("y", "x"), ("x", "y")]
    assert online.refit_due and judges.members[0].interactive
    assert judges.metrics() == pytest.approx({"reward/labels": 3.0, "reward/heldout_accuracy": math.nan,
                                              "reward/agreement": math.nan}, nan_ok=True)
    assert online.out_dir == run / "reward_model"

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ModelError, match="not a directory"):
        build_judge_set([{"name": "reward", "options": {"learn_from": "human", "path": str(tmp_path / "a-file")}}],
                        prompter=ScriptedPerson(), run_dir=run)
    with pytest.raises(ConfigError, match="learn_from must be 'human'"):
        build_judge_set([{"name": "reward", "options": {"learn_from": "llama"}}], prompter=ScriptedPerson(),
                        run_dir=run)
