"""The engine runner without any UI: runs, stops, errors, the human-judge bridge, clean-up."""

from __future__ import annotations

import subprocess
import sys
import threading

from tui_trainer import events as ev
from tui_trainer.config import JudgeSpec
from tui_trainer.events import JudgeRequest, Verdict
from tui_trainer.runner import PromptBridge, Runner

from test_trainer import make_config, prompts_file  # noqa: F401  (prompts_file is a fixture)


def test_runner_imports_no_ui():
    code = "import sys, tui_trainer.runner; print(any(m.split('.')[0] in ('textual', 'mlx') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_a_run_on_the_engine_thread_reports_and_ends(tiny_dir, prompts_file, tmp_path):
    events, ended, threads = [], [], set()

    def observe(e):
        threads.add(threading.current_thread().name)
        events.append(e)

    runner = Runner(observer=observe, on_ended=ended.append)
    runner.start(make_config(tiny_dir, prompts_file, tmp_path / "run", steps=2))
    assert runner.worker_done.wait(120)
    assert runner.close(wait=30) and runner.engine_stopped.is_set()
    assert [r.state.status for r in ended] == ["finished"] and ended[0].exit_code == 0
    assert [e.step for e in events if isinstance(e, ev.StepMetrics)] == [1, 2]
    assert threads == {"tui-trainer-engine"}  # every event came from the one engine thread


def test_abort_mid_run_keeps_the_last_completed_step(tiny_dir, prompts_file, tmp_path):
    ended = []
    runner = Runner(observer=lambda e: None, on_ended=ended.append)

    def observe(e):  # abort as soon as step 2 starts its update
        if isinstance(e, ev.Progress) and e.step == 2 and e.phase == "update":
            runner.abort()

    runner._observer = observe
    runner.start(make_config(tiny_dir, prompts_file, tmp_path / "run", steps=5))
    assert runner.worker_done.wait(120)
    runner.close(wait=30)
    assert ended[0].state.status == "stopped" and ended[0].state.step == 1
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["000001"]


def test_bad_input_ends_the_run_with_one_line_and_code_2(tiny_dir, prompts_file, tmp_path):
    ended = []
    runner = Runner(observer=lambda e: None, on_ended=ended.append)
    cfg = make_config(tiny_dir, prompts_file, tmp_path / "run", judges=[JudgeSpec("rulez")])
    runner.start(cfg)
    assert runner.worker_done.wait(60)
    runner.close(wait=30)
    assert ended[0].state is None and ended[0].exit_code == 2
    assert "unknown judge 'rulez'" in ended[0].error and "\n" not in ended[0].error


def test_the_bridge_hands_requests_over_and_skips_once_closed():
    delivered: list[JudgeRequest] = []

    def deliver(req):
        delivered.append(req)
        threading.Timer(0.05, lambda: req.future.set_result(Verdict("b"))).start()
        return True

    bridge = PromptBridge(deliver)
    assert bridge.compare("p", "a", "b", judge="human", step=1) == Verdict("b")
    assert delivered[0].kind == "pairwise" and delivered[0].step == 1
    bridge.close()
    assert bridge.compare("p", "a", "b", judge="human", step=2) == Verdict("skip")
    assert bridge.rate("p", "a", judge="human", step=2) is None
    assert len(delivered) == 1  # nothing is asked after close
