"""`tui-trainer train --headless` as a user runs it: progress inside a step, and SIGTERM that never
waits for the step in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

TESTS = Path(__file__).resolve().parent


def slow(prompt: str, completion: str) -> float:
    time.sleep(0.5)
    return len(completion) / 10


def write_config(tmp_path: Path, tiny_dir: Path, judge: str, steps: int) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in "abcdefgh"))
    cfg = {"model": str(tiny_dir), "data": {"path": str(prompts)}, "steps": steps, "batch_size": 2,
           "num_samples": 2, "max_new_tokens": 6, "ppo_epochs": 1, "minibatch_size": 4, "save_every": 0,
           "judges": [{"name": "rules", "options": {"callable": judge}}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(tmp_path: Path, config: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.Popen([sys.executable, "-m", "tui_trainer", "train", "--headless", "--config", str(config),
                             "--run-dir", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, stdin=subprocess.DEVNULL)


def test_headless_prints_one_line_per_phase_when_not_a_terminal(tiny_dir, tmp_path):
    proc = start(tmp_path, write_config(tmp_path, tiny_dir, "test_trainer:char_length", steps=2))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    for step in (1, 2):
        lines = [ln for ln in out.splitlines() if ln.startswith(f"step {step} · ")]
        phases = [ln.split(" · ")[1].split(" ")[0] for ln in lines]
        assert phases == ["rollout", "judging", "reference", "update"], out
    assert "gen tok/s" in out and "finished at step 2" in out
    assert "loading 0/4: reading the prompts" in out


def test_sigterm_mid_step_stops_at_once_with_the_last_completed_checkpoint(tiny_dir, tmp_path):
    # each judge call takes 4 x 0.5 s; SIGTERM during step 2's must not wait for it
    proc = start(tmp_path, write_config(tmp_path, tiny_dir, "test_headless:slow", steps=50))
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("step 2 · judging"):
                break
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        waited = time.monotonic() - t0
    finally:
        proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 143, out  # 128 + SIGTERM: a script can tell a stop from a finished run
    assert waited < 1.8, (waited, out)  # the judge call in flight (2 s) was not waited for
    assert "stopped at step 1" in out and "--resume" in out, out
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000001"]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]
