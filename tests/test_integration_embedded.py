"""PPO on the embedded SmolLM2-135M model with a rule-based reward: the score must rise, KL stay finite.

The reward is correctness on four short factual questions (the rules judge's callable component:
1 when the answer's keyword appears, else 0). At temperature 0.7 the base model answers about
half of them right within 24 tokens; PPO pushes that up within a dozen steps. The run is seeded,
so it is the same run on every machine of one kind.
"""

from __future__ import annotations

import json
import math

import pytest

from tui_trainer import events as ev
from tui_trainer.config import AdapterConfig, Config, DataConfig, JudgeSpec
from tui_trainer.run import build_run

from helpers import step0_kl_bound

pytestmark = pytest.mark.integration

ANSWERS = {
    "What is the capital of France?": "paris",
    "What color is the sky on a clear day?": "blue",
    "Name a fruit that is yellow.": "banana",
    "What is the opposite of hot?": "cold",
}


def correct(prompt: str, completion: str) -> float:
    return 1.0 if ANSWERS[prompt] in completion.lower() else 0.0


def test_score_rises_on_embedded_model(tmp_path):
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ANSWERS))
    steps = 12
    cfg = Config(
        model=None, run_dir=str(tmp_path / "run"), data=DataConfig(path=str(data), shuffle=False),
        steps=steps, batch_size=4, num_samples=4, max_new_tokens=24, temperature=0.7,
        minibatch_size=8, ppo_epochs=2, actor_lr=5e-5, critic_lr=1e-3, beta=0.02, save_every=0, seed=0,
        adapter=AdapterConfig(rank=8, layers=8),
        judges=[JudgeSpec("rules", 1.0, {"callable": "test_integration_embedded:correct"})],
    )
    events: list = []
    state = build_run(cfg, observer=events.append).run()
    assert state.status == "finished"
    metrics = [e.values for e in events if isinstance(e, ev.StepMetrics)]
    assert len(metrics) == steps
    scores = [round(m["score_mean"], 3) for m in metrics]
    first = sum(scores[:3]) / 3
    last = sum(scores[-3:]) / 3
    assert last > first + 0.15, scores
    assert all(math.isfinite(m["kl"]) and math.isfinite(m["policy_loss"]) for m in metrics)
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=step0_kl_bound(metrics[0]))
    assert metrics[-1]["kl"] > 0  # the policy moved away from its reference
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, steps + 1))
