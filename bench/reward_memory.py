"""Memory of a LoRA reward model on the policy's own base vs a separately loaded one.

    python bench/reward_memory.py                  # trains a small reward model on the embedded model first
    python bench/reward_memory.py --reward DIR     # a LoRA reward-model directory on the embedded model

Each side runs in a fresh process: load the embedded SmolLM2-135M policy with the default LoRA
adapter, then score 16 completions with the reward model, either switched in on the policy's
base (``engine.reward.SharedBaseReward``, what the ``reward`` judge does in a run) or loaded on
its own copy of the base (``RewardScorer.load``). Reported: MLX active memory added by the reward
model, MLX peak memory while scoring, the process's peak RSS, and the first score (the same on
both sides). Writes the "## Reward model memory" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def measure(mode: str, reward: str) -> dict:
    from tui_trainer.engine.blas import ensure_fast_blas

    ensure_fast_blas()
    import mlx.core as mx

    from memory import peak_rss_mb
    from tui_trainer.config import AdapterConfig
    from tui_trainer.engine import reward as R
    from tui_trainer.engine.models import load_policy
    from tui_trainer.engine.policy import Policy

    model, tok = load_policy(None)
    policy = Policy(model, AdapterConfig())
    mx.eval(policy.parameters())
    before = mx.get_active_memory()
    if mode == "shared":
        scorer = R.SharedBaseReward(policy.model, reward).scorer(tok)
    else:
        scorer = R.RewardScorer.load(reward)
    mx.reset_peak_memory()
    scores = scorer.rewards(["Say something about rain."] * 16, ["Warm banana quiet house lamp old."] * 16)
    return {"mode": mode, "added_mib": (mx.get_active_memory() - before) / 2**20,
            "peak_mib": mx.get_peak_memory() / 2**20, "rss_mib": peak_rss_mb(), "score": scores[0]}


def train_small(out: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from tui_trainer.engine.blas import ensure_fast_blas

    ensure_fast_blas()
    from test_reward_embedded import keyword_pairs
    from tui_trainer.config import RewardTrainConfig
    from tui_trainer.engine.reward_train import train_reward_model

    train_reward_model(RewardTrainConfig(epochs=1, layers=2, learning_rate=3e-4), keyword_pairs(24), out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reward", help="LoRA reward-model directory on the embedded model")
    ap.add_argument("--child", choices=["shared", "separate"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.reward)))
        return
    tmp = tempfile.TemporaryDirectory()
    reward = args.reward
    if reward is None:
        reward = str(Path(tmp.name) / "rm")
        train_small(Path(reward))
    rows = []
    for mode in ("shared", "separate"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--reward", reward], check=True,
                             capture_output=True, text=True, env={**__import__("os").environ,
                                                                  "PYTHONPATH": f"{ROOT}:{HERE}"})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import platform

    from results import write_section

    lines = ["## Reward model memory", "",
             "`python bench/reward_memory.py`: the embedded SmolLM2-135M policy (f32 on CPU, default LoRA) and a "
             "LoRA reward model on the same base scoring 16 completions; each side in a fresh process. "
             f"Machine: {platform.machine()}, {platform.system()}.", "",
             "| reward model | MLX memory added | MLX peak while scoring | process peak RSS | first score |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        name = "switched in on the policy's base" if r["mode"] == "shared" else "own copy of the base"
        lines.append(f"| {name} | {r['added_mib']:.1f} MiB | {r['peak_mib']:.0f} MiB | {r['rss_mib']:.0f} MiB | "
                     f"{r['score']:.6f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_section(HERE / "RESULTS.md", "## Reward model memory", text)


if __name__ == "__main__":
    main()
