"""The real `tui-trainer` app in a real terminal (tmux at 80x24), driven by keys.

tmux runs on a private server socket (-L) so a person's own tmux is untouched.
Skipped when tmux is not installed (apt-get install tmux).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import make_tiny_model_dir
from tui_trainer.config import Config, JudgeSpec, save_config

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
REPO = Path(__file__).resolve().parents[1]


class Tmux:
    def __init__(self) -> None:
        self.socket = f"tui-trainer-test-{uuid.uuid4().hex[:8]}"
        self.session = "app"

    def __call__(self, *args: str, check: bool = True) -> str:
        res = subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True, check=check)
        return res.stdout

    def start(self, command: str, width: int = 80, height: int = 24) -> None:
        env = {**os.environ, "TEXTUAL_COLOR_SYSTEM": "256"}
        subprocess.run([TMUX, "-L", self.socket, "-f", "/dev/null", "new-session", "-d", "-s", self.session,
                        "-x", str(width), "-y", str(height), command], check=True, env=env)

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", self.session, check=False)

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", self.session, *keys)

    def wait_for(self, text: str, timeout: float = 180.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not on screen after {timeout}s; screen:\n{screen}")

    def kill(self) -> None:
        self("kill-server", check=False)


@pytest.fixture
def tmux():
    t = Tmux()
    yield t
    t.kill()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")


def write_config(path: Path, model: Path, run_dir: Path, **over) -> Path:
    base = dict(model=str(model), run_dir=str(run_dir), batch_size=1, num_samples=2, max_new_tokens=6,
                ppo_epochs=1, minibatch_size=2, save_every=0, seed=3)
    base.update(over)
    save_config(Config(**base), path)
    return path


def app_command(config: Path, extra: str = "") -> str:
    return f"cd {REPO} && {sys.executable} -m tui_trainer train --config {config} --start {extra}"


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.2)


def test_short_run_with_the_human_judge_in_tmux(tmux, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_model, run_dir, mode="pairwise", steps=2,
                          judges=[JudgeSpec("human")])
    rc_file = tmp_path / "rc"
    tmux.start(f"{app_command(config)}; echo $? > {rc_file}")

    shown = tmux.wait_for("A (1 / a)")
    assert "B (2 / b)" in shown and "1 waiting" in shown
    tmux.keys("1")
    tmux.wait_for("decided 1: A 1")
    tmux.wait_for("1 waiting")
    tmux.keys("b")
    screen = tmux.wait_for("finished")
    assert "step 2/2" in screen
    # everything the dashboard promises is on the 80x24 screen
    for word in ("reward", "KL (k1)", "clip fraction", "entropy", "tok/s", "Pause", "Quit"):
        assert word in screen, word
    assert all(len(line) <= 80 for line in screen.splitlines()) and len(screen.splitlines()) <= 24
    tmux.keys("q")
    wait_until(rc_file.exists, 60, "app exit")
    assert rc_file.read_text().strip() == "0"
    labels = records(run_dir / "labels.jsonl")
    assert len(labels) == 2
    assert [len(records(run_dir / "metrics.jsonl"))] == [2]


def test_dropped_terminal_leaves_a_checkpoint(tmux, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_model, run_dir, steps=5000, judges=[JudgeSpec("rules")])
    pid_file = tmp_path / "pid"
    # exec: the pid written is the app's own
    tmux.start(f"cd {REPO} && echo $$ > {pid_file} && exec {sys.executable} -m tui_trainer train "
               f"--config {config} --start")
    wait_until(lambda: (run_dir / "metrics.jsonl").exists() and len(records(run_dir / "metrics.jsonl")) >= 2,
               180, "two steps")
    pid = int(pid_file.read_text())
    tmux.kill()  # the terminal goes away: SIGHUP to the app
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 120, "app exit after SIGHUP")
    last = max(r["step"] for r in records(run_dir / "metrics.jsonl"))
    assert last < 5000
    checkpoints = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir()
                         if p.is_dir() and p.name.isdigit())
    assert checkpoints and checkpoints[-1] == last


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.skipif(not Path(sys.executable).with_name("mlx.launch").is_file(), reason="mlx.launch not available")
def test_train_launch_on_a_terminal_follows_the_job_in_the_app(tmux, tiny_model, tmp_path):
    """`train --launch 2` in a real terminal: the job runs in the background (its output in launch.log,
    not over the screen) and the dashboard follows it; finished, the app stays until q."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_model, run_dir, steps=2, batch_size=2)
    rc_file = tmp_path / "rc"
    tmux.start(f"cd {REPO} && OPENBLAS_NUM_THREADS=1 {sys.executable} -m tui_trainer train --launch 2 "
               f"--backend ring --config {config}; echo $? > {rc_file}", width=120, height=30)
    tmux.wait_for("following a job of 2 ranks", 60)
    screen = tmux.wait_for("run finished", 240)
    assert "slowest rank" in screen and "step 2/2" in screen
    assert "rollout" not in screen.split("\n")[0]  # no rank's progress line written over the app
    assert "step    2" in (run_dir / "launch.log").read_text()  # rank 0's metrics lines went to the log
    time.sleep(1.0)
    assert not rc_file.exists()  # it stays until q
    tmux.keys("q")
    wait_until(rc_file.exists, 60, "app exit")
    assert rc_file.read_text().strip() == "0"


@pytest.mark.skipif(not Path(sys.executable).with_name("mlx.launch").is_file(), reason="mlx.launch not available")
def test_sighup_to_the_app_of_a_launched_job_stops_the_job_on_a_checkpoint(tmux, tiny_model, tmp_path):
    """The terminal goes away while the app follows a job: the job stops as q stops it (every rank on
    its last checkpoint), no rank is left running, and the launcher ends."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_model, run_dir, steps=50, batch_size=2, save_every=1)
    pid_file = tmp_path / "pid"
    tmux.start(f"cd {REPO} && echo $$ > {pid_file} && OPENBLAS_NUM_THREADS=1 exec {sys.executable} -m tui_trainer "
               f"train --launch 2 --backend ring --config {config}", width=120, height=30)
    tmux.wait_for("following a job of 2 ranks", 60)
    wait_until(lambda: (run_dir / "checkpoints" / "000001").is_dir(), 120, "step 1")
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 120, "launcher exit after SIGHUP")
    ranks = subprocess.run(["pgrep", "-f", f"tui_trainer train --config {config}"], capture_output=True, text=True)
    assert ranks.stdout.strip() == ""  # no rank left behind
    steps = records(run_dir / "metrics.jsonl")
    assert len(steps) < 50
    assert max(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == steps[-1]["step"]
