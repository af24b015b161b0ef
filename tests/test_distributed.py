"""Data-parallel PPO over MLX's distributed engine: `tui-trainer train --launch 2` (mlx.launch, ring
backend on localhost, CPU) trains what one process trains, and bad input stops every rank with one line.

The two-rank runs take ~10-15 s each (two processes loading MLX and the tiny model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import pytest

from tui_trainer.cli import main
from tui_trainer.commands.launch import dead_rank, job_exit_code, rank_command
from tui_trainer.config import JudgeSpec, save_config
from tui_trainer.commands.train import metrics_line
from tui_trainer.engine.checkpoints import load_checkpoint
from tui_trainer.engine.distributed import Ranks
from tui_trainer.engine.trainer import rank_times
from tui_trainer.widgets.format import slowest_rank_text
from tui_trainer.errors import ConfigError
from tui_trainer.run import build_run

from distributed_person import GAVE_UP, ScriptedPerson
from helpers import step0_kl_bound
from rank_judges import SLOW_SECONDS
from test_trainer import make_config, prompts_file  # noqa: F401  (prompts_file: the same fixture)

TESTS = Path(__file__).resolve().parent
LAUNCH = Path(sys.executable).with_name("mlx.launch")
needs_launch = pytest.mark.skipif(not LAUNCH.is_file() or not mx.distributed.is_available(),
                                  reason="mlx.launch / mx.distributed not available")
NOT_COMPARED = ("time_", "generation_tokens_per_second", "samples_per_second", "steps_per_minute", "peak_memory_mb",
                "decode_threads", "update_lanes")  # how this machine ran it, not what it computed


def env() -> dict:
    path = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OPENBLAS_NUM_THREADS": "1"}


def train_launch(config: Path, *extra: str, hosts: Path | None = None) -> subprocess.CompletedProcess:
    """`tui-trainer train --launch 2` (or `--hosts FILE`) over the ring backend."""
    where = ["--hosts", str(hosts)] if hosts else ["--launch", "2", "--backend", "ring"]
    cmd = [sys.executable, "-m", "tui_trainer", "train", *where, "--config", str(config), *extra]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)


def adapter(run: Path, step: int) -> dict[str, mx.array]:
    ckpt = run / "checkpoints" / f"{step:06d}"
    return {**mx.load(str(ckpt / "adapters.safetensors")),
            **{f"value_head.{k}": v for k, v in mx.load(str(ckpt / "value_head.safetensors")).items()}}


def assert_same_weights(a: dict, b: dict, lr: float) -> None:
    """Equal up to float32 rounding: within 1/1000 of one Adam step (lr) everywhere. A different
    update (other prompts, other samples, a mean of the ranks' means) moves weights by ~lr."""
    assert a.keys() == b.keys()
    for k in a:
        diff = float(mx.abs(a[k] - b[k]).max().item())
        assert diff < 1e-3 * lr, (k, diff)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_metrics(got: dict, want: dict, flips: float = 1e-6) -> None:
    """``flips``: the tolerance of the clip fractions (shares of tokens past a threshold). Where many
    tokens lie past 1 +- epsilon (the pairwise mode's +-1 verdicts: a third of them), float32
    rounding moves one across now and then, in each epoch that sees it: 1 or 2 of a step's 160
    token-evaluations (80 tokens x 2 epochs), with the weights equal."""
    for key, value in want.items():
        if key.startswith(NOT_COMPARED) or not isinstance(value, (int, float)):
            continue
        tol = flips if key.endswith("clip_fraction") else 1e-6
        if key in ("kl", "kl_k1", "kl_k3"):  # a sum of per-token log-prob differences: rounding adds up
            tol = max(tol, step0_kl_bound(want))
        elif key in ("approx_kl", "first_approx_kl"):  # a mean of them: the bound of one token
            tol = max(tol, step0_kl_bound(want) / max(want["response_length"], 1.0))
        assert got[key] == pytest.approx(value, rel=1e-5, abs=tol, nan_ok=True), key


@needs_launch
def test_two_ranks_train_what_one_process_trains_and_resume_with_one_or_two(tiny_dir, prompts_file, tmp_path,  # noqa: F811
                                                                             monkeypatch):
    """8 rows a step (4 prompts x 2), minibatches of 2 rows: some minibatches lie on one rank only,
    so the other adds nothing to them (and its collectives must still pair with rank 0's).
    The one process runs on one lane, as each rank does (test_lanes compares lanes)."""
    monkeypatch.setenv("TUI_TRAINER_LANES", "1")
    lr, over = 1e-3, dict(save_every=1, minibatch_size=2, grad_accum=2, whiten_rewards=True)
    one = tmp_path / "one"
    build_run(make_config(tiny_dir, prompts_file, one, steps=4, actor_lr=lr, **over)).run()

    two = tmp_path / "two"
    cfg = tmp_path / "two.yaml"
    save_config(make_config(tiny_dir, prompts_file, two, steps=2, actor_lr=lr, **over), cfg)
    res = train_launch(cfg)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("finished at step 2") == 1  # rank 0 speaks; rank 1 is quiet
    for step in (1, 2):
        assert_same_weights(adapter(two, step), adapter(one, step), lr)
    moved = max(float(mx.abs(adapter(two, 2)[k] - adapter(two, 1)[k]).max().item()) for k in adapter(two, 1))
    assert moved > 100 * 1e-3 * lr  # the tolerance is far below what a step changes
    # rank 0 alone wrote the files: each step once, the global batch's 8 samples in the one-process order
    got, want = records(two / "metrics.jsonl"), records(one / "metrics.jsonl")
    assert [m["step"] for m in got] == [1, 2] and all(m["ranks"] == 2 for m in got)
    for g, w in zip(got, want):
        assert_same_metrics(g, w)
    samples = (two / "samples.jsonl").read_text().splitlines()
    assert samples == (one / "samples.jsonl").read_text().splitlines()[:len(samples)] and len(samples) == 16

    # the two-rank run goes on in one process: step 3 is the one-process step 3
    state = build_run(make_config(tiny_dir, prompts_file, two, steps=3, actor_lr=lr, **over), resume=True).run()
    assert state.status == "finished" and state.step == 3
    assert_same_weights(adapter(two, 3), adapter(one, 3), lr)
    got = records(two / "metrics.jsonl")
    assert [m["step"] for m in got] == [1, 2, 3] and "ranks" not in got[2]
    assert_same_metrics(got[2], records(one / "metrics.jsonl")[2])

    # and back on two ranks: rank 1 takes rank 0's checkpoint (adapter, value head, Adam moments, data position)
    save_config(make_config(tiny_dir, prompts_file, two, steps=4, actor_lr=lr, **over), cfg)
    res = train_launch(cfg, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert_same_weights(adapter(two, 4), adapter(one, 4), lr)
    got = records(two / "metrics.jsonl")
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    assert_same_metrics(got[3], records(one / "metrics.jsonl")[3])
    assert (two / "samples.jsonl").read_text() == (one / "samples.jsonl").read_text()


@needs_launch
def test_two_ranks_pairwise_studio_is_the_one_process_update(tiny_dir, prompts_file, tmp_path):  # noqa: F811
    """The studio objective normalises its pair advantages over the decided pairs of the whole batch
    (grpo / rloo share its per-group code and the same summed statistics). Started with --hosts."""
    lr, over = 1e-3, dict(steps=2, save_every=1, mode="pairwise", pairwise_objective="studio")
    one, two = tmp_path / "one", tmp_path / "two"
    build_run(make_config(tiny_dir, prompts_file, one, actor_lr=lr, **over)).run()
    cfg = tmp_path / "two.yaml"
    save_config(make_config(tiny_dir, prompts_file, two, actor_lr=lr, **over), cfg)
    hosts = tmp_path / "hosts.json"  # mlx.launch's hostfile: two ranks on this machine (no ssh for 127.0.0.1)
    hosts.write_text(json.dumps({"backend": "ring", "hosts": [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2}))
    res = train_launch(cfg, hosts=hosts)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("finished at step 2") == 1
    for step in (1, 2):
        assert_same_weights(adapter(two, step), adapter(one, step), lr)
    for g, w in zip(records(two / "metrics.jsonl"), records(one / "metrics.jsonl"), strict=True):
        assert_same_metrics(g, w)
    assert (two / "samples.jsonl").read_text() == (one / "samples.jsonl").read_text()


def launch_script(script: str, *args: Path) -> subprocess.CompletedProcess:
    """``mlx.launch -n 2 --backend ring`` of a script in tests/ (each rank runs it with ``args``)."""
    cmd = [str(LAUNCH), "-n", "2", "--backend", "ring", "--python", sys.executable, str(TESTS / script), *map(str, args)]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)


def labels(run: Path) -> list[dict]:
    return [{k: v for k, v in rec.items() if k != "time"} for rec in records(run / "labels.jsonl")]


@needs_launch
@pytest.mark.parametrize("mode", ["ppo", "pairwise"])
def test_two_ranks_ask_the_person_on_rank_0(tiny_dir, prompts_file, tmp_path, mode):  # noqa: F811
    """A human judge over 2 ranks: rank 0's person is asked every question of the global batch, in
    the one-process order (ratings, or the pairs of the pairwise mode); rank 1's is asked nothing;
    labels.jsonl and the weights are those of one process with the same scripted person. The
    pointwise run also has a judge that scores on its own (it runs on each rank, on its share)."""
    lr = 1e-3
    judges = [JudgeSpec("human", 1.0, {})]
    if mode == "ppo":  # ratings
        judges.append(JudgeSpec("rules", 0.1, {"callable": "test_trainer:char_length"}))
    over = dict(steps=2, save_every=1, actor_lr=lr, mode=mode, judges=judges)
    one, two = tmp_path / "one", tmp_path / "two"
    person = ScriptedPerson()
    assert build_run(make_config(tiny_dir, prompts_file, one, **over), prompter=person).run().status == "finished"
    cfg = tmp_path / "two.yaml"
    save_config(make_config(tiny_dir, prompts_file, two, **over), cfg)
    res = launch_script("distributed_person.py", cfg, tmp_path)
    assert res.returncode == 0 and "error" not in res.stderr.lower(), res.stderr[-2000:]
    asked = [json.loads((tmp_path / f"asked-{r}.json").read_text()) for r in (0, 1)]
    questions = 2 * 4 * (2 if mode == "ppo" else 1)  # steps x prompts x (samples | one pair)
    assert len(person.asked) == questions and asked[0] == person.asked
    assert asked[1] == []
    assert labels(two) == labels(one) and len(labels(two)) == questions
    for step in (1, 2):
        assert_same_weights(adapter(two, step), adapter(one, step), lr)
    for g, w in zip(records(two / "metrics.jsonl"), records(one / "metrics.jsonl"), strict=True):
        assert_same_metrics(g, w, flips=0.02 if mode == "pairwise" else 1e-6)


@needs_launch
def test_two_ranks_name_the_slow_rank(tiny_dir, prompts_file, tmp_path):  # noqa: F811
    """Rank 1's judge takes 0.75 s a sample (3 s a step): every step names rank 1 the slowest, by the
    time it worked (its step less its waits in collectives: the waits make every rank's wall time
    alike), in metrics.jsonl and on the headless line."""
    run, cfg = tmp_path / "run", tmp_path / "run.yaml"
    judges = [JudgeSpec("rules", 1.0, {"callable": "rank_judges:slow_on_rank_1"})]
    save_config(make_config(tiny_dir, prompts_file, run, steps=2, judges=judges), cfg)
    res = train_launch(cfg)
    assert res.returncode == 0, res.stderr[-2000:]
    for m in records(run / "metrics.jsonl"):
        assert m["time_step_slowest_rank"] == 1 and m["time_step_rank_spread"] > 1.3, m
        assert m["time_judge/1"] >= 4 * SLOW_SECONDS and m["time_busy/1"] > m["time_busy/0"] + 2 * SLOW_SECONDS, m
        assert m["time_busy/1"] / m["time_busy/0"] == pytest.approx(m["time_step_rank_spread"])
    shown = " ".join(res.stdout.split())  # rich wraps the lines at the pipe's 80 columns
    assert shown.count("slowest rank 1 (") == 2 and "slowest rank 0" not in shown, res.stdout[-2000:]


@needs_launch
def test_when_the_person_on_rank_0_fails_every_rank_stops(tiny_dir, prompts_file, tmp_path):  # noqa: F811
    """The person stops answering in step 2 (a JudgeFailure on rank 0): rank 1, waiting for the
    answers, stops with the same message, quietly (rank 0 reports it); no rank hangs; step 1's
    checkpoint and labels stay."""
    run, cfg = tmp_path / "run", tmp_path / "run.yaml"
    save_config(make_config(tiny_dir, prompts_file, run, steps=3, save_every=1, judges=[JudgeSpec("human", 1.0, {})]),
                cfg)
    res = launch_script("distributed_person.py", cfg, tmp_path, "2")
    assert res.returncode == 0, res.stderr[-2000:]  # mlx.launch's
    ended = [json.loads((tmp_path / f"ended-{r}.json").read_text()) for r in (0, 1)]
    assert ended == [{"error": GAVE_UP, "quiet": False}, {"error": GAVE_UP, "quiet": True}]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000001"]
    assert [rec["step"] for rec in labels(run)] == [1] * 8


def test_slowest_rank_metrics_and_text():
    times = [{"busy": 2.0, "rollout": 1.0, "judge": 0.1}, {"busy": 2.8, "rollout": 1.1, "judge": 0.9}]
    m = rank_times(times)
    assert m["time_step_slowest_rank"] == 1 and m["time_step_rank_spread"] == pytest.approx(1.4)
    assert m["time_busy/0"] == 2.0 and m["time_judge/1"] == 0.9 and m["time_rollout/0"] == 1.0
    values = {"step": 3, "ranks": 2, "time_rollout": 1.0, **m}
    assert slowest_rank_text(values) == "slowest rank 1 (1.4x)"
    assert metrics_line(values).endswith("  slowest rank 1 (1.4x)")
    one = {"step": 3, "time_rollout": 1.0}  # one process: nothing about ranks
    assert slowest_rank_text(one) is None and "rank" not in metrics_line(one)


def error_lines(res: subprocess.CompletedProcess) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.strip()]


@needs_launch
def test_a_rank_that_dies_stops_the_job_with_one_line(tiny_dir, prompts_file, tmp_path):  # noqa: F811
    """Rank 1 is SIGKILLed in step 2: rank 0's collective fails at once, mlx.launch stops it, and the
    launcher says so in one line (mlx.launch's warnings and the ring's socket errors left out); the
    checkpoint of step 1 is there and loads; nothing of step 2 was written."""
    run, cfg = tmp_path / "run", tmp_path / "run.yaml"
    judges = [JudgeSpec("rules", 1.0, {"callable": "rank_judges:dies_on_rank_1_in_step_2"})]
    save_config(make_config(tiny_dir, prompts_file, run, steps=3, save_every=1, judges=judges), cfg)
    t0 = time.monotonic()
    res = train_launch(cfg)
    assert time.monotonic() - t0 < 120
    assert res.returncode == 128 + 9, res.stderr[-2000:]
    assert error_lines(res) == ["tui-trainer: error: rank 1 died (exit -9) at step 2; the job stopped; the last "
                                "checkpoint (step 1) is valid; resume with --resume"], res.stderr[-2000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000001"]
    assert load_checkpoint(run / "checkpoints" / "000001")["state"]["step"] == 1
    assert [m["step"] for m in records(run / "metrics.jsonl")] == [1]


@needs_launch
def test_a_rank_that_hangs_stops_the_job_after_rank_timeout(tiny_dir, prompts_file, tmp_path):  # noqa: F811
    """Rank 1 hangs in step 2 (alive: no socket closes). Rank 0's watchdog ends it after rank_timeout
    (8 s), mlx.launch stops rank 1, and the launcher says so in one line."""
    run, cfg = tmp_path / "run", tmp_path / "run.yaml"
    judges = [JudgeSpec("rules", 1.0, {"callable": "rank_judges:hangs_on_rank_1_in_step_2"})]
    save_config(make_config(tiny_dir, prompts_file, run, steps=3, save_every=1, judges=judges,
                            rank_timeout=8.0, judge_timeout=3000.0), cfg)
    t0 = time.monotonic()
    res = train_launch(cfg)
    assert time.monotonic() - t0 < 90
    assert res.returncode == 1, res.stderr[-2000:]
    assert error_lines(res) == ["tui-trainer: error: rank 0 waited more than rank_timeout for the other ranks at "
                                "step 2; a rank hangs or its host is gone; the job stopped; the last checkpoint "
                                "(step 1) is valid; resume with --resume"], res.stderr[-2000:]
    assert load_checkpoint(run / "checkpoints" / "000001")["state"]["step"] == 1


def test_the_watchdog_names_a_collective_that_waits_too_long():
    """One collective in flight for longer than the timeout: the watchdog speaks once; with none in
    flight it does not."""
    ranks = Ranks(SimpleNamespace(rank=lambda: 1, size=lambda: 2))
    said: list[str] = []
    ranks.watch(0.3, on_timeout=said.append)
    time.sleep(0.6)
    assert said == []  # nothing in flight
    ranks._since = time.monotonic()  # a collective began (as Ranks._now marks it)
    time.sleep(1.5)
    assert said == ["rank 1: waited more than rank_timeout (0.3 s) for the other ranks in one collective; a rank "
                    "died or hangs, so the job stops"]
    assert Ranks(None).watch(0.3) is None and Ranks(None)._watchdog is None  # one process: no watchdog


@needs_launch
def test_ranks_with_different_configs_stop_with_one_line(tiny_dir, prompts_file, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    configs = []
    for rank, lr in enumerate((1e-3, 2e-3)):
        configs.append(tmp_path / f"rank{rank}.yaml")
        save_config(make_config(tiny_dir, prompts_file, run, steps=1, actor_lr=lr), configs[-1])
    exits = tmp_path / "exits"
    exits.mkdir()
    cmd = [str(LAUNCH), "-n", "2", "--backend", "ring", "--python", sys.executable,
           str(TESTS / "distributed_run.py"), *map(str, configs)]
    res = subprocess.run(cmd, env={**env(), "TUI_TRAINER_EXIT_DIR": str(exits)}, capture_output=True, text=True,
                         timeout=300)
    errors = [line for line in (res.stdout + res.stderr).splitlines() if "error" in line]
    assert errors == ["tui-trainer: error: rank(s) 1 have another config, model or data than rank 0; every rank "
                      "needs the same config, model and data"], res.stderr[-2000:]
    assert job_exit_code(exits, 0) == 2
    assert not (run / "checkpoints").exists()


@needs_launch
def test_a_reward_model_learning_from_the_person_is_refused_over_ranks(tiny_dir, prompts_file, tmp_path):  # noqa: F811
    """learn_from: human is one process only (its reward model trains on rank 0's answers): one
    line from rank 0, exit 2, before anything is written."""
    run, cfg = tmp_path / "run", tmp_path / "run.yaml"
    save_config(make_config(tiny_dir, prompts_file, run, steps=1,
                            judges=[JudgeSpec("reward", 1.0, {"learn_from": "human"})]), cfg)
    res = train_launch(cfg)
    assert res.returncode == 2
    assert error_lines(res) == ["tui-trainer: error: judge reward learns a reward model from a person (learn_from: "
                                "human), which a run over 2 ranks cannot do yet; use one process"], res.stderr[-2000:]
    assert not (run / "checkpoints").exists()


def test_batch_size_splits_over_the_ranks():
    def ranks(rank: int, size: int) -> Ranks:
        return Ranks(SimpleNamespace(rank=lambda: rank, size=lambda: size))

    assert ranks(1, 2).share(8) == slice(4, 8) and ranks(0, 2).share(8) == slice(0, 4)
    assert ranks(2, 4).share(8) == slice(4, 6)
    with pytest.raises(ConfigError, match="batch_size 6 does not split over 4 ranks"):
        ranks(0, 4).share(6)
    assert Ranks(None).share(5) == slice(0, 5)  # one process


def test_launch_bad_input_is_one_line(tiny_dir, prompts_file, tmp_path, capsys):  # noqa: F811
    cfg = tmp_path / "cfg.yaml"
    save_config(make_config(tiny_dir, prompts_file, tmp_path / "run"), cfg)  # batch_size 4
    bad = tmp_path / "hosts.json"
    bad.write_text("{not json")
    cases = [
        (["--hosts", str(bad)], f"--hosts {bad}: Failed to parse hostfile"),
        (["--hosts", str(tmp_path / "none.json")], "doesn't exist"),
        (["--launch", "3"], "batch_size 4 does not split over 3 ranks"),
        (["--launch", "0"], "at least 1"),
    ]
    if not mx.cuda.is_available():
        cases.append((["--launch", "2", "--backend", "nccl"], "--backend nccl needs CUDA GPUs"))
    for extra, message in cases:
        assert main(["train", "--config", str(cfg), *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tui-trainer: error: ") and message in err[0], (extra, err)
    assert not (tmp_path / "run").exists()


def test_rank_command_drops_the_launch_options():
    argv = ["train", "--launch", "2", "--config", "c.yaml", "--backend=ring", "--hosts", "h.json", "--resume"]
    assert rank_command(argv) == ["train", "--config", "c.yaml", "--resume", "--headless"]


def test_the_dead_rank_is_found_whichever_end_mlx_launch_reports_first():
    """mlx.launch reports the ranks' ends as its threads see them: rank 0 (its collective failed,
    exit 1, code left) can come before the rank that was SIGKILLed; the killed rank is still the one
    that died. The ranks it stops after a failure (-15 / 143) and a watchdog's end are not deaths."""
    assert dead_rank({1: -9, 0: 1}, {"0": 1}) == (1, -9)
    assert dead_rank({0: 1, 1: -9}, {"0": 1}) == (1, -9)  # the order seen in CI
    assert dead_rank({0: 1, 1: -15}, {"0": 1}) is None  # rank 0 failed on its own; rank 1 was stopped
    assert dead_rank({0: 2, 1: 143}, {"0": 2, "1": 143}) is None
    assert dead_rank({1: -15}, {}) == (1, -15)  # nothing else failed: a SIGTERM from outside
    assert dead_rank({0: 124, 1: -9}, {}) is None  # a watchdog ended it first (rank_timeout)
    assert dead_rank({0: 0, 1: 0}, {"0": 0, "1": 0}) is None
    assert dead_rank({1: None, 0: 1}, {"0": 1}) is None  # "was killed" by mlx.launch itself


def test_job_exit_code_is_rank_0s(tmp_path):
    assert job_exit_code(tmp_path, 0) == 0  # nothing written: mlx.launch's
    (tmp_path / "rank-1").write_text("143")
    assert job_exit_code(tmp_path, 0) == 143
    (tmp_path / "rank-0").write_text("2")
    assert job_exit_code(tmp_path, 0) == 2
