"""After training (issue 15, parts 2-4): rollout --adapter, eval (win rate, Wilson interval), trackers
(csv, tensorboard), `metrics`, the dashboard's history on --resume, chat, install / uninstall, --version.

One tiny run (a random 2-layer llama, 2 PPO steps, trackers on) is trained once for the module; its
adapter is then made large so that the trained model visibly differs from the base.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import pytest

from tui_trainer import cli
from tui_trainer.config import AdapterConfig, Config, DataConfig, JudgeSpec
from tui_trainer.errors import ConfigError
from tui_trainer.evaluation import EvalResult, wilson_interval
from tui_trainer.run import build_run
from tui_trainer.text import printable

N_PROMPTS = 12


def char_length(prompt: str, completion: str) -> float:
    """The rule judge of these tests: characters / 10."""
    return len(completion) / 10


@pytest.fixture(scope="module")
def trained_run(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("after")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"tell me about item {i}"}) + "\n" for i in range(N_PROMPTS)))
    run_dir = root / "run"
    cfg = Config(model=str(tiny_dir), run_dir=str(run_dir), data=DataConfig(path=str(prompts)), steps=2,
                 batch_size=2, num_samples=2, max_new_tokens=8, minibatch_size=4, ppo_epochs=1, actor_lr=1e-3,
                 save_every=0, seed=3, adapter=AdapterConfig(rank=4, layers=2), report_to=["csv", "tensorboard"],
                 judges=[JudgeSpec("rules", 1.0, {"callable": "test_after:char_length"})])
    state = build_run(cfg).run()
    assert state.status == "finished"
    ckpt = run_dir / "checkpoints" / "000002"
    weights = mx.load(str(ckpt / "adapters.safetensors"))
    mx.random.seed(5)  # a large adapter: the trained model's greedy text differs from the base's
    weights = {k: (mx.random.normal(v.shape) * 0.5 if k.endswith("lora_b") else v) for k, v in weights.items()}
    mx.save_safetensors(str(ckpt / "adapters.safetensors"), weights)
    return run_dir


def _reference_policy(tiny_dir, run_dir):
    """The trained policy built by hand: mlx-lm's loader, our Policy, the checkpoint's tensors."""
    from mlx_lm import load

    from tui_trainer.engine.policy import Policy

    model, tok = load(str(tiny_dir))
    policy = Policy(model, AdapterConfig(rank=4, layers=2))
    policy.model.load_weights(list(mx.load(str(run_dir / "checkpoints/000002/adapters.safetensors")).items()),
                              strict=False)
    return policy, tok


def _greedy(model, tok, prompt: str, max_new: int) -> str:
    from tui_trainer.engine.rollout import sample

    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    eos = set(tok.eos_token_ids)
    r = sample(model, [ids], num_samples=1, max_new_tokens=max_new, temperature=0.0, eos_ids=eos,
               pad_id=tok.pad_token_id or 0)
    return tok.decode([t for t in r.responses[0] if t not in eos], skip_special_tokens=True)


# ----------------------------------------------------------------------------- rollout --adapter

def test_rollout_adapter_prints_the_policys_greedy_completion(tiny_dir, trained_run, capsys, monkeypatch):
    from tui_trainer.engine.policy import adapter_off

    policy, tok = _reference_policy(tiny_dir, trained_run)
    prompt = "tell me a story"
    expected = _greedy(policy.model, tok, prompt, 12)
    with adapter_off(policy) as base:
        assert _greedy(base, tok, prompt, 12) != expected  # the adapter matters for this prompt
    monkeypatch.setenv("COLUMNS", "400")
    assert cli.main(["rollout", "--adapter", str(trained_run), "--prompt", prompt, "--temperature", "0",
                     "-n", "1", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert printable(expected).strip() in out
    assert "checkpoints/000002" in out
    # a checkpoint folder works the same
    assert cli.main(["rollout", "--adapter", str(trained_run / "checkpoints" / "000002"), "--prompt", prompt,
                     "--temperature", "0", "-n", "1", "--max-new-tokens", "12"]) == 0
    assert printable(expected).strip() in capsys.readouterr().out


def test_rollout_adapter_bad_path_is_one_line(tmp_path, capsys):
    assert cli.main(["rollout", "--adapter", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tui-trainer: error:") and "no such run directory" in err and len(err.splitlines()) == 1
    assert cli.main(["rollout", "--adapter", str(tmp_path), "--prompt", "x"]) == 2
    assert "not a run directory with checkpoints/" in capsys.readouterr().err
    for command in ("chat", "eval"):  # refused before a screen opens or a model loads
        assert cli.main([command, str(tmp_path / "nope")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no such run directory" in err


# ----------------------------------------------------------------------------- eval

def test_wilson_interval_known_values():
    # 5 of 10: the textbook Wilson interval (0.2366, 0.7634); 0 of 10: upper bound z^2 / (n + z^2)
    lo, hi = wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and math.isclose(hi, 1.959964 ** 2 / (10 + 1.959964 ** 2), rel_tol=1e-6)
    lo, hi = wilson_interval(10, 10)
    assert math.isclose(hi, 1.0, abs_tol=1e-12) and math.isclose(lo, 10 / (10 + 1.959964 ** 2), rel_tol=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # ties count half: 3 wins, 2 ties, 1 loss of 6 -> 4 / 6
    r = EvalResult(["p"] * 7, ["a"] * 7, ["b"] * 7, ["win"] * 3 + ["tie"] * 2 + ["loss", "skip"])
    assert r.n == 6 and math.isclose(r.win_rate, 4 / 6)
    assert r.summary()["ci95"] == list(wilson_interval(4, 6))


def test_eval_end_to_end_on_the_tiny_run(tiny_dir, trained_run, capsys):
    from tui_trainer.engine.policy import adapter_off

    assert cli.main(["eval", str(trained_run), "--judge", "rules", "-o", "callable=test_after:char_length",
                     "-n", "100", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert set(summary) == {"win_rate", "ci95", "n"}
    assert "eval: sampling (trained)" in captured.err and "eval: judging (rules)" in captured.err
    report = json.loads((trained_run / "eval.json").read_text())
    assert "win rate of trained over base" in (trained_run / "eval.md").read_text()
    # held out: the 12 - 2 steps x 2 prompts the run never drew (samples.jsonl holds the ones it did)
    seen = {json.loads(line)["prompt"] for line in (trained_run / "samples.jsonl").read_text().splitlines()}
    held = [e["prompt"] for e in report["examples"]]
    assert len(held) == N_PROMPTS - 4 and not set(held) & seen and len(seen | set(held)) == N_PROMPTS
    assert "never trained on" in report["data"]
    # every outcome follows the judge's scores, and the numbers follow the outcomes
    policy, tok = _reference_policy(tiny_dir, trained_run)
    for e in report["examples"][:3]:
        assert e["trained"] == _greedy(policy.model, tok, e["prompt"], 8)
        with adapter_off(policy) as base:
            assert e["base"] == _greedy(base, tok, e["prompt"], 8)
    for e in report["examples"]:
        assert math.isclose(e["trained_score"], len(e["trained"]) / 10) and \
            math.isclose(e["base_score"], len(e["base"]) / 10)
        assert e["outcome"] == ("win" if e["trained_score"] > e["base_score"] else
                                "loss" if e["trained_score"] < e["base_score"] else "tie")
    wins = sum(e["outcome"] == "win" for e in report["examples"]) + \
        0.5 * sum(e["outcome"] == "tie" for e in report["examples"])
    assert summary["n"] == report["n"] == len(held)
    assert math.isclose(summary["win_rate"], wins / len(held))
    assert summary["ci95"] == list(wilson_interval(wins, len(held)))
    assert any(e["trained"] != e["base"] for e in report["examples"])
    per = report["per_judge"]["rules"]
    assert math.isclose(per["trained"], sum(len(e["trained"]) for e in report["examples"]) / 10 / len(held))


def test_eval_with_data_file_and_table(trained_run, tmp_path, capsys, monkeypatch):
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(5)))
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["eval", str(trained_run), "--data", str(held), "-n", "3", "--show", "2"]) == 0
    out = capsys.readouterr().out
    assert "win rate of trained over base" in out and "95% CI" in out and "question 0" in out
    report = json.loads((trained_run / "eval.json").read_text())
    assert [e["prompt"] for e in report["examples"]] == ["question 0", "question 1", "question 2"]
    assert report["judges"] == ["rules"]  # the run's own judge by default
    assert cli.main(["eval", str(trained_run), "--judge", "no_such_judge"]) == 2
    assert "unknown judge" in capsys.readouterr().err


LONGER = """
from tui_trainer.plugins import Verdict, hookimpl

class Longer:
    def __init__(self, options, context):
        pass
    def compare(self, prompt, a, b):
        return Verdict("a" if len(a) > len(b) else "b" if len(b) > len(a) else "tie")

@hookimpl
def register_judges(register):
    register("longer", Longer, kind="pairwise", description="prefers the longer completion")
"""


def test_eval_with_a_pairwise_judge_compares_trained_as_a(trained_run, tmp_path):
    """A pairwise-only plugin judge (installed as a distribution on PYTHONPATH): trained is A, base is B."""
    info = tmp_path / "longer_judge-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: longer-judge\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tui_trainer.judges]\nlonger = longer_judge\n")
    (tmp_path / "longer_judge.py").write_text(LONGER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "tui_trainer", "eval", str(trained_run), "--judge", "longer",
                          "-n", "6", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    report = json.loads((trained_run / "eval.json").read_text())
    assert report["judges"] == ["longer"] and report["per_judge"] == {} and summary["n"] == 6
    for e in report["examples"]:
        assert e["outcome"] == ("win" if len(e["trained"]) > len(e["base"]) else
                                "loss" if len(e["trained"]) < len(e["base"]) else "tie")
    assert "eval: judging (longer) 6/6" in out.stderr


# ----------------------------------------------------------------------------- tracking

def _tfrecords(path: Path):
    """The records of a TFRecord file (length, masked crc, data, masked crc)."""
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        yield data[pos + 12:pos + 12 + length]
        pos += 12 + length + 4


def test_tensorboard_event_files_hold_every_metric(trained_run):
    from tensorboardX.proto.event_pb2 import Event

    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    files = list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    assert files
    seen: dict[tuple[str, int], float] = {}
    for f in files:
        for record in _tfrecords(f):
            event = Event.FromString(record)
            for v in event.summary.value:
                seen[(v.tag, event.step)] = v.simple_value
    for row in rows:
        for key in ("score_mean", "kl", "clip_fraction", "entropy", "value_loss"):
            assert math.isclose(seen[(key, row["step"])], row[key], rel_tol=1e-6, abs_tol=1e-30)  # float32 storage
    assert {s for _, s in seen} == {1, 2}


def test_csv_tracker_and_metrics_command(trained_run, tmp_path, capsys, monkeypatch):
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    table = list(csv.DictReader(io.StringIO((trained_run / "metrics.csv").read_text())))
    assert [int(r["step"]) for r in table] == [1, 2]
    for want, got in zip(rows, table):
        assert set(got) == set(want)
        for k, v in want.items():
            assert got[k] == ("" if v is None else str(v))
    assert cli.main(["metrics", str(trained_run), "--csv"]) == 0
    assert capsys.readouterr().out == (trained_run / "metrics.csv").read_text()
    monkeypatch.setenv("COLUMNS", "300")
    assert cli.main(["metrics", str(trained_run), "--keys", "score_mean,kl"]) == 0
    out = capsys.readouterr().out
    assert f"{rows[1]['score_mean']:.3g}" in out and "kl" in out
    assert cli.main(["metrics", str(trained_run), "--plot", "score_mean,kl"]) == 0
    assert "score_mean" in capsys.readouterr().out
    assert cli.main(["metrics", str(trained_run), "--plot", "scor_mean"]) == 2
    assert "did you mean 'score_mean'" in capsys.readouterr().err
    png = tmp_path / "m.png"
    code = cli.main(["metrics", str(trained_run), "--plot", "score_mean,kl", "--png", str(png)])
    try:
        import matplotlib  # noqa: F401  (the bench extra)
    except ImportError:  # one line naming what to install
        assert code == 2 and "--png needs matplotlib" in capsys.readouterr().err and not png.exists()
    else:
        assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trackers_continue_on_resume(tiny_dir, tmp_path):
    """A resumed run's metrics.csv holds every step once; TensorBoard gets the new steps."""
    from tensorboardX.proto.event_pb2 import Event

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"p {i}"}) + "\n" for i in range(4)))
    cfg = Config(model=str(tiny_dir), run_dir=str(tmp_path / "run"), data=DataConfig(path=str(prompts)), steps=1,
                 batch_size=2, num_samples=2, max_new_tokens=4, minibatch_size=4, ppo_epochs=1, save_every=1,
                 report_to=["csv", "tensorboard"], judges=[JudgeSpec("rules", 1.0, {"callable": "test_after:char_length"})])
    assert build_run(cfg).run().status == "finished"
    cfg.steps = 2
    assert build_run(cfg, resume=True).run().status == "finished"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    table = list(csv.DictReader(io.StringIO((tmp_path / "run" / "metrics.csv").read_text())))
    assert [int(r["step"]) for r in table] == [r["step"] for r in rows] == [1, 2]
    assert [float(r["score_mean"]) for r in table] == [r["score_mean"] for r in rows]
    steps = set()
    for f in (tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"):
        for record in _tfrecords(f):
            event = Event.FromString(record)
            steps |= {event.step for v in event.summary.value if v.tag == "score_mean"}
    assert steps == {1, 2}


def test_report_to_key_and_missing_package(tiny_dir, tmp_path):
    from tui_trainer.config import load_config
    from tui_trainer.tracking import check_trackers

    path = tmp_path / "c.yaml"
    path.write_text("report_to: tensorboard,csv\n")
    assert load_config(path).report_to == ["tensorboard", "csv"]
    path.write_text("report_to: none\n")
    assert load_config(path).report_to == []
    path.write_text("report_to: [comet]\n")
    with pytest.raises(ConfigError, match="unknown tracker 'comet'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"pip install 'tui-trainer\[wandb\]'"):
        check_trackers(["csv", "wandb"])  # wandb is not installed in the test environment
    out = subprocess.run([sys.executable, "-m", "tui_trainer", "train", "--headless", "--model", str(tiny_dir),
                          "--report-to", "wandb", "--run-dir", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "tui-trainer[wandb]" in out.stderr
    assert not (tmp_path / "r").exists()  # refused before anything was written


# ----------------------------------------------------------------------------- the app

def test_dashboard_continues_the_plots_on_resume(trained_run):
    from tui_trainer.app import TrainerApp

    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    cfg = Config(run_dir=str(trained_run), steps=4)

    async def mounted(pilot, dash):
        deadline = time.monotonic() + 30
        while not dash.ready:
            assert time.monotonic() < deadline, "dashboard not mounted"
            await pilot.pause(0.02)

    async def go():
        app = TrainerApp(cfg, resume=True)
        async with app.run_test(size=(100, 30)) as pilot:
            dash = app.open_dashboard(cfg)
            await mounted(pilot, dash)
            assert dash.panel("score_mean").values == [r["score_mean"] for r in rows]
            assert [s for s, _ in dash.panel("kl").history] == [1, 2]
        fresh = TrainerApp(cfg)  # not a resume: the plots start empty
        async with fresh.run_test(size=(100, 30)) as pilot:
            dash = fresh.open_dashboard(cfg)
            await mounted(pilot, dash)
            assert dash.panel("score_mean").values == []

    asyncio.run(go())


def test_chat_screen_answers_with_the_trained_model(tiny_dir, trained_run):
    from tui_trainer.screens.chat import ChatApp

    policy, tok = _reference_policy(tiny_dir, trained_run)
    expected = _greedy(policy.model, tok, "hello there", 10)

    async def go():
        app = ChatApp(str(trained_run), max_new_tokens=10, temperature=0.0)
        async with app.run_test(size=(100, 30)) as pilot:
            deadline = time.monotonic() + 60
            while app.chat is None or app.chat.busy:
                assert time.monotonic() < deadline, "the model did not load"
                await pilot.pause(0.05)
            await pilot.click("#chat-input")
            await pilot.press(*"hello there", "enter")
            while app.chat.busy or len(app.chat.turns) < 2:
                assert time.monotonic() < deadline, "no reply"
                await pilot.pause(0.05)
            assert app.chat.turns == [("you", "hello there"), ("model", expected)]
            assert app.chat.session.messages[-1] == {"role": "assistant", "content": expected}
        assert app.runner.engine_stopped.wait(30)

    asyncio.run(go())


def test_app_after_a_run_offers_trained_vs_base_and_chat(tiny_dir, tmp_path):
    """In the app: a run ends; e shows trained vs base side by side (and writes eval.json); t chats."""
    from tui_trainer.app import TrainerApp
    from tui_trainer.screens.after import AfterScreen
    from tui_trainer.screens.chat import ChatScreen

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"item {i}"}) + "\n" for i in range(6)))
    cfg = Config(model=str(tiny_dir), run_dir=str(tmp_path / "run"), data=DataConfig(path=str(prompts)), steps=1,
                 batch_size=2, num_samples=2, max_new_tokens=6, ppo_epochs=1, minibatch_size=4, save_every=0,
                 seed=1, adapter=AdapterConfig(rank=4, layers=2),
                 judges=[JudgeSpec("rules", 1.0, {"callable": "test_after:char_length"})])

    async def until(pilot, predicate, what):
        deadline = time.monotonic() + 120
        while not predicate():
            assert time.monotonic() < deadline, what
            await pilot.pause(0.05)

    async def go():
        app = TrainerApp(cfg, start=True)
        async with app.run_test(size=(120, 36)) as pilot:
            await until(pilot, lambda: app.run_ended, "run finished")
            assert app.status == "finished", app.error
            await pilot.press("e")
            await until(pilot, lambda: isinstance(app.screen, AfterScreen) and app.screen.result is not None,
                        "comparison shown")
            after = app.screen
            report = json.loads((tmp_path / "run" / "eval.json").read_text())
            assert report["n"] == after.result.n == 4  # 6 prompts, 2 drawn by the one step
            assert after.query_one("#after-table").row_count == 4
            assert "win rate of trained over base" in str(after.query_one("#after-summary").render())
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("t")
            await until(pilot, lambda: isinstance(app.screen, ChatScreen) and not app.screen.busy, "chat loaded")
            assert app.screen.error is None and app.screen.session.trained.step == 1
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("q")
            await pilot.pause()

    asyncio.run(go())


# ----------------------------------------------------------------------------- install / version

def _write_wheel(folder: Path) -> Path:
    """A one-judge plugin as a wheel (no build backend needed: pip installs it offline)."""
    import base64
    import hashlib
    import zipfile

    files = {
        "tt_echo_plugin.py": "from tui_trainer.plugins import hookimpl\n\n\n@hookimpl\n"
                             "def register_judges(register):\n"
                             "    class Echo:\n"
                             "        def __init__(self, options, context): pass\n"
                             "        def score(self, prompts, completions): return [0.5] * len(completions)\n"
                             "    register('echo_test', Echo, kind='pointwise', description='constant 0.5')\n",
        "tt_echo_plugin-0.2.dist-info/METADATA": "Metadata-Version: 2.1\nName: tt-echo-plugin\nVersion: 0.2\n",
        "tt_echo_plugin-0.2.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                              "Tag: py3-none-any\n",
        "tt_echo_plugin-0.2.dist-info/entry_points.txt": "[tui_trainer.judges]\necho_test = tt_echo_plugin\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append("tt_echo_plugin-0.2.dist-info/RECORD,,")
    wheel = folder / "tt_echo_plugin-0.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr("tt_echo_plugin-0.2.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def test_install_plugins_json_uninstall_in_a_fresh_venv(tmp_path):
    """In a throwaway venv (the shared environment is left alone): install a plugin wheel, see it in
    `plugins --json`, uninstall it. pip runs without LD_PRELOAD even when tui-trainer had one."""
    import sysconfig
    import venv

    venv.EnvBuilder(with_pip=False).create(tmp_path / "venv")
    python = str(tmp_path / "venv" / "bin" / "python")
    here = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here), sysconfig.get_paths()["purelib"]]),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")

    def tt(*args):
        return subprocess.run([python, "-m", "tui_trainer", *args], capture_output=True, text=True, env=env,
                              timeout=300)

    def plugins():
        out = tt("plugins", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    before = plugins()
    assert "echo_test" not in before["judges"] and "rules" in before["judges"]
    out = tt("install", str(_write_wheel(tmp_path)), "--no-deps")
    assert out.returncode == 0, out.stderr
    assert "echo_test (ok)" in out.stdout, plugins()
    after = plugins()
    record = next(p for p in after["plugins"] if p["name"] == "echo_test")
    assert (record["version"], record["status"], record["judges"]) == ("0.2", "ok", ["echo_test"])
    assert after["judges"]["echo_test"]["kind"] == "pointwise"
    assert list((tmp_path / "venv").glob("lib/python*/site-packages/tt_echo_plugin.py"))
    out = tt("uninstall", "tt-echo-plugin")
    assert out.returncode == 0, out.stderr
    assert "echo_test" not in plugins()["judges"]
    out = tt("install", str(tmp_path / "missing.whl"))
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("tui-trainer: error: pip install failed")


def test_child_env_drops_the_preload_variables():
    from tui_trainer.engine.blas import child_env

    env = child_env({"LD_PRELOAD": "/x/libopenblas.so", "TUI_TRAINER_BLAS": "/x", "PATH": "/bin", "HOME": "/h"})
    assert env == {"PATH": "/bin", "HOME": "/h"}


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    from importlib.metadata import version

    assert capsys.readouterr().out.strip() == f"tui-trainer {version('tui-trainer')}"
