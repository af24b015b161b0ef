"""The app following a run directory another process writes: `train --launch N` on a terminal (the job
in the background, the dashboard on rank 0's run directory) and `tui-trainer watch RUN_DIR`.

The run directories here are written by hand in RunFiles' format (json_line), a line at a time as
rank 0 writes them; the jobs are real processes (a short Python script in mlx.launch's place, and
one real `--launch 2` run of the tiny model)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from tui_trainer.commands.launch import BackgroundJob
from tui_trainer.commands.train import launch_mode
from tui_trainer.config import Config, JudgeSpec
from tui_trainer.engine.runfiles import json_line
from tui_trainer.events import CheckpointSaved, Sample, StepMetrics
from tui_trainer.fileio import atomic_write_text
from tui_trainer.follow import JsonlTail, RunFollower
from tui_trainer.follow_app import FollowApp

from helpers import screen_text
from test_trainer import make_config
from test_trainer import prompts_file  # noqa: F401  (the same fixture)


def two_rank_step(step: int, score: float, slowest: int = 1) -> dict:
    """A step of a 2-rank job as rank 0 writes it to metrics.jsonl."""
    return {"step": step, "score_mean": score, "kl": 0.01 * step, "clip_fraction": 0.1, "entropy": 2.0,
            "time_step": 3.0, "samples_per_second": 1.5, "time_rollout": 1.0, "time_judge": 0.5, "time_update": 1.5,
            "ranks": 2, "time_step_slowest_rank": slowest, "time_step_rank_spread": 1.43,
            "time_busy/0": 2.0, "time_busy/1": 2.86}


def sample_row(step: int, text: str, score: float) -> dict:
    return {"step": step, "prompt": f"prompt {text}", "completion": f"completion {text}", "score": score,
            "scores": {"rules": score}, "finished": True}


def append(path: Path, *rows: dict, partial: str = "") -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json_line(r) for r in rows) + partial)


def write_run(run: Path) -> None:
    run.mkdir(parents=True, exist_ok=True)
    append(run / "metrics.jsonl", two_rank_step(1, 0.25))
    # rank 0 gathered both ranks' samples: two from each rank
    append(run / "samples.jsonl", *(sample_row(1, f"r{r}s{i}", 0.5 * i) for r in (0, 1) for i in (0, 1)))


# ------------------------------------------------------------------ reading the files
def test_tail_reads_complete_lines_only_and_rereads_a_replaced_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = JsonlTail(path)
    assert tail.read() == []  # no file yet
    append(path, {"step": 1}, {"step": 2}, partial='{"step": 3, "score_me')
    assert [r["step"] for r in tail.read()] == [1, 2]
    assert tail.read() == []  # the half-written line waits
    append(path, partial='an": 1.0}\nnot json\n')  # the writer finishes it (and a line that does not parse)
    assert tail.read() == [{"step": 3, "score_mean": 1.0}]

    follower = RunFollower(tmp_path)
    events = follower.poll()
    assert [e.step for e in events] == [1, 2, 3] and all(isinstance(e, StepMetrics) for e in events)
    # --resume cuts the file to its checkpoint atomically (a new file) and goes on: only step 4 is new
    atomic_write_text(path, json_line({"step": 1}) + json_line({"step": 2}) + json_line({"step": 4, "kl": 0.5}))
    events = follower.poll()
    assert [(e.step, e.values) for e in events] == [(4, {"kl": 0.5})]


def test_samples_come_as_one_list_per_step(tmp_path):
    write_run(tmp_path)
    append(tmp_path / "samples.jsonl", sample_row(2, "late", 1.0), partial='{"step": 2, "prom')
    follower = RunFollower(tmp_path)
    events = follower.poll()
    assert isinstance(events[0], StepMetrics) and events[0].values["time_step_slowest_rank"] == 1
    lists = events[1:]
    assert [len(x) for x in lists] == [4, 1] and all(isinstance(s, Sample) for x in lists for s in x)
    assert lists[0][3] == Sample(1, "prompt r1s1", "completion r1s1", 0.5, {"rules": 0.5}, True)
    assert follower.poll() == []
    for step in (1, 2):  # rank 0 saves two checkpoints, and is writing a third
        (tmp_path / "checkpoints" / f"{step:06d}").mkdir(parents=True)
    (tmp_path / "checkpoints" / ".tmp-000003-1").mkdir()
    assert [(e.step, e.path) for e in follower.poll()] == [(s, str(tmp_path / "checkpoints" / f"{s:06d}"))
                                                           for s in (1, 2)]
    (tmp_path / "checkpoints" / ".tmp-000003-1").rename(tmp_path / "checkpoints" / "000003")
    assert [e.step for e in follower.poll()] == [3]
    later = RunFollower(tmp_path).poll()  # a follower that starts now: the newest checkpoint only
    assert [e.step for e in later if isinstance(e, CheckpointSaved)] == [3]


# ------------------------------------------------------------------ the app
async def wait_for(pilot, predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.05)


def test_watch_shows_the_runs_steps_samples_and_slowest_rank_and_follows_new_lines(tmp_path):
    run = tmp_path / "run"
    write_run(run)

    async def go():
        app = FollowApp(Config(steps=5, run_dir=str(run)))
        async with app.run_test(size=(120, 30)) as pilot:
            await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.steps_seen == 1)
            app.redraw()
            await pilot.pause()
            dash = app.dashboard
            assert dash.metrics["score_mean"] == 0.25
            status = dash.status_text()
            assert "watching (read-only)" in status and "slowest rank 1 (1.4x)" in status
            text = screen_text(app)
            assert "slowest rank 1 (1.4x)" in text and "0.250" in text
            assert "r0s0" in text and "r1s1" in text  # both ranks' samples
            # rank 0 writes step 2, and half of step 3's line
            append(run / "metrics.jsonl", two_rank_step(2, 0.75, slowest=0), partial='{"step": 3, "score_mean": 9')
            append(run / "samples.jsonl", sample_row(2, "second-step", 1.0))
            await wait_for(pilot, lambda: dash.steps_seen == 2)
            await pilot.pause(0.6)  # a poll or more: the partial line stays unread
            app.redraw()
            await pilot.pause()
            assert dash.steps_seen == 2 and dash.metrics["score_mean"] == 0.75
            assert "slowest rank 0 (1.4x)" in dash.status_text()
            assert "second-step" in screen_text(app)
            append(run / "metrics.jsonl", partial='.5}\n')  # the line is complete now
            await wait_for(pilot, lambda: dash.steps_seen == 3)
            assert dash.metrics["score_mean"] == 9.5
            assert app.run_active is False
            await pilot.press("q")  # watching: q just leaves
            await wait_for(pilot, lambda: not app.is_running)
        assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "samples.jsonl"]  # nothing written

    asyncio.run(go())


def test_lock_holder_is_a_live_process_only(tmp_path):
    from tui_trainer.engine.runfiles import RunLock
    from tui_trainer.follow_app import lock_holder

    assert lock_holder(tmp_path) is None  # no lock file
    lock = RunLock(tmp_path).acquire()
    assert lock_holder(tmp_path) == str(os.getpid())
    lock.release()
    assert lock_holder(tmp_path) is None  # emptied when the run ends
    (tmp_path / ".lock").write_text("999999999\n")  # left by a process that was killed
    assert lock_holder(tmp_path) is None


JOB = """
import json, signal, sys, time
run, end = sys.argv[1], sys.argv[2]
if end == "deaf":  # a rank stuck where no signal reaches it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
else:
    signal.signal(signal.SIGINT, lambda *_: (print("rank 0: interrupted", flush=True), sys.exit(130)))
with open(run + "/metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 1, "score_mean": 0.5, "ranks": 2, "time_step_slowest_rank": 1,
                        "time_step_rank_spread": 2.0}) + "\\n")
print("rank 0: step 1 done", flush=True)
if end in ("wait", "deaf"):
    while True:
        time.sleep(0.05)
sys.exit(int(end))
"""


def job(run: Path, end: str) -> BackgroundJob:
    """A real process in mlx.launch's place: it writes step 1, then ends with ``end`` (or waits)."""
    run.mkdir(parents=True, exist_ok=True)
    return BackgroundJob([sys.executable, "-c", JOB, str(run), end], run, run / "launch.log", ranks=2)


def test_q_stops_a_launched_job_and_exits_once_it_has_ended(tmp_path):
    run = tmp_path / "run"

    async def go():
        background = job(run, "wait")
        app = FollowApp(Config(steps=5, run_dir=str(run)), job=background, ranks=2)
        async with app.run_test(size=(120, 30)) as pilot:
            await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.steps_seen == 1)
            assert "following a job of 2 ranks" in app.dashboard.status_text()
            assert "Pause" not in screen_text(app) and "Checkpoint" not in screen_text(app)  # not offered
            assert "slowest rank 1 (2.0x)" in app.dashboard.status_text()
            assert app.run_active
            await pilot.press("q")
            await wait_for(pilot, lambda: not app.is_running)
        assert background.done.is_set() and background.code == 130
        assert app.return_value == 130 and app.status == "stopped"
        log = (run / "launch.log").read_text()
        assert "rank 0: step 1 done" in log and "rank 0: interrupted" in log  # its output went to the log

    asyncio.run(go())


def test_q_again_kills_a_job_that_does_not_stop(tmp_path):
    run = tmp_path / "run"

    async def go():
        background = job(run, "deaf")
        app = FollowApp(Config(steps=5, run_dir=str(run)), job=background, ranks=2)
        async with app.run_test(size=(120, 30)) as pilot:
            await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.steps_seen == 1)
            await pilot.press("q")
            await pilot.pause(1.0)
            assert app.is_running and app.status == "stopping" and app.run_active  # it ignores SIGINT
            await pilot.press("q")
            await wait_for(pilot, lambda: not app.is_running)
        assert background.code == 128 + 9 and app.status == "stopped" and app.return_value == 137

    asyncio.run(go())


@pytest.mark.parametrize("end,status", [("0", "finished"), ("3", "failed")])
def test_a_job_that_ends_by_itself_leaves_the_app_open_on_its_end(tmp_path, end, status):
    run = tmp_path / "run"

    async def go():
        background = job(run, end)
        app = FollowApp(Config(steps=5, run_dir=str(run)), job=background, ranks=2)
        async with app.run_test(size=(120, 30)) as pilot:
            await wait_for(pilot, lambda: app.run_ended)
            await pilot.pause(0.3)
            assert app.is_running and app.status == status and app.dashboard.steps_seen == 1
            text = screen_text(app)
            assert f"run {status}" in text
            if status == "failed":
                assert "exit code 3" in text and "launch.log" in text
            await pilot.press("q")
            await wait_for(pilot, lambda: not app.is_running)
        assert app.return_value == int(end)

    asyncio.run(go())


# ------------------------------------------------------------------ the launcher's choice
def launch_args(**over) -> argparse.Namespace:
    return argparse.Namespace(**{"headless": False, "launch": 2, "hosts": None, **over})


def test_train_launch_follows_the_job_on_a_terminal_and_stays_headless_otherwise():
    plain = Config()
    assert launch_mode(launch_args(), plain, tty=True) == ("follow", None)
    assert launch_mode(launch_args(headless=True), plain, tty=True) == ("headless", None)
    assert launch_mode(launch_args(), plain, tty=False) == ("headless", None)
    person = Config(judges=[JudgeSpec("rules"), JudgeSpec("human")])
    mode, note = launch_mode(launch_args(), person, tty=True)
    assert mode == "headless" and "human" in note and "\n" not in note
    learning = Config(judges=[JudgeSpec("reward", 1.0, {"learn_from": "human"})])
    assert launch_mode(launch_args(hosts="h.json", launch=None), learning, tty=True)[0] == "headless"


# ------------------------------------------------------------------ a real job
LAUNCH = Path(sys.executable).with_name("mlx.launch")


def launched_app(tiny_dir, prompts_file, run: Path, monkeypatch, **over) -> FollowApp:  # noqa: F811
    """The app `train --launch 2 --backend ring` opens on a terminal (follow_launch), its job started."""
    from tui_trainer.cli import build_parser
    from tui_trainer.commands.train import follow_launch
    from tui_trainer.config import save_config

    tests = Path(__file__).resolve().parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    cfg_path = run.parent / "run.yaml"
    config = make_config(tiny_dir, prompts_file, run, **over)
    save_config(config, cfg_path)
    argv = ["train", "--launch", "2", "--backend", "ring", "--config", str(cfg_path)]
    args = build_parser().parse_args(argv)
    args.argv = argv
    started = {}

    def app_on(config, *, job, ranks):  # follow_launch's run_follow, under the pilot
        started["app"] = FollowApp(config, job=job, ranks=ranks)
        return 0

    monkeypatch.setattr("tui_trainer.follow_app.run_follow", app_on)
    assert follow_launch(args, config) == 0
    return started["app"]


@pytest.mark.skipif(not LAUNCH.is_file(), reason="mlx.launch not available")
def test_train_launch_2_in_follow_mode_shows_the_whole_job(tiny_dir, prompts_file, tmp_path, monkeypatch):  # noqa: F811
    """`train --launch 2` as follow mode starts it: both ranks' samples and the slowest rank on the
    dashboard, mlx.launch's output in launch.log, the app open on "finished" until q."""
    run = tmp_path / "run"
    app = launched_app(tiny_dir, prompts_file, run, monkeypatch, steps=2)

    async def go():
        async with app.run_test(size=(120, 30)) as pilot:
            await wait_for(pilot, lambda: app.run_ended, timeout=240)
            app.redraw()
            await pilot.pause()
            assert app.status == "finished", (app.error, (run / "launch.log").read_text()[-2000:])
            dash = app.dashboard
            assert dash.steps_seen == 2 and "following a job of 2 ranks" in dash.status_text()
            assert "slowest rank" in dash.status_text() and "ckpt 2" in dash.status_text()  # its last checkpoint
            shown = [s.prompt for s in dash.query_one("#samples").samples]
            rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
            assert len(rows) == 2 * 4 * 2 and {r["prompt"] for r in rows[-8:]} <= set(shown)  # step 2: both ranks'
            await pilot.press("q")
            await wait_for(pilot, lambda: not app.is_running)
        assert app.return_value == 0

    asyncio.run(go())


@pytest.mark.skipif(not LAUNCH.is_file(), reason="mlx.launch not available")
def test_q_stops_a_real_job_on_its_last_checkpoint(tiny_dir, prompts_file, tmp_path, monkeypatch):  # noqa: F811
    """q during a 50-step job: every rank abandons its step in flight (SIGINT to the job's process
    group, as Ctrl-C does), the app exits once the job has ended (130), and the last checkpoint is the
    last step in metrics.jsonl."""
    run = tmp_path / "run"
    app = launched_app(tiny_dir, prompts_file, run, monkeypatch, steps=50, save_every=1)

    async def go():
        async with app.run_test(size=(120, 30)) as pilot:
            await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.steps_seen >= 1, timeout=240)
            await pilot.press("q")
            assert app.status == "stopping" and "q again" in app.dashboard.status_text()
            await wait_for(pilot, lambda: not app.is_running, timeout=120)
        assert app.return_value == 130 and app.status == "stopped" and app.job.error is None
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(steps) < 50
        assert max(int(p.name) for p in (run / "checkpoints").iterdir()) == steps[-1]

    asyncio.run(go())


def test_watch_bad_input_is_one_line(tmp_path, capsys):
    from tui_trainer.cli import main

    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "run")
    cases = [(tmp_path / "none", "no such run directory"), (tmp_path / "empty", "not a run directory"),
             (tmp_path / "run", "needs a terminal")]  # pytest's stdout is not one
    for where, message in cases:
        assert main(["watch", str(where)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tui-trainer: error: ") and message in err[0], err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.jsonl", "samples.jsonl"]


@pytest.mark.skipif(not LAUNCH.is_file(), reason="mlx.launch not available")
def test_a_rank_that_dies_shows_the_launchers_one_line_in_the_app(tiny_dir, prompts_file, tmp_path, monkeypatch):  # noqa: F811
    """Rank 1 is SIGKILLed in step 2: the app stays open on "failed" with the launcher's one line;
    the command's exit code is the dead rank's (128 + 9)."""
    run = tmp_path / "run"
    judges = [JudgeSpec("rules", 1.0, {"callable": "rank_judges:dies_on_rank_1_in_step_2"})]
    app = launched_app(tiny_dir, prompts_file, run, monkeypatch, steps=3, save_every=1, judges=judges)

    async def go():
        async with app.run_test(size=(160, 30)) as pilot:
            await wait_for(pilot, lambda: app.run_ended, timeout=240)
            app.redraw()
            await pilot.pause()
            assert app.is_running and app.status == "failed" and app.dashboard.steps_seen == 1
            assert app.error == ("rank 1 died (exit -9) at step 2; the job stopped; the last checkpoint (step 1) "
                                 "is valid; resume with --resume")
            assert "rank 1 died (exit -9) at step 2" in screen_text(app)
            await pilot.press("q")
            await wait_for(pilot, lambda: not app.is_running)
        assert app.return_value == 128 + 9
        assert "rank 1 died" in (run / "launch.log").read_text()

    asyncio.run(go())
