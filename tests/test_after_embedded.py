"""`tui-trainer eval` on the embedded SmolLM2-135M: a short real run, then trained vs base on prompts
of the embedded data that the run never drew (the number goes to the README's example)."""

from __future__ import annotations

import json
import math

import pytest

from tui_trainer import cli
from tui_trainer.config import AdapterConfig, Config, DataConfig, JudgeSpec
from tui_trainer.evaluation import wilson_interval
from tui_trainer.run import build_run

pytestmark = pytest.mark.integration


def test_eval_on_the_embedded_model(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = Config(run_dir=str(run_dir), data=DataConfig(), steps=2, batch_size=2, num_samples=2, max_new_tokens=16,
                 minibatch_size=4, ppo_epochs=1, actor_lr=2e-5, save_every=0, seed=0,
                 adapter=AdapterConfig(rank=8, layers=4),
                 judges=[JudgeSpec("rules", 1.0, {"target_length": 12, "length_unit": "words"})])
    assert build_run(cfg).run().status == "finished"
    assert cli.main(["eval", str(run_dir), "-n", "4", "--max-new-tokens", "24", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    report = json.loads((run_dir / "eval.json").read_text())
    assert summary["n"] == report["n"] == 4 and "never trained on" in report["data"]
    wins = report["wins"] + 0.5 * report["ties"]
    assert math.isclose(summary["win_rate"], wins / 4)
    assert summary["ci95"] == list(wilson_interval(wins, 4))
    assert all(e["trained"] and e["base"] for e in report["examples"])  # SmolLM2 answers every prompt
    print(f"embedded eval: {summary}")
