"""Stopping, interrupting and failing mid-step; progress inside a step; the update's early stop;
pairwise ties. A checkpoint only ever holds the state at the end of a completed step."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from tui_trainer import events as ev
from tui_trainer.config import JudgeSpec
from tui_trainer.engine.checkpoints import latest_checkpoint, load_checkpoint
from tui_trainer.errors import TrainerError
from tui_trainer.run import build_run

from test_trainer import make_config, prompts_file, run  # noqa: F401  (prompts_file is a fixture)


def checkpoint_state(path) -> dict:
    data = load_checkpoint(path)
    return {
        "adapters": data["adapters"], "value_head": data["value_head"],
        "optimizers": {name: dict(tree_flatten(state)) for name, state in data["optimizers"].items()},
        "state": data["state"],
    }


def assert_same_checkpoint(a, b):
    for part in ("adapters", "value_head"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert mx.array_equal(a[part][k], b[part][k]).item(), (part, k)
    for name in a["optimizers"]:
        assert a["optimizers"][name].keys() == b["optimizers"][name].keys(), name
        for k, v in a["optimizers"][name].items():
            assert mx.array_equal(v, b["optimizers"][name][k]).item(), (name, k)
    for key in ("step", "beta", "data", "seed"):
        assert a["state"][key] == b["state"][key], key


def adaptive(tiny_dir, prompts_file, run_dir, **over):
    # the adaptive KL controller makes beta change every step: the interrupted run must keep the
    # completed step's value
    return make_config(tiny_dir, prompts_file, run_dir, kl_target=0.01, kl_horizon=100, actor_lr=3e-3, **over)


@pytest.mark.parametrize("phase", ["rollout", "judging", "update"])
def test_interrupt_mid_step_keeps_the_last_completed_step(tiny_dir, prompts_file, tmp_path, phase):
    base = adaptive(tiny_dir, prompts_file, tmp_path / "base", steps=2, save_every=0)
    run(base)  # ends on a checkpoint of step 2
    full = adaptive(tiny_dir, prompts_file, tmp_path / "full", steps=4, save_every=0)
    _, _, m_full, _ = run(full)

    cfg = adaptive(tiny_dir, prompts_file, tmp_path / "cut", steps=4, save_every=0)
    holder: dict = {}
    seen: list[ev.Progress] = []

    def observer(event):
        if isinstance(event, ev.Progress):
            seen.append(event)
            # rollout / judging: once the step's prompts are drawn; update: after a minibatch has
            # changed the adapter and the optimizer state
            at = 0 < event.done < event.total if phase == "update" else event.done == 0
            if event.step == 3 and event.phase == phase and at:
                holder["trainer"].abort()

    trainer = build_run(cfg, observer=observer)
    holder["trainer"] = trainer
    state = trainer.run()
    assert state.status == "stopped" and "interrupted" in state.message
    assert state.step == 2 and trainer.step == 2
    assert any(p.step == 3 and p.phase == phase for p in seen)
    ckpt = latest_checkpoint(tmp_path / "cut")
    assert ckpt is not None and int(ckpt.name) == 2
    assert_same_checkpoint(checkpoint_state(ckpt), checkpoint_state(latest_checkpoint(tmp_path / "base")))
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]  # nothing of the abandoned step

    # resumed, it continues exactly as the uninterrupted run did
    resumed = adaptive(tiny_dir, prompts_file, tmp_path / "cut", steps=4, save_every=0)
    _, st, m_res, _ = run(resumed, resume=True)
    assert st.status == "finished" and [m["step"] for m in m_res] == [3, 4]
    for key in ("score_mean", "kl", "beta", "policy_loss", "value_loss", "approx_kl"):
        assert m_res[-1][key] == pytest.approx(m_full[-1][key], rel=1e-4, abs=1e-6), key


calls = {"n": 0}


def fails_in_step_3(prompt: str, completion: str) -> float:
    calls["n"] += 1
    if calls["n"] > 16:  # 8 samples a step
        raise RuntimeError("judge down")
    return len(completion) / 20


@pytest.mark.parametrize("save_every", [2, 0])
def test_a_failed_step_never_reaches_a_checkpoint(tiny_dir, prompts_file, tmp_path, save_every):
    """Bug: the failure path saved the step-2 checkpoint with step 3's data position (its prompts
    already drawn), over the clean one."""
    run(make_config(tiny_dir, prompts_file, tmp_path / "base", steps=2, save_every=0))
    calls["n"] = 0
    cfg = make_config(tiny_dir, prompts_file, tmp_path / "run", steps=4, save_every=save_every,
                      judge_failure="stop", judges=[JudgeSpec("rules", 1.0, {"callable": "test_trainer_stop:fails_in_step_3"})])
    with pytest.raises(TrainerError, match="judge"):
        build_run(cfg, observer=lambda e: None).run()
    ckpt = latest_checkpoint(tmp_path / "run")
    assert int(ckpt.name) == 2
    assert_same_checkpoint(checkpoint_state(ckpt), checkpoint_state(latest_checkpoint(tmp_path / "base")))


def test_progress_goes_through_every_phase_in_order(tiny_dir, prompts_file, tmp_path):
    cfg = make_config(tiny_dir, prompts_file, tmp_path / "run", steps=2)
    _, _, metrics, events = run(cfg)
    steps = [e for e in events if isinstance(e, (ev.Progress, ev.StepMetrics))]
    # start-up comes first: model, adapter, prompts, judges
    loading = [p for p in steps if isinstance(p, ev.Progress) and p.phase == "loading"]
    assert [p.done for p in loading] == [0, 1, 2, 3, 4] and steps[0] is loading[0] and steps[4] is loading[-1]
    assert all(p.step == 0 and p.total == 4 for p in loading)
    steps = steps[5:]
    phases = [p.phase for p in steps if isinstance(p, ev.Progress) and p.step == 1]
    order = [ph for i, ph in enumerate(phases) if i == 0 or phases[i - 1] != ph]
    assert order == ["rollout", "judging", "reference", "update"]
    first = [p for p in steps if isinstance(p, ev.Progress) and p.step == 1]
    rollout = [p for p in first if p.phase == "rollout"]
    assert rollout[0].done == 0 and rollout[-1].done == rollout[-1].total == 4 * 2 * 10  # rows x max tokens
    assert rollout[-1].unit == "tokens" and rollout[-1].rate > 0
    update = [p for p in first if p.phase == "update"]
    assert update[-1].done == update[-1].total == 2 * 2  # 8 rows / minibatch 4, 2 epochs
    assert any("epoch 2/2" in p.detail for p in update)
    done = [p.done for p in update]
    assert done == sorted(done)
    # every progress event of a step comes before its metrics; the second step has an ETA
    idx = next(i for i, e in enumerate(steps) if isinstance(e, ev.StepMetrics))
    assert all(e.step == 1 for e in steps[:idx])
    assert all(p.eta is None for p in first)
    assert any(p.eta is not None and p.eta >= 0 for p in steps[idx:] if isinstance(p, ev.Progress))
    m = metrics[0]
    assert m["generation_tokens_per_second"] > m["samples_per_second"] > 0
    assert m["steps_per_minute"] == pytest.approx(60 / m["time_step"])


def test_target_kl_stops_the_update_early(tiny_dir, prompts_file, tmp_path):
    """target_kl is the early stop on approx_kl (SB3, TRL <= 0.11), not the adaptive controller's target."""
    over = dict(steps=2, actor_lr=0.05, ppo_epochs=4, minibatch_size=2, max_grad_norm=0.0)
    _, _, free, _ = run(make_config(tiny_dir, prompts_file, tmp_path / "free", **over))
    trainer, _, stopped, _ = run(make_config(tiny_dir, prompts_file, tmp_path / "stop", target_kl=1e-4, **over))
    assert trainer.cfg.kl_target is None and trainer.beta == trainer.cfg.beta
    assert all(m["minibatches"] == 16 and m["early_stopped"] == 0 for m in free)
    assert all(m["early_stopped"] == 1 and 1 <= m["minibatches"] < 16 for m in stopped)
    assert max(m["approx_kl"] for m in free) > 1.5e-4  # without the stop it does leave the region


def constant(prompt: str, completion: str) -> float:
    return 0.5


@pytest.mark.parametrize("objective", ["studio", "studio_sigmoid"])
def test_pairwise_ties_give_no_preference(tiny_dir, prompts_file, tmp_path, objective):
    """Bug: in the studio objective a tie counted as a win for the second sample."""
    cfg = make_config(tiny_dir, prompts_file, tmp_path / "run", steps=1, mode="pairwise", actor_lr=5e-3,
                      pairwise_objective=objective,
                      judges=[JudgeSpec("rules", 1.0, {"callable": "test_trainer_stop:constant"})])
    trainer, _, metrics, _ = run(cfg)
    lora_b = [v for k, v in tree_flatten(trainer.policy.model.trainable_parameters()) if k.endswith("lora_b")]
    assert max(float(mx.abs(b).max().item()) for b in lora_b) == 0.0
    assert metrics[0]["minibatches"] == 0


def checksum(prompt: str, completion: str) -> float:
    """Different completions (almost always) get different scores: every pair is decided."""
    return sum(map(ord, completion)) % 997 / 997


@pytest.mark.parametrize("objective", ["studio", "studio_sigmoid"])
def test_studio_objective_is_clipped_and_reports_its_ratio(tiny_dir, prompts_file, tmp_path, objective):
    """Bug: the studio objective ignored epsilon and reported ratio, clip fraction and approx_kl as 0."""
    cfg = make_config(tiny_dir, prompts_file, tmp_path / "run", steps=2, mode="pairwise", actor_lr=0.05,
                      pairwise_objective=objective, ppo_epochs=4, minibatch_size=2, max_grad_norm=0.0,
                      judges=[JudgeSpec("rules", 1.0, {"callable": "test_trainer_stop:checksum"})])
    _, _, metrics, _ = run(cfg)
    assert all(m["minibatches"] > 0 for m in metrics)
    assert max(m["approx_kl"] for m in metrics) > 0
    assert max(m["clip_fraction"] for m in metrics) > 0
    assert all(m["ratio"] > 0 for m in metrics)
    assert metrics[0]["first_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert all(m["minibatches"] == 16 for m in metrics)
    # the verdicts' mean is 0 by construction; the pointwise judge's own score is reported too
    assert all(m["score_mean"] == 0.0 and 0.0 <= m["score/rules"] <= 1.0 for m in metrics)  # 8 rows (4 decided pairs) / 2, 4 epochs
