"""engine/lanes.py: a minibatch's rows split over parallel CPU streams give the update of one stream."""

from __future__ import annotations

import os

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from test_trainer import make_config, prompts_file, run  # noqa: F401  (prompts_file: a fixture)
from tui_trainer.config import AdapterConfig
from tui_trainer.engine.blas import WIDE_BFS, wants_cpu_blas
from tui_trainer.engine.lanes import Lanes, lane_count


def test_split_is_balanced_ordered_and_complete():
    lanes = Lanes(3)
    parts = lanes.split(list(range(10)))
    assert [p for _, p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert len({id(s) for s, _ in parts}) == 3
    assert [p for _, p in lanes.split([4, 9])] == [[4], [9]]  # never an empty part
    assert lanes.split([]) == []
    one = Lanes(1)
    assert [p for _, p in one.split([1, 2, 3])] == [[1, 2, 3]]


def test_lane_count_follows_the_cores_and_the_override(monkeypatch):
    monkeypatch.delenv("TUI_TRAINER_LANES", raising=False)
    assert lane_count() == max(1, min(8, len(os.sched_getaffinity(0))))
    assert lane_count(ranks=2) == 1  # several ranks: one lane each unless told
    monkeypatch.setenv("TUI_TRAINER_LANES", "3")
    assert lane_count() == 3 and lane_count(ranks=2) == 3
    monkeypatch.setenv("TUI_TRAINER_LANES", "1")
    assert Lanes().n == 1


@pytest.mark.skipif(not wants_cpu_blas(), reason="the evaluation order is widened for MLX's CPU backend only")
def test_evaluation_order_is_widened_before_mlx_evaluates():
    assert os.environ.get("MLX_BFS_MAX_WIDTH") == str(WIDE_BFS)


@pytest.mark.parametrize("layers", [-1, 1])  # 1: the first block is a frozen prefix, filled over the lanes too
def test_two_lanes_train_like_one(tiny_dir, prompts_file, tmp_path, monkeypatch, layers):  # noqa: F811
    """Same run with the update's minibatches over 1 and over 2 lanes: same weights and statistics
    to float32 rounding (only the order of the parts' sums differs)."""
    runs = {}
    for n in (1, 2):
        monkeypatch.setenv("TUI_TRAINER_LANES", str(n))
        trainer, state, metrics, _ = run(make_config(tiny_dir, prompts_file, tmp_path / f"lanes{n}", steps=2,
                                                     adapter=AdapterConfig(rank=4, layers=layers)))
        assert state.status == "finished" and trainer.lanes.n == n
        runs[n] = (dict(tree_flatten(trainer.policy.trainable_parameters())), metrics)
    (w1, m1), (w2, m2) = runs[1], runs[2]
    assert m2[0]["first_ratio"] == pytest.approx(1.0, abs=1e-5)
    moved = max(float(mx.abs(v).max().item()) for k, v in w1.items() if k.endswith("lora_b"))
    assert moved > 0
    # within 1/1000 of one Adam step (lr) everywhere, as two ranks vs one process (test_distributed)
    lr = make_config(tiny_dir, prompts_file, tmp_path).actor_lr
    worst = max(float(mx.abs(value - w2[key]).max().item()) for key, value in w1.items())
    assert worst < 1e-3 * lr < moved
    for key in ("kl", "policy_loss", "value_loss", "clip_fraction", "approx_kl", "score_mean"):
        assert m2[-1][key] == pytest.approx(m1[-1][key], rel=1e-3, abs=1e-6), key


def test_lanes_work_in_any_thread():
    """MLX streams belong to the thread that made them: a trainer in the app's engine thread, then
    another in a new thread, each get lanes of their own."""
    import threading

    results = []

    def work():
        outs = []
        for stream, part in Lanes(2).split([1, 2]):
            with mx.stream(stream):
                outs.append(mx.array(part) * 2)
        results.append(mx.concatenate(outs).tolist())

    work()
    for _ in range(2):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    assert results == [[2, 4]] * 3
