"""JudgeSet: weighted sums, per-judge scores, and what happens when a judge misbehaves
(wrong count, NaN/inf, exception, timeout) under drop / retry / stop."""

from __future__ import annotations

import math
import threading
import time

import pytest

from tui_trainer.errors import ConfigError, TrainerError
from tui_trainer.plugins.hookspecs import Option
from tui_trainer.plugins.judge import JudgeFailure, Verdict
from tui_trainer.plugins.manager import JudgeRegistry, build_judge_set

P = ["p1", "p2", "p3"]
C = ["short", "a bit longer", "the longest one here"]


class Scripted:
    """A pointwise judge that returns what its script says, one entry per call."""

    def __init__(self, options, context):
        self.script = list(options["script"])
        self.calls = 0

    def score(self, prompts, completions):
        self.calls += 1
        item = self.script.pop(0) if self.script else "ok"
        if item == "ok":
            return [float(len(c)) for c in completions]
        if item == "short":
            return [1.0] * (len(completions) - 1)
        if item == "nan":
            return [float("nan")] + [1.0] * (len(completions) - 1)
        if item == "allnan":
            return [float("inf")] * len(completions)
        if item == "raise":
            raise RuntimeError("service exploded")
        if item == "hang":
            time.sleep(2.0)
            return [0.0] * len(completions)
        if item == "text":
            return "not a list"
        raise AssertionError(item)


class Pair:
    """A pairwise-only judge: the longer completion wins."""

    def __init__(self, options, context):
        self.context = context
        self.mode = options["mode"]

    def compare(self, prompt, a, b):
        if self.mode == "raise":
            raise ValueError("no opinion")
        if self.mode == "junk":
            return 42
        if len(a) == len(b):
            return Verdict("tie")
        return Verdict("a" if len(a) > len(b) else "b")


def registry() -> JudgeRegistry:
    reg = JudgeRegistry()

    class Plugin:
        @staticmethod
        def register_judges(register):
            register("scripted", Scripted, description="test", options=[Option("script", list, [], "")])
            register("pair", Pair, description="test", kind="pairwise", options=[Option("mode", str, "ok", "")])

    from tui_trainer.plugins.hookspecs import hookimpl
    Plugin.register_judges = staticmethod(hookimpl(Plugin.register_judges))
    rec = reg.add_plugin("test", Plugin, "0")
    assert rec.status == "ok", rec.error
    return reg


def make(specs, **kw):
    logs: list[str] = []
    kw.setdefault("timeout", 5.0)
    js = build_judge_set(specs, log=logs.append, registry=registry(), **kw)
    return js, logs


def test_weighted_sum_and_per_judge_scores():
    js, logs = make([{"name": "scripted", "weight": 2.0}, {"name": "scripted", "weight": -0.5}])
    res = js.score(P, C, step=1)
    lengths = [float(len(c)) for c in C]
    assert js.names == ["scripted", "scripted_2"]
    assert res.per_judge == {"scripted": lengths, "scripted_2": lengths}
    assert res.scores == pytest.approx([1.5 * x for x in lengths])
    assert logs == []


@pytest.mark.parametrize("bad", ["short", "raise", "text"])
def test_drop_mode_drops_the_call_and_logs_one_line(bad):
    js, logs = make([{"name": "scripted", "options": {"script": [bad]}}], failure="drop")
    res = js.score(P, C, step=4)
    assert res.scores == [None, None, None]
    assert res.per_judge["scripted"] == [None, None, None]
    assert len(logs) == 1 and "\n" not in logs[0]
    assert "step 4" in logs[0] and "dropping" in logs[0]
    # the next call works again
    assert js.score(P, C, step=5).scores == [float(len(c)) for c in C]


def test_wrong_count_is_named_in_the_log():
    js, logs = make([{"name": "scripted", "options": {"script": ["short"]}}])
    js.score(P, C)
    assert "returned 2 scores for 3 samples" in logs[0]


def test_nan_drops_only_its_sample():
    js, logs = make([{"name": "scripted", "options": {"script": ["nan"]}}], failure="drop")
    res = js.score(P, C)
    assert res.scores == [None, 1.0, 1.0]
    assert "non-finite" in logs[0]


def test_all_non_finite_drops_everything():
    js, logs = make([{"name": "scripted", "options": {"script": ["allnan"]}}])
    res = js.score(P, C)
    assert res.scores == [None] * 3
    assert all(s is None or math.isfinite(s) for s in res.scores)


def test_retry_recovers_after_failures():
    js, logs = make([{"name": "scripted", "options": {"script": ["raise", "nan"]}}], failure="retry", retries=2)
    res = js.score(P, C, step=2)
    assert res.scores == [float(len(c)) for c in C]
    assert js.members[0].judge.calls == 3
    assert [("retrying (1/2)" in logs[0]), ("retrying (2/2)" in logs[1])] == [True, True]
    assert "service exploded" in logs[0]


def test_retry_gives_up_and_drops():
    js, logs = make([{"name": "scripted", "options": {"script": ["raise"] * 3}}], failure="retry", retries=2)
    res = js.score(P, C)
    assert res.scores == [None] * 3
    assert js.members[0].judge.calls == 3
    assert "dropping" in logs[-1]


def test_stop_raises_judge_failure_with_a_clear_message():
    js, logs = make([{"name": "scripted", "options": {"script": ["raise"]}}], failure="stop")
    with pytest.raises(JudgeFailure) as info:
        js.score(P, C, step=7)
    assert isinstance(info.value, TrainerError)
    assert "scripted" in str(info.value) and "step 7" in str(info.value) and "service exploded" in str(info.value)


def test_timeout_counts_as_failure_and_the_call_returns():
    js, logs = make([{"name": "scripted", "options": {"script": ["hang"]}}], failure="drop", timeout=0.2)
    start = time.perf_counter()
    res = js.score(P, C)
    assert time.perf_counter() - start < 1.5
    assert res.scores == [None] * 3
    assert "timed out after 0.2s" in logs[0]


def test_retry_after_timeout_waits_for_the_stuck_call_not_racing_it():
    js, logs = make([{"name": "scripted", "options": {"script": ["hang"]}}], failure="retry", retries=1,
                    timeout=0.3)
    res = js.score(P, C)
    # the retry could not start while the first call held the judge: it timed out too
    assert res.scores == [None] * 3
    assert sum("timed out" in line for line in logs) == 2


def test_repeated_failures_stop_the_run():
    js, logs = make([{"name": "scripted", "options": {"script": ["raise"] * 10}}], failure="drop")
    js.score(P, C, step=1)
    js.score(P, C, step=2)
    with pytest.raises(JudgeFailure, match="failed 3 calls in a row"):
        js.score(P, C, step=3)


def test_a_success_resets_the_failure_count():
    js, logs = make([{"name": "scripted", "options": {"script": ["raise", "raise", "ok", "raise", "raise"]}}])
    for step in range(5):
        js.score(P, C, step=step)
    assert len(logs) == 4


def test_pairwise_judge_in_pointwise_mode_scores_against_the_first_completion():
    js, _ = make([{"name": "pair"}])
    prompts = ["q", "q", "q", "solo"]
    comps = ["mid-size", "much much longer", "x", "whatever"]
    res = js.score(prompts, comps)
    # baseline "mid-size" scores 0.5; longer beats it (1), shorter loses (0); a lone prompt is 0.5
    assert res.per_judge["pair"] == [0.5, 1.0, 0.0, 0.5]


def test_compare_uses_the_pairwise_judge_and_failures_become_skip():
    js, logs = make([{"name": "scripted"}, {"name": "pair"}])
    assert js.can_compare
    assert js.compare("q", "long answer", "short", step=3) == Verdict("a")
    js2, logs2 = make([{"name": "pair", "options": {"mode": "junk"}}])
    assert js2.compare("q", "a", "b") == Verdict("skip")
    assert "instead of a Verdict" in logs2[0]


def test_compare_without_a_pairwise_judge_is_a_config_error():
    js, _ = make([{"name": "scripted"}])
    assert not js.can_compare
    with pytest.raises(ConfigError, match="can compare"):
        js.compare("q", "a", "b")


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="judge_failure"):
        make([{"name": "scripted"}], failure="explode")
    with pytest.raises(ConfigError, match="unknown judge 'nope'"):
        make([{"name": "nope"}])
    with pytest.raises(ConfigError, match="no judges"):
        make([])
    with pytest.raises(ConfigError, match="weight"):
        make([{"name": "scripted", "weight": float("nan")}])
    with pytest.raises(ConfigError, match="option script must be list"):
        make([{"name": "scripted", "options": {"script": {"a": 1}}}])


def test_judge_set_step_reaches_the_judge_context():
    js, _ = make([{"name": "pair"}])
    js.compare("q", "a", "b", step=11)
    assert js.members[0].judge.context.step == 11


def test_calls_run_off_the_calling_thread_with_a_timeout():
    seen = []

    class Spy:
        def __init__(self, options, context):
            pass

        def score(self, prompts, completions):
            seen.append(threading.current_thread() is threading.main_thread())
            return [0.0] * len(completions)

    reg = registry()
    from tui_trainer.plugins.manager import JudgeInfo
    reg.judges["spy"] = JudgeInfo("spy", Spy, "", (), "pointwise", "test")
    js = build_judge_set([{"name": "spy"}], registry=reg, timeout=5)
    js.score(["p"], ["c"])
    assert seen == [False]
