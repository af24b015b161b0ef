"""Nothing lost, nothing injected: bad input and faults, one row each.

Every row runs the command line in-process (``cli.main``) the way a user or a careless script
would, and checks the exit code, that stderr is one ``tui-trainer: error:`` line (no traceback),
and what must (not) be left on disk. The next case is one more ``Case(...)``. Cases that are not
a command (the console judge, checkpoints, a NaN in the update) follow the table.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import pytest

from tui_trainer.cli import main
from tui_trainer.engine.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from tui_trainer.errors import TrainerError
from tui_trainer.engine.runfiles import RunLock
from tui_trainer.plugins import hookimpl
from tui_trainer.plugins.builtin.labels import append_label

ESC = "\x1b"


# ---------------------------------------------------------------- judge callables used by the rows
def huge(prompt: str, completion: str) -> float:
    """1e300 for every other completion: finite in float64, infinite in float32."""
    return 1e300 if len(completion) % 2 else len(completion) / 20


def exits(prompt: str, completion: str) -> float:
    raise SystemExit(3)


def escapes(prompt: str, completion: str) -> float:
    raise ValueError(f"{ESC}]0;pwned{chr(7)}{ESC}[2J bad judge")


def sigterm(prompt: str, completion: str) -> float:
    """Sends SIGTERM to this process on the first call of step 2 (the first step completes)."""
    sigterm.calls = getattr(sigterm, "calls", 0) + 1
    if sigterm.calls == 9:  # step 1 scores 8 completions
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1.0)
    return len(completion) / 20


def fails(prompt: str, completion: str) -> float:
    raise RuntimeError("judge down")


class StringVerdictJudge:
    """A plugin judge whose compare returns the string "a" instead of a Verdict."""

    def __init__(self, options, context):
        pass

    def compare(self, prompt, a, b):
        return "a"


# ---------------------------------------------------------------- the table
@dataclass
class Ctx:
    tmp: Path
    model: Path
    prompts: Path

    @property
    def run(self) -> Path:
        return self.tmp / "run"

    def train(self, *extra: str, judge: str = "test_trainer:char_length", steps: int = 2,
              run: Path | None = None) -> list[str]:
        judges = json.dumps([{"name": "rules", "options": {"callable": judge}}])
        return ["train", "--headless", "--model", str(self.model), "--data", str(self.prompts),
                "--run-dir", str(run or self.run), "--steps", str(steps), "--set", f"judges={judges}",
                "--set", "adapter.rank=4", "--set", "adapter.layers=1", "--set", "max_new_tokens=8",
                "--set", "batch_size=4", "--set", "num_samples=2", "--set", "save_every=0", *extra]


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    code: int
    says: str = ""  # in the error line (or in all output when the exit code is 0)
    prepare: Callable[[Ctx], None] | None = None
    check: Callable[[Ctx, str], None] | None = None
    fast: bool = False  # answered before any model loads: under a second


def _gsm_rows_one_without_answer(ctx: Ctx) -> None:
    rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?"}, {"question": "3+3?", "answer": "#### 6"}]
    (ctx.tmp / "gsm.jsonl").write_text("".join(json.dumps({"prompt": r.pop("question"), **r}) + "\n" for r in rows))


def _labels(ctx: Ctx, step: int = 1, n: int = 1) -> Path:
    path = ctx.run / "labels.jsonl"
    for i in range(n):
        append_label(path, {"step": step, "judge": "human", "kind": "pairwise", "prompt": "p", "a": f"x{i}",
                            "b": "y", "shown": ["a", "b"], "choice": "a"})
    return path


def _strict_json_rows(path: Path) -> list[dict]:
    def no_constants(token):
        raise AssertionError(f"{path.name} holds a bare {token} token (not JSON)")

    return [json.loads(line, parse_constant=no_constants) for line in path.read_text().splitlines()]


def _no_nonfinite_checkpoint(ctx: Ctx) -> None:
    data = load_checkpoint(latest_checkpoint(ctx.run))
    tensors = [*data["adapters"].values(), *data["value_head"].values()]
    tensors += [v for opt in data["optimizers"].values() for v in _leaves(opt)]
    assert tensors and all(mx.isfinite(t).all().item() for t in tensors)


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _leaves(v)
    elif isinstance(tree, mx.array):
        yield tree


def _check_huge(ctx: Ctx, out: str) -> None:
    rows = _strict_json_rows(ctx.run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["reward_mean"]) for r in rows)
    _strict_json_rows(ctx.run / "samples.jsonl")
    _no_nonfinite_checkpoint(ctx)
    assert "beyond ±1e+06" in out and "score_clip" in out
    assert "0" * 30 not in out  # no 300-digit number in the log


def _resume_after_lost_checkpoint(ctx: Ctx) -> None:
    # a run of 3 steps with checkpoints 2 and 3; the newest is lost (corrupt, deleted); labels of
    # step 3 were given; the run is resumed from step 2
    assert main(ctx.train("--set", "save_every=2", steps=3)) == 0
    _labels(ctx, step=2)
    _labels(ctx, step=3, n=2)
    import shutil

    shutil.rmtree(ctx.run / "checkpoints" / "000003")


def _check_resumed_once(ctx: Ctx, out: str) -> None:
    assert [r["step"] for r in _strict_json_rows(ctx.run / "metrics.jsonl")] == [1, 2, 3, 4]
    samples = [r["step"] for r in _strict_json_rows(ctx.run / "samples.jsonl")]
    assert samples == sorted(samples) and all(samples.count(s) == 8 for s in (1, 2, 3, 4))
    assert [r["step"] for r in _strict_json_rows(ctx.run / "labels.jsonl")] == [2]
    assert [r["step"] for r in _strict_json_rows(ctx.run / "labels.after-2.jsonl")] == [3, 3]


def _check_resume_refused(ctx: Ctx, out: str) -> None:
    assert "rank: 4" in (ctx.run / "config.yaml").read_text()
    assert latest_checkpoint(ctx.run).name == "000002"


def _check_resume_allowed(ctx: Ctx, out: str) -> None:
    assert "steps: 3" in (ctx.run / "config.yaml").read_text() and "resumed with changes: steps: 2 -> 3" in out
    assert [r["step"] for r in _strict_json_rows(ctx.run / "metrics.jsonl")] == [1, 2, 3]


def _hold_lock(ctx: Ctx) -> None:
    ctx.run.mkdir(parents=True)
    ctx.lock = RunLock(ctx.run).acquire()  # released when the test's ctx goes away


def _stale_lock(ctx: Ctx) -> None:
    ctx.run.mkdir(parents=True)
    (ctx.run / ".lock").write_text("999999\n")  # a pid that holds no flock any more


def _not_created(ctx: Ctx, out: str) -> None:
    assert not ctx.run.exists(), "the run directory was created before the input was checked"


def _bomb(ctx: Ctx) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    (ctx.tmp / "bomb.yaml").write_text("\n".join(lines) + "\n")


def _big(ctx: Ctx) -> None:
    (ctx.tmp / "big.yaml").write_text("".join(f"key_{i}: {i}\n" for i in range(300_000)))


def _file_at(rel: str) -> Callable[[Ctx], None]:
    def prepare(ctx: Ctx) -> None:
        (ctx.tmp / rel).write_text("not a directory\n")
    return prepare


def _labels_unchanged(ctx: Ctx, out: str) -> None:
    assert [r["kind"] for r in _strict_json_rows(ctx.run / "labels.jsonl")] == ["pairwise"]


def _fifo(ctx: Ctx) -> None:
    _labels(ctx)
    os.mkfifo(ctx.tmp / "pipe")


def _still_fifo(ctx: Ctx, out: str) -> None:
    import stat

    assert stat.S_ISFIFO(os.lstat(ctx.tmp / "pipe").st_mode)


def _empty_model_dir(ctx: Ctx) -> None:
    (ctx.tmp / "empty").mkdir()


def _string_verdict_plugin(ctx: Ctx) -> None:
    from tui_trainer.plugins import manager

    reg = manager.get_plugin_manager()
    if "string_verdict" not in reg.judges:
        reg.add_plugin("test-string-verdict", _Registrar(), "0")


class _Registrar:
    @hookimpl
    def register_judges(self, register):
        register("string_verdict", StringVerdictJudge, kind="pairwise", description="returns 'a'")


CASES = [
    # ---- loses or corrupts data
    Case("huge-score", lambda c: c.train(judge="test_bad_input:huge"), 0, check=_check_huge),
    Case("labels-export-onto-its-input",
         lambda c: ["labels", "export", str(c.run), "-o", str(c.run / "labels.jsonl")], 2,
         "is the labels file being exported", prepare=lambda c: _labels(c), check=_labels_unchanged, fast=True),
    Case("labels-export-onto-a-directory", lambda c: ["labels", "export", str(c.run), "-o", str(c.tmp)], 2,
         "is a directory", prepare=lambda c: _labels(c), fast=True),
    Case("labels-export-onto-a-fifo", lambda c: ["labels", "export", str(c.run), "-o", str(c.tmp / "pipe")], 2,
         "not a regular file", prepare=_fifo, check=_still_fifo, fast=True),
    Case("resume-after-the-newest-checkpoint-is-lost", lambda c: c.train("--resume", steps=4), 0,
         prepare=_resume_after_lost_checkpoint, check=_check_resumed_once),
    Case("resume-changing-the-adapter", lambda c: c.train("--resume", "--set", "adapter.rank=2", steps=3), 2,
         "--resume cannot change adapter.rank: 4 -> 2", prepare=lambda c: main(c.train()),
         check=_check_resume_refused),
    Case("resume-changing-the-steps", lambda c: c.train("--resume", steps=3), 0,
         prepare=lambda c: main(c.train()), check=_check_resume_allowed),
    Case("two-runs-in-one-directory", lambda c: c.train(), 2, "is in use by another tui-trainer run (pid",
         prepare=_hold_lock, fast=True),
    Case("stale-lock-file", lambda c: c.train(steps=1), 0, prepare=_stale_lock),
    # ---- crashes, hangs and late errors
    Case("yaml-alias-bomb", lambda c: ["train", "--headless", "--config", str(c.tmp / "bomb.yaml")], 2,
         "aliases", prepare=_bomb, fast=True),
    Case("five-megabyte-config", lambda c: ["train", "--headless", "--config", str(c.tmp / "big.yaml")], 2,
         "is not a config file", prepare=_big, fast=True),
    Case("run-dir-is-a-file", lambda c: c.train(run=c.tmp / "afile"), 2, "exists and is not a directory",
         prepare=_file_at("afile"), fast=True),
    Case("run-dir-under-a-file", lambda c: c.train(run=c.tmp / "afile" / "run"), 2, "is a file, not a directory",
         prepare=_file_at("afile"), fast=True),
    Case("missing-data-file",
         lambda c: c.train()[:4] + ["--data", str(c.tmp / "nope.jsonl")] + c.train()[6:], 2,
         "nope.jsonl: no such file", check=_not_created, fast=True),
    Case("unknown-judge-name", lambda c: c.train("--judge", "rulez"), 2, "did you mean 'rules'",
         check=_not_created, fast=True),
    Case("invalid-regex-option",
         lambda c: c.train("--set", 'judges=[{"name": "rules", "options": {"regex": true, "require": ["(a"]}}]'),
         2, "require", check=_not_created, fast=True),
    Case("answer-judge-on-data-without-the-column",
         lambda c: c.train("--set", 'judges=[{"name": "answer"}]'), 2,
         "no column 'answer', which judge answer needs", check=_not_created, fast=True),
    Case("answer-missing-on-some-rows",
         lambda c: c.train()[:4] + ["--data", str(c.tmp / "gsm.jsonl")] + c.train("--set", 'judges=[{"name": "answer"}]')[6:],
         2, "gsm.jsonl line 2: no 'answer' value, which judge answer needs (1 of 3 rows lack it)",
         prepare=_gsm_rows_one_without_answer, check=_not_created, fast=True),
    Case("uncached-hub-dataset-offline",
         lambda c: c.train()[:4] + ["--data", "nobody-here/no-such-dataset-xyz"] + c.train()[6:], 2,
         "not in the local Hugging Face cache; the hub is offline (HF_HUB_OFFLINE=1)", check=_not_created),
    # ---- smaller
    Case("judge-b-on-a-pointwise-judge", lambda c: ["judge", "rules", "--prompt", "p", "--a", "x", "--b", "y"], 2,
         "cannot compare two completions", fast=True),
    Case("callable-raising-systemexit", lambda c: c.train(judge="test_bad_input:exits", steps=1), 0,
         "SystemExit"),
    Case("compare-returning-a-string",
         lambda c: ["judge", "string_verdict", "--prompt", "p", "--a", "x", "--b", "y"], 2,
         "returned str 'a' instead of a Verdict", prepare=_string_verdict_plugin, fast=True),
    Case("judge-failure-stop-at-step-1",
         lambda c: c.train("--set", "judge_failure=stop", judge="test_bad_input:fails"), 2,
         "nothing trained yet"),
    Case("sigterm-exit-code", lambda c: c.train(judge="test_bad_input:sigterm", steps=3), 143,
         "stopped at step 1"),
    Case("empty-model-directory", lambda c: c.train()[:2] + ["--model", str(c.tmp / "empty")] + c.train()[4:], 2,
         "not a model directory (no config.json)", prepare=_empty_model_dir, check=_not_created, fast=True),
    Case("unknown-hub-id-offline",
         lambda c: c.train()[:2] + ["--model", "no-such-org/no-such-model-xyz"] + c.train()[4:], 2,
         "not in the Hugging Face cache", check=_not_created, fast=True),
    Case("escape-sequences-in-an-error-line",
         lambda c: c.train()[:4] + ["--data", str(c.tmp / f"{ESC}]0;pwned{chr(7)}.jsonl")] + c.train()[6:], 2,
         "pwned", fast=True),
    Case("escape-sequences-in-a-judge-error", lambda c: c.train(judge="test_bad_input:escapes", steps=1), 0,
         "bad judge"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tiny_dir, prompts_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ctx = Ctx(tmp_path, tiny_dir, prompts_file)
    if case.prepare is not None:
        case.prepare(ctx)
    capsys.readouterr()
    t0 = time.perf_counter()
    code = main(case.argv(ctx))
    took = time.perf_counter() - t0
    out, err = capsys.readouterr()
    assert code == case.code, (out, err)
    assert "Traceback" not in out + err
    assert ESC not in out + err  # nothing from a judge, a prompt or a completion reaches the terminal raw
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tui-trainer: error: "), err
        assert case.says in lines[0], err
    else:
        assert case.says in out + err, out + err
    if case.fast:
        assert took < 1.0, f"answered after {took:.1f}s"
    if case.check is not None:
        case.check(ctx, out + err)
    lock = getattr(ctx, "lock", None)
    if lock is not None:
        lock.release()


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in "abcdefghij"))
    return path


# ---------------------------------------------------------------- not commands
def test_the_console_judge_prints_no_escape_sequences():
    from rich.console import Console

    from tui_trainer.plugins.builtin.human import ConsolePrompter

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, color_system=None, width=80)
    evil = f"hi {ESC}]0;pwned{chr(7)} there {ESC}[2J{ESC}[31m red"
    p = ConsolePrompter(console=console, stdin=io.StringIO("1\n5\n"))
    assert p.compare(evil, evil, evil, judge="human", step=1).choice == "a"
    assert p.rate(evil, evil, judge="human", step=1) == 5.0
    text = buf.getvalue()
    assert ESC not in text and chr(7) not in text and "there" in text


def test_rollout_prints_no_escape_sequences(tiny_dir, capsys):
    assert main(["rollout", "--model", str(tiny_dir), "--prompt", f"x {ESC}]0;pwned{chr(7)} {ESC}[2J y",
                 "-n", "1", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert ESC not in out and chr(7) not in out and "pwned" in out


def test_a_checkpoint_is_never_written_with_a_nonfinite_tensor(tmp_path):
    with pytest.raises(TrainerError, match="adapter tensor"):
        save_checkpoint(tmp_path, 1, adapter_weights={"a": mx.array([1.0, math.nan])}, adapter_config={},
                        value_head={"w": mx.zeros(2)}, optimizers={}, state={"step": 1})
    assert latest_checkpoint(tmp_path) is None and not (tmp_path / "checkpoints").exists()


def test_a_nonfinite_update_is_not_applied_and_three_in_a_row_stop(tiny_dir, prompts_file, tmp_path, monkeypatch):
    from test_trainer import make_config, run

    from tui_trainer.engine import ppo
    from tui_trainer.engine import trainer as trainer_mod

    real = ppo.policy_loss
    state = {"poison_from": 2}
    seen = {}

    def poisoned(logp, *args, **kw):
        loss, st = real(logp, *args, **kw)
        return (loss * math.nan if seen["step"] >= state["poison_from"] else loss), st

    monkeypatch.setattr(trainer_mod.ppo, "policy_loss", poisoned)
    orig_step = trainer_mod.Trainer.train_step

    def train_step(self):
        seen["step"] = self.step + 1
        if seen["step"] == 2:
            seen["after1"] = {k: v for k, v in self.policy.adapter_weights().items()}
        return orig_step(self)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", train_step)
    cfg = make_config(tiny_dir, prompts_file, tmp_path / "run", steps=6)
    with pytest.raises(TrainerError, match="3 steps in a row had a non-finite loss"):
        run(cfg)
    rows = _strict_json_rows(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]  # steps 2 and 3 skipped their update; step 4 stopped the run
    assert [r["skipped_update"] for r in rows] == [0.0, 1.0, 1.0]
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert ckpt["state"]["step"] == 3
    for k, v in seen["after1"].items():  # the skipped steps left the adapter as step 1 made it
        assert mx.array_equal(ckpt["adapters"][k], v).item(), k
