"""The app driving the real Trainer on a tiny random model (pilot tests).

The engine runs in the app's trainer worker thread exactly as in `tui-trainer`;
these tests press keys and compare what the screens show with what the run
wrote to its directory.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import pytest

from helpers import make_tiny_model_dir, screen_text
from tui_trainer.app import TrainerApp
from tui_trainer.config import Config, JudgeSpec
from tui_trainer.screens.judging import JudgingScreen


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")


def tiny_config(model: Path, run_dir: Path, **over) -> Config:
    base = dict(model=str(model), run_dir=str(run_dir), steps=3, batch_size=2, num_samples=2,
                max_new_tokens=6, ppo_epochs=1, minibatch_size=4, save_every=0, seed=1,
                judges=[JudgeSpec("rules")])
    base.update(over)
    return Config(**base)


def checkpoint_steps(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def same(a, b) -> bool:
    if a is None or b is None:
        return a is None and (b is None or (isinstance(b, float) and math.isnan(b)))
    return a == b


async def wait_for(pilot, predicate, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout}s")
        await pilot.pause(0.05)


def test_short_run_panels_match_metrics_jsonl(tiny_model, tmp_path):
    cfg = tiny_config(tiny_model, tmp_path / "run")

    async def go():
        app = TrainerApp(cfg, start=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.run_ended, what="run finished")
            dash = app.dashboard
            app.redraw()
            await pilot.pause()
            assert app.status == "finished", app.error
            rows = records(tmp_path / "run" / "metrics.jsonl")
            assert [r["step"] for r in rows] == [1, 2, 3]
            for key in ("score_mean", "kl", "clip_fraction"):
                panel = dash.panel(key)
                assert [s for s, _ in panel.history] == [1, 2, 3]
                assert all(same(v, r[key]) for v, r in zip(panel.values, rows)), key
            for key in ("entropy", "value_loss", "approx_kl", "response_length", "generation_tokens_per_second"):
                assert same(dash.query_one(f"#stat-{key}").value, rows[-1][key]), key
            samples = records(tmp_path / "run" / "samples.jsonl")
            table = dash.query_one("#samples")
            assert [s.completion for s in table.samples] == [s["completion"] for s in samples]
            text = screen_text(app)
            assert "finished" in text and "step 3/3" in text
            assert checkpoint_steps(tmp_path / "run") == [3]
            await pilot.press("q")
            await pilot.pause()
        assert app.return_value == 0
    asyncio.run(go())


def test_pause_resume_checkpoint_and_quit(tiny_model, tmp_path):
    cfg = tiny_config(tiny_model, tmp_path / "run", steps=200)

    async def go():
        app = TrainerApp(cfg, start=True)
        async with app.run_test(size=(80, 24)) as pilot:
            dash = app.dashboard
            await wait_for(pilot, lambda: dash.steps_seen >= 1, what="first step")
            await pilot.press("p")
            await wait_for(pilot, lambda: app.status == "paused", what="paused")
            paused_at = dash.steps_seen
            app.redraw()
            await pilot.pause()
            assert "paused" in screen_text(app)
            await pilot.pause(0.6)
            assert dash.steps_seen == paused_at  # no step while paused
            await pilot.press("c")  # checkpoint while paused: written between steps
            await wait_for(pilot, lambda: paused_at in checkpoint_steps(tmp_path / "run"),
                           what="checkpoint on c")
            await pilot.press("p")
            await wait_for(pilot, lambda: dash.steps_seen > paused_at, what="resumed")
            await pilot.press("q")
            await wait_for(pilot, lambda: not app.is_running, what="exit after quit")
        assert app.return_value == 0
        steps = [r["step"] for r in records(tmp_path / "run" / "metrics.jsonl")]
        last = max(steps)
        assert last < 200
        # quit saved a checkpoint of the last finished step
        assert checkpoint_steps(tmp_path / "run")[-1] == last
    asyncio.run(go())


def test_bad_model_path_is_one_line_and_exit_code_2(tmp_path):
    cfg = Config(model=str(tmp_path / "missing-model"), run_dir=str(tmp_path / "run"), steps=1)

    async def go():
        app = TrainerApp(cfg, start=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.run_ended, what="failure")
            await pilot.pause(0.1)
            assert app.status == "failed" and app.exit_code == 2
            assert "\n" not in app.error and "missing-model" in app.error
            assert "Traceback" not in screen_text(app)
            await pilot.press("q")
        assert app.return_value == 2
    asyncio.run(go())


def test_human_pairwise_judge_answers_from_the_judging_screen(tiny_model, tmp_path):
    cfg = tiny_config(tiny_model, tmp_path / "run", mode="pairwise", steps=1, batch_size=2,
                      num_samples=2, judges=[JudgeSpec("human")])

    async def go():
        app = TrainerApp(cfg, start=True)
        async with app.run_test(size=(80, 24)) as pilot:
            pressed = []
            for key in ("1", "t"):
                await wait_for(pilot, lambda: isinstance(app.screen, JudgingScreen)
                               and app.screen.request is not None, what="judge question")
                request = app.screen.request
                assert request.kind == "pairwise"
                pressed.append((key, request))
                await pilot.press(key)
            await wait_for(pilot, lambda: app.run_ended, what="run finished")
            assert app.status == "finished", app.error
            assert app.ledger.counts["a"] == 1 and app.ledger.counts["tie"] == 1
            await pilot.press("q")
        labels = records(tmp_path / "run" / "labels.jsonl")
        assert len(labels) == 2
        for label, (key, request) in zip(labels, pressed):
            assert label["kind"] == "pairwise" and label["prompt"] == request.prompt
            # the screen showed label[shown[0]] as A and label[shown[1]] as B
            first, second = label["shown"]
            assert (label[first], label[second]) == (request.a, request.b)
        # "1" picked the completion shown first; "t" is a tie
        assert labels[0]["choice"] == labels[0]["shown"][0]
        assert labels[1]["choice"] == "tie"
    asyncio.run(go())


def test_setup_screen_starts_then_resumes_a_run_by_keyboard(tiny_model, tmp_path):
    from textual.widgets import Input

    cfg = tiny_config(tiny_model, tmp_path / "run", steps=2)

    async def go():
        app = TrainerApp(cfg)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            # keyboard only: Tab through the form to the Start button and press Enter
            for _ in range(80):
                if getattr(app.focused, "id", None) == "start":
                    break
                await pilot.press("tab")
            assert app.focused.id == "start"
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.run_ended, what="first run")
            assert app.status == "finished" and checkpoint_steps(tmp_path / "run") == [2]
            # n: back to the setup screen; 4 steps, resume ticked, ctrl+r
            await pilot.press("n")
            await pilot.pause()
            screen = app.screen
            assert type(screen).__name__ == "SetupScreen"
            screen.query_one("#f-steps", Input).value = "4"
            screen.query_one("#resume").value = True
            await pilot.pause()
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.run_ended, what="resumed run")
            assert app.status == "finished", app.error
            dash = app.dashboard
            app.redraw()
            # the plots continue: steps 1-2 from metrics.jsonl, then the resumed run's 3-4
            assert [s for s, _ in dash.panel("kl").history] == [1, 2, 3, 4]
            await pilot.press("q")
        steps = [r["step"] for r in records(tmp_path / "run" / "metrics.jsonl")]
        assert steps == [1, 2, 3, 4]
        assert checkpoint_steps(tmp_path / "run")[-1] == 4
    asyncio.run(go())


def test_process_exits_cleanly_after_a_run(tiny_model, tmp_path):
    """MLX used on the worker thread must be cleaned up there: otherwise the process
    aborts at exit (code 134) after a run that went well."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import asyncio
        from tui_trainer.app import TrainerApp
        from tui_trainer.config import Config, JudgeSpec

        async def go(run_dir):
            cfg = Config(model={str(tiny_model)!r}, run_dir=run_dir, steps=2, batch_size=2, num_samples=2,
                         max_new_tokens=6, ppo_epochs=1, minibatch_size=4, save_every=0,
                         judges=[JudgeSpec("rules")])
            app = TrainerApp(cfg, start=True)
            async with app.run_test(size=(80, 24)) as pilot:
                while not app.run_ended:
                    await asyncio.sleep(0.05)
                assert app.status == "finished", app.error
                await pilot.press("q")
        import sys
        asyncio.run(go(sys.argv[1]))
        print("ok")
    """)
    for i in range(2):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"run{i}")], capture_output=True,
                             text=True, timeout=180)
        assert (out.returncode, out.stdout.strip()) == (0, "ok"), out.stderr[-1500:]


def slow_judge(prompt: str, completion: str) -> float:
    """A judge that takes its time (a llama judge on a slow machine, say)."""
    time.sleep(1.0)
    return len(completion) / 10


async def wait_for_phase(pilot, app, step: int, phase: str):
    """Until the dashboard's step-progress line shows ``phase`` of ``step``; returns the dashboard."""
    from tui_trainer.widgets.progress import StepProgress

    dash = app.dashboard
    bar = dash.query_one(StepProgress)
    await wait_for(pilot, lambda: bar.latest is not None and bar.latest.step == step and bar.latest.phase == phase,
                   what=f"step {step} {phase}")
    return dash


def test_step_progress_shows_the_phase_of_the_step_in_flight(tiny_model, tmp_path):
    cfg = tiny_config(tiny_model, tmp_path / "run", steps=2,
                      judges=[JudgeSpec("rules", 1.0, {"callable": "test_app_run:slow_judge"})])

    async def go():
        app = TrainerApp(cfg, start=True)
        async with app.run_test(size=(100, 24)) as pilot:
            # the first judge call takes seconds: the bar says so before any step has finished
            dash = await wait_for_phase(pilot, app, 1, "judging")
            assert dash.steps_seen == 0
            app.redraw()
            await pilot.pause()
            text = screen_text(app)
            assert "step 1" in text and "judging 0/4 samples" in text, text
            await wait_for(pilot, lambda: app.run_ended, what="run finished")
            await pilot.press("q")
    asyncio.run(go())


def test_q_twice_abandons_the_step_in_flight(tiny_model, tmp_path):
    """q: stop after this step (the footer offers 'q again: stop now'); q again: stop now, even
    inside a judge call, with the checkpoint of the last completed step."""
    cfg = tiny_config(tiny_model, tmp_path / "run", steps=50, batch_size=4, max_new_tokens=6,
                      judges=[JudgeSpec("rules", 1.0, {"callable": "test_app_run:slow_judge"})])

    async def go():
        app = TrainerApp(cfg, start=True)
        async with app.run_test(size=(100, 24)) as pilot:
            dash = await wait_for_phase(pilot, app, 2, "judging")
            assert dash.steps_seen == 1
            await pilot.press("q")
            await pilot.pause()
            assert app.stopping_after_step and app.is_running
            app.redraw()
            await pilot.pause()
            text = screen_text(app)
            assert "q again: stop now" in text and "stopping after this step" in text, text
            t0 = time.monotonic()
            await pilot.press("q")
            await wait_for(pilot, lambda: not app.is_running, timeout=30, what="exit after the second q")
            waited = time.monotonic() - t0
        assert app.return_value == 0
        assert waited < 4.0, waited  # the judge call (4 samples x 1 s) was not waited for
        steps = [r["step"] for r in records(tmp_path / "run" / "metrics.jsonl")]
        assert steps == [1]
        assert checkpoint_steps(tmp_path / "run") == [1]
    asyncio.run(go())
