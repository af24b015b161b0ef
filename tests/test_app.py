"""The app's handling of engine events, driven with real events.py objects.

These tests feed the UI the exact event types the Trainer emits (from another
thread where the real observer would run) and check what the screens show and
what goes back to the engine. Runs with the real Trainer are in test_app_run.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager

import pytest

from tui_trainer.app import TrainerApp
from tui_trainer.runner import PromptBridge as TuiPrompter
from tui_trainer.config import Config
from tui_trainer.events import (
    CheckpointSaved, JudgeRequest, LogMessage, RunState, Sample, StepMetrics, Verdict,
)
from tui_trainer.screens.dashboard import DashboardScreen
from tui_trainer.screens.judging import JudgingScreen, parse_rating
from tui_trainer.widgets.format import format_value

from helpers import screen_text


def step_values(step: int) -> dict[str, float]:
    return {"step": step, "score_mean": 0.1 * step - 0.05, "kl": 0.003 * step, "clip_fraction": 0.02 * step,
            "entropy": 2.5 - 0.1 * step, "value_loss": 0.7 / step, "approx_kl": 1e-4 * step,
            "response_length": 20.0 + step, "generation_tokens_per_second": 100.0 + step, "samples_per_second": 0.5, "time_rollout": 1.0,
            "time_judge": 0.5, "time_update": 2.5}


def run(coro):
    return asyncio.run(coro)


async def wait_for(pilot, predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)


def in_thread(fn, *args, **kwargs):
    """Run ``fn`` on another thread (as the engine would); returns a dict that gets 'result'."""
    box: dict = {}

    def target():
        box["result"] = fn(*args, **kwargs)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    box["thread"] = t
    return box

@asynccontextmanager
async def dashboard_app(size=(80, 24)):
    """A TrainerApp on its dashboard (no run started), driven by a pilot."""
    cfg = Config(steps=5)
    app = TrainerApp(cfg)
    async with app.run_test(size=size) as pilot:
        app.open_dashboard(cfg)
        await pilot.pause()
        yield app, pilot



def test_panels_show_each_step_from_the_engine_thread():
    async def go():
        async with dashboard_app(size=(80, 24)) as (app, pilot):
            events = [RunState("starting", 0, 5), RunState("running", 0, 5)]
            for s in range(1, 4):
                events += [StepMetrics(s, step_values(s)),
                           [Sample(s, f"prompt {s}", f"completion [b]{s}", 0.5 * s, {"rules": 0.5 * s})],
                           RunState("running", s, 5)]
            events.append(CheckpointSaved(3, "runs/x/checkpoints/3"))
            # the observer is called on the engine thread; it must only post into the UI
            box = in_thread(lambda: [app._observe(e) for e in events])
            box["thread"].join(5)
            dash: DashboardScreen = app.dashboard
            await wait_for(pilot, lambda: dash.steps_seen == 3 and "checkpoint" in " ".join(
                dash.query_one("#log").plain_lines))
            app.redraw()  # what the dashboard's timer does
            await pilot.pause()
            for key in ("score_mean", "kl", "clip_fraction"):
                panel = dash.panel(key)
                assert panel.values == [step_values(s)[key] for s in (1, 2, 3)]
                assert panel.value_text().startswith(format_value(step_values(3)[key]))
            text = screen_text(app)
            assert format_value(step_values(3)["score_mean"]) in text
            assert format_value(step_values(3)["kl"]) in text
            assert format_value(step_values(3)["entropy"]) in text
            assert "step 3/5" in text
            assert "completion [b]3" in text  # shown as text, not as markup
            assert "runs/x/checkpoints/3" in " ".join(dash.query_one("#log").plain_lines)
    run(go())


def test_samples_view_keys_open_a_sample_in_full():
    async def go():
        cfg = Config(steps=5)
        app = TrainerApp(cfg)
        async with app.run_test(size=(80, 24)) as pilot:
            dash = app.open_dashboard(cfg)
            await pilot.pause()
            long_text = "word " * 60 + "THE END"
            app.handle_event([Sample(1, "first prompt", long_text, 0.25), Sample(1, "second prompt", "short", 0.75)])
            app.redraw()
            view = dash.query_one("#samples")
            view.focus()
            await pilot.pause()
            assert "short" in screen_text(app) and "THE END" not in screen_text(app)  # cut to one line
            await pilot.press("up", "enter")
            await pilot.pause()
            assert type(app.screen).__name__ == "SampleScreen"
            text = screen_text(app)
            assert "first prompt" in text and "THE END" in text and "0.2500" in text
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is dash
    run(go())


def test_control_characters_in_model_output_never_reach_the_terminal():
    async def go():
        cfg = Config(steps=5)
        app = TrainerApp(cfg)
        async with app.run_test(size=(80, 24)) as pilot:
            app.open_dashboard(cfg)
            await pilot.pause()
            evil = "ok\x1b[2J\x1b]0;owned\x07 宽字符宽字符宽字符宽字符宽字符宽字符宽字符宽字符宽字符宽字符 end"
            app.handle_event([Sample(1, "p\x1b[31m", evil, 0.5)])
            app.handle_event(LogMessage("warning", "judge said \x1b[5m"))
            app.redraw()
            await pilot.pause()
            text = screen_text(app)
            assert "\x1b" not in text and "\x07" not in text
            assert "ok\ufffd[2J" in text
            assert all(len(line) <= 80 for line in text.splitlines())  # wide characters cut by cells
            box = in_thread(app.prompter.compare, "q\x1b[H", evil, "b\x9b1m", judge="human", step=1)
            await wait_for(pilot, lambda: isinstance(app.screen, JudgingScreen)
                           and app.screen.request is not None)
            text = screen_text(app)
            assert "\x1b" not in text and "\x9b" not in text and "q\ufffd[H" in text
            await pilot.press("s")
            box["thread"].join(5)
    run(go())


def test_histories_logs_and_samples_stay_bounded():
    async def go():
        cfg = Config(steps=5000)
        app = TrainerApp(cfg)
        async with app.run_test(size=(80, 24)) as pilot:
            dash = app.open_dashboard(cfg)
            await pilot.pause()
            for s in range(1, 1301):
                app.handle_event(StepMetrics(s, step_values(s)))
            for s in range(1, 260):
                app.handle_event([Sample(s, "p", "c", 1.0)])
            for i in range(1100):
                app.handle_event(LogMessage("info", f"line {i}"))
            app.redraw()
            await pilot.pause()
            panel = dash.panel("kl")
            assert len(panel.history) == panel.history.maxlen == 1000
            assert panel.history[-1] == (1300, step_values(1300)["kl"])
            table = dash.query_one("#samples")
            assert table.row_count == table.max_rows == 200
            log = dash.query_one("#log")
            assert len(log.plain_lines) == 1000 and log.plain_lines[-1].endswith("line 1099")
            assert len(log.lines) <= 1000
    run(go())


def test_layout_fits_80x24():
    async def go():
        cfg = Config(steps=5)
        app = TrainerApp(cfg)
        async with app.run_test(size=(80, 24)) as pilot:
            dash = app.open_dashboard(cfg)
            await pilot.pause()
            app.handle_event(StepMetrics(1, step_values(1)))
            app.redraw()
            await pilot.pause()
            for selector in ("#status", "#panel-score_mean", "#panel-kl", "#panel-clip_fraction",
                             "#stat-entropy", "#stat-value_loss", "#stat-approx_kl", "#stat-response_length",
                             "#stat-generation_tokens_per_second", "#step-split", "#progress", "#samples", "#log",
                             "Footer"):
                region = dash.query_one(selector).region
                assert region.height > 0 and region.width > 0, selector
                assert region.x >= 0 and region.right <= 80 and region.bottom <= 24, (selector, region)
            # three panels side by side, each with room for a plot
            panels = [dash.panel(k).region for k in ("score_mean", "kl", "clip_fraction")]
            assert len({r.y for r in panels}) == 1 and all(r.width >= 20 and r.height >= 6 for r in panels)
            text = screen_text(app)
            for word in ("reward", "KL (k1)", "clip fraction", "entropy", "value loss", "approx KL",
                         "resp len", "tok/s", "Pause", "Checkpoint", "Quit", "Help"):
                assert word in text, word
            assert len(text.splitlines()) <= 24 and max(len(line) for line in text.splitlines()) <= 80
    run(go())


def test_step_time_split_reads_without_colour():
    async def go():
        cfg = Config(steps=5)
        app = TrainerApp(cfg)
        async with app.run_test(size=(80, 24)) as pilot:
            dash = app.open_dashboard(cfg)
            await pilot.pause()
            app.handle_event(StepMetrics(1, {"time_rollout": 3.0, "time_judge": 1.0, "time_update": 4.0}))
            app.redraw()
            await pilot.pause()
            split = dash.query_one("#step-split")
            assert split.fractions() == pytest.approx({"time_rollout": 0.375, "time_judge": 0.125,
                                                       "time_update": 0.5})
            bar = split.bar(16)
            assert bar == "█" * 6 + "▒" * 2 + "░" * 8
            assert "3.0/1.0/4.0s" in screen_text(app)
    run(go())


def test_status_line_names_the_slowest_rank_of_several():
    async def go():
        cfg = Config(steps=5)
        app = TrainerApp(cfg)
        async with app.run_test(size=(120, 24)) as pilot:
            dash = app.open_dashboard(cfg)
            await pilot.pause()
            app.handle_event(StepMetrics(1, {"time_rollout": 3.0, "time_judge": 1.0, "time_update": 4.0}))
            app.redraw()
            await pilot.pause()
            assert "rank" not in dash.status_text()  # one process
            app.handle_event(StepMetrics(2, {"time_rollout": 3.0, "ranks": 2, "time_step_slowest_rank": 1.0,
                                             "time_step_rank_spread": 1.43}))
            app.redraw()
            await pilot.pause()
            assert "slowest rank 1 (1.4x)" in dash.status_text()
            assert "slowest rank 1 (1.4x)" in screen_text(app)
    run(go())


@pytest.mark.parametrize("key,choice", [("1", "a"), ("b", "b"), ("t", "tie"), ("s", "skip")])
def test_judging_screen_answers_the_engine_with_the_pressed_key(key, choice):
    async def go():
        async with dashboard_app(size=(80, 24)) as (app, pilot):
            box = in_thread(app.prompter.compare, "Which is kinder?", "first answer", "second answer",
                            judge="human", step=4)
            await wait_for(pilot, lambda: isinstance(app.screen, JudgingScreen)
                           and app.screen.request is not None)
            await wait_for(pilot, lambda: "Which is kinder?" in screen_text(app))  # drawn (slow machines lag)
            text = screen_text(app)
            assert "Which is kinder?" in text and "first answer" in text and "second answer" in text
            assert "1 waiting" in text and "step 4" in text
            await pilot.press(key)
            box["thread"].join(5)
            assert box["result"] == Verdict(choice)
            assert app.ledger.counts[choice] == 1
            assert not app.pending
            # with nothing waiting, the screen goes back to the dashboard by itself
            await wait_for(pilot, lambda: app.screen is app.dashboard)
    run(go())


def test_pointwise_rating_keys_respect_the_scale():
    async def go():
        async with dashboard_app(size=(80, 24)) as (app, pilot):
            box = in_thread(app.prompter.rate, "Rate this", "a completion", judge="human", step=1,
                            scale=(1, 5))
            await wait_for(pilot, lambda: isinstance(app.screen, JudgingScreen)
                           and app.screen.request is not None)
            assert "1-5" in screen_text(app)
            await pilot.press("7", "a", "0")  # off the scale / not a rating: ignored
            await pilot.pause(0.1)
            assert box["thread"].is_alive() and app.waiting_count() == 1
            await pilot.press("4")
            box["thread"].join(5)
            assert box["result"] == 4.0
            box = in_thread(app.prompter.rate, "Rate this too", "another", judge="human", step=1)
            await wait_for(pilot, lambda: isinstance(app.screen, JudgingScreen)
                           and app.screen.request is not None and app.screen.request.prompt == "Rate this too")
            await pilot.press("s")
            box["thread"].join(5)
            assert box["result"] is None
            assert app.ledger.counts["rated"] == 1 and app.ledger.counts["skip"] == 1
            assert "mean 4.00" in app.ledger.summary()
    run(go())


def test_judging_layout_side_by_side_when_wide_stacked_when_narrow():
    async def go():
        async with dashboard_app(size=(80, 24)) as (app, pilot):
            box = in_thread(app.prompter.compare, "p", "left text", "right text", judge="human", step=1)
            await wait_for(pilot, lambda: isinstance(app.screen, JudgingScreen)
                           and app.screen.request is not None)
            screen = app.screen
            a, b = screen.query_one("#choice-a").region, screen.query_one("#choice-b").region
            assert not screen.wide and b.y >= a.bottom and a.width == b.width  # stacked
            await pilot.resize_terminal(120, 30)
            await pilot.pause(0.1)
            a, b = screen.query_one("#choice-a").region, screen.query_one("#choice-b").region
            assert screen.wide and a.y == b.y and b.x >= a.right  # side by side
            await pilot.press("2")
            box["thread"].join(5)
            assert box["result"] == Verdict("b")
    run(go())


def test_two_waiting_questions_are_answered_in_order_and_counted():
    async def go():
        async with dashboard_app(size=(80, 24)) as (app, pilot):
            first = in_thread(app.prompter.compare, "first?", "a1", "b1", judge="human", step=1)
            await wait_for(pilot, lambda: app.waiting_count() == 1)
            second = in_thread(app.prompter.compare, "second?", "a2", "b2", judge="human", step=1)
            await wait_for(pilot, lambda: app.waiting_count() == 2
                           and isinstance(app.screen, JudgingScreen))
            await pilot.pause(0.05)
            assert "2 waiting" in screen_text(app) and "first?" in screen_text(app)
            await pilot.press("a")
            first["thread"].join(5)
            await pilot.pause(0.05)
            assert "second?" in screen_text(app) and "1 waiting" in screen_text(app)
            await pilot.press("2")
            second["thread"].join(5)
            assert (first["result"], second["result"]) == (Verdict("a"), Verdict("b"))
            assert "decided 2: A 1 · B 1" in app.ledger.summary()
    run(go())


def test_escape_leaves_the_question_waiting_and_j_returns_to_it():
    async def go():
        async with dashboard_app(size=(80, 24)) as (app, pilot):
            box = in_thread(app.prompter.compare, "p?", "x", "y", judge="human", step=2)
            await wait_for(pilot, lambda: isinstance(app.screen, JudgingScreen)
                           and app.screen.request is not None)
            await pilot.press("escape")
            await pilot.pause(0.05)
            assert app.screen is app.dashboard and box["thread"].is_alive()
            assert "judge: 1 waiting (j)" in screen_text(app)
            await pilot.press("j")
            await wait_for(pilot, lambda: isinstance(app.screen, JudgingScreen))
            await pilot.press("t")
            box["thread"].join(5)
            assert box["result"] == Verdict("tie")
    run(go())


def test_closed_prompter_answers_skip_and_never_blocks():
    delivered = []
    prompter = TuiPrompter(lambda req: delivered.append(req) or True)
    box = in_thread(prompter.compare, "p", "a", "b", judge="human", step=0)
    deadline = time.monotonic() + 5
    while not delivered and time.monotonic() < deadline:
        time.sleep(0.01)
    assert box["thread"].is_alive()  # blocked on the future
    prompter.close()
    box["thread"].join(5)
    assert box["result"] == Verdict("skip")
    assert prompter.rate("p", "c", judge="human", step=0) is None  # after close: at once
    # a UI that is gone (deliver returns False) also means skip, not a hang
    gone = TuiPrompter(lambda req: False)
    assert gone.compare("p", "a", "b", judge="human", step=0) == Verdict("skip")


def test_parse_rating():
    assert parse_rating("7", (0, 9)) == 7
    assert parse_rating("7", (1, 5)) is None
    assert parse_rating("x", (0, 9)) is None


def test_engine_judge_request_event_is_shown_like_a_prompter_question():
    async def go():
        async with dashboard_app(size=(80, 24)) as (app, pilot):
            request = JudgeRequest("pairwise", "event prompt", "A text", "B text", step=7)
            app._observe(request)
            await wait_for(pilot, lambda: isinstance(app.screen, JudgingScreen)
                           and app.screen.request is request)
            await pilot.press("1")
            assert request.future.result(timeout=1) == Verdict("a")
    run(go())


def test_help_opens_and_closes_with_keys():
    async def go():
        async with dashboard_app(size=(80, 24)) as (app, pilot):
            await pilot.press("question_mark")
            await pilot.pause()
            text = screen_text(app)
            assert "pause / resume" in text and "help" in text
            assert type(app.screen).__name__ == "HelpScreen"
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is app.dashboard
    run(go())


def test_failed_state_is_shown_and_sets_the_exit_code():
    async def go():
        cfg = Config(steps=5)
        app = TrainerApp(cfg)
        async with app.run_test(size=(80, 24)) as pilot:
            dash = app.open_dashboard(cfg)
            await pilot.pause()
            app.handle_event(RunState("failed", 2, 5, message="judge 'llama' failed 3 times"))
            app.redraw()
            await pilot.pause()
            assert app.status == "failed" and app.exit_code == 1
            assert "judge 'llama' failed 3 times" in dash.query_one("#log").plain_lines[-1]
            assert "failed" in screen_text(app)
    run(go())


def test_the_ui_never_imports_mlx():
    """The front end (app, screens, widgets, plugin listing) runs without loading MLX;
    only the Trainer, inside the worker, does."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import asyncio, sys
        from tui_trainer.app import TrainerApp
        from tui_trainer.config import Config
        from tui_trainer.events import StepMetrics
        import tui_trainer.screens.dashboard, tui_trainer.screens.judging, tui_trainer.screens.sample

        async def go():
            app = TrainerApp(Config(steps=3))
            async with app.run_test(size=(80, 24)) as pilot:
                await pilot.pause()
                await pilot.press("f2")
                await pilot.pause()
                dash = app.open_dashboard(Config(steps=3))
                await pilot.pause()
                app.handle_event(StepMetrics(1, {"kl": 0.1}))
                app.redraw()
                await pilot.pause()
        asyncio.run(go())
        print(sorted(m for m in sys.modules if m == "mlx" or m.startswith(("mlx.", "mlx_lm"))))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_warm_app_imports_the_engine_on_its_thread_while_setup_is_shown():
    """`tui-trainer` (run_app) warms the engine thread up: MLX and the trainer are imported while
    the setup screen is shown, so a run's first progress follows start within a second."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import asyncio, sys, time
        from tui_trainer.app import TrainerApp
        from tui_trainer.config import Config

        async def go():
            app = TrainerApp(Config(steps=3), warm=True)
            async with app.run_test(size=(80, 24)) as pilot:
                deadline = time.monotonic() + 60
                while "tui_trainer.engine.trainer" not in sys.modules and time.monotonic() < deadline:
                    await pilot.pause(0.1)
                assert type(app.screen).__name__ == "SetupScreen" and not app.run_active
                await pilot.press("ctrl+q")
            app.engine_stopped.wait(30)
            print("warm" if "mlx.core" in sys.modules and app.engine_stopped.is_set() else "cold")
        asyncio.run(go())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "warm"
