"""The judges of one run, called with failure handling.

``JudgeSet.score`` asks every judge for its scores and returns their weighted
sum (each judge's own scores are reported too, for ``score/<judge>`` metrics).
Given the samples' dataset ``columns`` (one dict per sample), each pointwise judge
gets those its ``score`` accepts (see judge.py: ``**kwargs``, named parameters,
a ``columns`` attribute); ``required_columns()`` says which every row must have.
``JudgeSet.compare`` asks the first judge that can compare two completions.

A judge call fails when it raises, runs past ``timeout`` seconds (calls run in
a worker thread, except for interactive judges such as ``human``), returns the
wrong number of scores or something that is not a number / Verdict. Each failure
is logged as one line through ``log``; then, per ``failure``:

* ``retry``: call again, up to ``retries`` more times, then drop;
* ``drop``: the affected samples score ``None`` (a pairwise call gives ``skip``);
* ``stop``: raise :class:`JudgeFailure`.

A NaN or infinite score, or one beyond ``max_abs_score`` (default 1e6: training
runs in float32, where 1e300 is infinite and a score of 1e30 overflows the loss),
fails only its own sample: retried (``retry``), else that sample alone is dropped.
The trainer lifts the bound when ``score_clip`` is set (it clips scores itself). After ``max_consecutive_failures`` failed calls
of the same judge in a row the run stops with :class:`JudgeFailure`.

A pairwise-only judge in a pointwise run compares against a baseline: for each
prompt the first completion in the batch is the baseline (it scores 0.5) and
every other completion of that prompt scores P(it beats the baseline): 1 for a
win, 0 for a loss, 0.5 for a tie, the verdict's confidence when it has one;
a prompt with a single completion scores 0.5 (nothing to compare with).

A data-parallel run (``ranks``: the trainer's engine.distributed.Ranks, set like ``interrupt``)
asks a person on rank 0 only, where the front end is. A judge that asks a person
(``interactive = True``, e.g. ``human``) is called on rank 0 for every rank's samples: each
rank's questions are gathered to rank 0 (``gather_json``, rank order = the global sample
order), rank 0 runs them through the usual failure policy, and its answers, or its failure,
reach every rank (``broadcast_json``); each rank takes its own slice. The other ranks wait
for the person with no time limit (``patient``: ``rank_timeout`` does not apply to that wait).
The other judges run where the samples are. One process: none of this.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from tui_trainer.errors import ConfigError, StepInterrupted
from tui_trainer.plugins.judge import (ColumnUse, JudgeContext, JudgeFailure, JudgeTimeout, Verdict, columns_for,
                                      judge_columns, one_line)

FAILURE_MODES = ("drop", "retry", "stop")
MAX_CONSECUTIVE_FAILURES = 3
F32_MAX = 3.4028234663852886e38
MAX_ABS_SCORE = 1e6  # scores beyond this are a judge failure unless score_clip bounds them


@dataclass
class Member:
    """One judge in the set: ``key`` is its unique name in this run (metric names)."""

    key: str
    info: Any  # manager.JudgeInfo
    judge: Any
    weight: float
    context: JudgeContext
    interactive: bool = False
    failures: int = 0  # failed calls in a row
    lock: threading.Lock = field(default_factory=threading.Lock)
    columns: ColumnUse | None = None  # the dataset columns its score() takes (read from the judge when None)


@dataclass
class ScoreResult:
    scores: list[float | None]  # weighted sum; None = dropped (failure or skip)
    per_judge: dict[str, list[float | None]]


class JudgeSet:
    def __init__(self, members: list[Member], *, failure: str = "drop", retries: int = 2,
                 timeout: float | None = 120.0, log: Callable[[str], None] | None = None,
                 max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES,
                 max_abs_score: float | None = MAX_ABS_SCORE) -> None:
        if failure not in FAILURE_MODES:
            raise ConfigError(f"judge_failure must be one of {', '.join(FAILURE_MODES)}, got {failure!r}")
        if retries < 0:
            raise ConfigError(f"judge_retries must be >= 0, got {retries}")
        if timeout is not None and timeout < 0:
            raise ConfigError(f"judge_timeout must be >= 0 seconds, got {timeout}")
        if not members:
            raise ConfigError("no judges configured")
        for m in members:
            if m.columns is None:
                m.columns = judge_columns(m.judge) if m.info.pointwise else ColumnUse()
        self.members = members
        self.failure = failure
        self.retries = retries
        self.timeout = timeout or None
        # set by the trainer: an Event that abandons the call in flight (StepInterrupted), and
        # progress(judge, done, total) for the dashboard
        self.interrupt: threading.Event | None = None
        self.progress: Callable[[str, int, int], None] = lambda judge, done, total: None
        self.ranks: Any = None  # a data-parallel job (engine.distributed.Ranks): a person is asked on rank 0
        self.log = log or (lambda message: None)
        self.max_consecutive_failures = max(1, max_consecutive_failures)
        self.max_abs_score = max_abs_score

    @property
    def names(self) -> list[str]:
        return [m.key for m in self.members]

    @property
    def can_compare(self) -> bool:
        return any(m.info.pairwise for m in self.members)

    def required_columns(self) -> dict[str, tuple[str, ...]]:
        """judge -> the dataset columns every row must have for it (only judges that need some)."""
        return {m.key: m.columns.required for m in self.members if m.columns is not None and m.columns.required}

    def share_policy(self, policy: Any, tokenizer: Any) -> list[str]:
        """Offer the run's policy to judges that can score on its weights (``share_policy(policy,
        tokenizer) -> bool``: the ``reward`` judge). Those that take it are called on the caller's
        (the engine's) thread from then on, never abandoned mid-call. Returns their names."""
        taken = []
        for m in self.members:
            share = getattr(m.judge, "share_policy", None)
            if share is not None and share(policy, tokenizer):
                m.interactive = True  # in the caller's thread, no time limit: it runs on the policy's weights
                taken.append(m.key)
        return taken

    def metrics(self) -> dict[str, float]:
        """Numbers judges report about themselves (``metrics() -> {name: value}``, e.g. the
        ``reward`` judge learning online: labels, heldout_accuracy, agreement), as
        ``<judge>/<name>`` for the step's metrics."""
        out: dict[str, float] = {}
        for m in self.members:
            get = getattr(m.judge, "metrics", None)
            if callable(get):
                try:
                    out.update({f"{m.key}/{k}": float(v) for k, v in get().items()})
                except Exception as exc:  # noqa: BLE001  a plugin's numbers must not stop the run
                    self.log(f"judge {m.key}: metrics() failed: {one_line(exc)}")
        return out

    # -- pointwise -------------------------------------------------------------------

    def score(self, prompts: list[str], completions: list[str], step: int = 0,
              columns: list[dict[str, Any]] | None = None) -> ScoreResult:
        """``columns``: each sample's dataset row fields besides the prompt (None: no dataset)."""
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        if columns is not None and len(columns) != n:
            raise ValueError(f"{len(columns)} column rows for {n} completions")
        per_judge: dict[str, list[float | None]] = {}
        for m in self.members:
            m.context.step = step
            m.context.progress = lambda done, total, key=m.key: self.progress(key, done, total)
            kwargs = columns_for(m.columns, columns) if columns is not None and m.columns is not None else {}
            if self._on_rank0(m):  # every rank's samples, asked on rank 0; this rank's slice back
                ask = lambda q, m=m: self._score_member(m, q["prompts"], q["completions"], q["columns"], step)
                per_judge[m.key] = self._ask_rank0(
                    {"prompts": list(prompts), "completions": list(completions), "columns": kwargs}, ask, n)
            else:
                per_judge[m.key] = self._score_member(m, prompts, completions, kwargs, step)
        scores: list[float | None] = []
        for i in range(n):
            parts = [(m.weight, per_judge[m.key][i]) for m in self.members]
            if any(v is None for _, v in parts):
                scores.append(None)
            else:
                scores.append(float(sum(w * v for w, v in parts)))
        return ScoreResult(scores, per_judge)

    def _score_member(self, m: Member, prompts: list[str], completions: list[str], kwargs: dict[str, list[Any]],
                      step: int) -> list[float | None]:
        """One judge's scores of the samples (``kwargs``: the dataset columns it takes)."""
        n = len(completions)
        self.progress(m.key, 0, n)
        if m.info.pointwise:
            values = self._call(
                m, step, lambda: m.judge.score(list(prompts), list(completions), **kwargs),
                lambda raw: _check_scores(raw, n, self.max_abs_score), fallback=None)
            values = values if values is not None else [None] * n
        else:
            values = self._against_baseline(m, prompts, completions, step)
        self.progress(m.key, n, n)
        return values

    def _against_baseline(self, m: Member, prompts: list[str], completions: list[str],
                          step: int) -> list[float | None]:
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        out: list[float | None] = [None] * len(completions)
        for prompt, idx in groups.items():
            base = idx[0]
            out[base] = 0.5
            for i in idx[1:]:
                v = self._call(m, step, lambda i=i, prompt=prompt: m.judge.compare(prompt, completions[i],
                                                                                   completions[base]),
                               _check_verdict, fallback=Verdict("skip"))
                out[i] = verdict_score(v)
                self.progress(m.key, sum(v is not None for v in out), len(completions))
        return out

    # -- pairwise --------------------------------------------------------------------

    def compare(self, prompt: str, a: str, b: str, step: int = 0) -> Verdict:
        m = self._comparer()
        m.context.step = step
        return self._call(m, step, lambda: m.judge.compare(prompt, a, b), _check_verdict,
                          fallback=Verdict("skip"))

    def compare_pairs(self, prompts: list[str], firsts: list[str], seconds: list[str], step: int = 0,
                      after: Callable[[int, int], None] = lambda done, total: None) -> list[Verdict]:
        """:meth:`compare` on each pair in turn; ``after(done, total)`` before the first pair and
        after each (the trainer's progress and abort check). A person is asked on rank 0 for
        every rank's pairs (see the module's docstring)."""
        def ask(q: dict) -> list[Verdict]:
            out = []
            total = len(q["prompts"])
            after(0, total)
            for i, (p, a, b) in enumerate(zip(q["prompts"], q["firsts"], q["seconds"])):
                out.append(self.compare(p, a, b, step=step))
                after(i + 1, total)
            return out

        questions = {"prompts": list(prompts), "firsts": list(firsts), "seconds": list(seconds)}
        if not self._on_rank0(self._comparer()):
            return ask(questions)
        answers = self._ask_rank0(questions, lambda q: [[v.choice, v.confidence] for v in ask(q)], len(prompts))
        return [Verdict(choice, confidence) for choice, confidence in answers]

    def _comparer(self) -> Member:
        m = next((m for m in self.members if m.info.pairwise), None)
        if m is None:
            raise ConfigError("none of the configured judges can compare two completions "
                              f"({', '.join(self.names)}); use llama, human or another pairwise judge")
        return m

    # -- a person on rank 0 ------------------------------------------------------------

    def _on_rank0(self, m: Member) -> bool:
        """True when ``m`` asks a person and this is a run over several ranks."""
        return bool(getattr(m.judge, "interactive", False)) and self.ranks is not None and self.ranks.active

    def _ask_rank0(self, questions: dict[str, Any], ask: Callable[[dict[str, Any]], list[Any]], n: int) -> list[Any]:
        """``ask`` on rank 0 over every rank's ``questions`` (a dict of per-sample lists, JSON,
        ``prompts`` among them), joined in rank order; this rank's ``n`` answers of the result. A
        failure there (a JudgeFailure, the step abandoned, an error) is raised on every rank: rank 0
        raises its own, the others the same message, quietly (rank 0 reports it)."""
        ranks = self.ranks
        parts = ranks.gather_json(questions)
        start = sum(len(p["prompts"]) for p in parts[:ranks.rank])  # this rank's first sample in the job
        if ranks.is_main:
            joined = {k: _join([p[k] for p in parts]) for k in questions}
            try:
                answers = ask(joined)
            except Exception as exc:  # every rank stops the same way (JudgeFailure, StepInterrupted, a bug)
                kind = ("failure" if isinstance(exc, JudgeFailure) else "interrupted"
                        if isinstance(exc, StepInterrupted) else "error")
                ranks.broadcast_json({kind: one_line(exc)})
                raise
            ranks.broadcast_json({"answers": answers})
            return answers[:n]
        # the others wait while the person answers: no time limit (rank_timeout) on this one
        outcome = ranks.broadcast_json(None, patient=True)
        if "answers" in outcome:
            return outcome["answers"][start:start + n]
        if "interrupted" in outcome:
            raise StepInterrupted(outcome["interrupted"])
        exc = JudgeFailure(outcome.get("failure") or f"rank 0: {outcome['error']}")
        exc.quiet = True  # rank 0 reports it: one line for the job
        raise exc

    def close(self) -> None:
        self.close_members(self.members, self.log)

    @staticmethod
    def close_members(members: list[Member], log: Callable[[str], None] | None = None) -> None:
        for m in members:
            close = getattr(m.judge, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as exc:  # noqa: BLE001  closing must not hide the run's result
                    if log is not None:
                        log(f"judge {m.key}: close failed: {one_line(exc)}")

    # -- the failure policy ----------------------------------------------------------

    def _call(self, m: Member, step: int, fn: Callable[[], Any],
              check: Callable[[Any], tuple[Any, str | None]], fallback: Any) -> Any:
        attempts = 1 + (self.retries if self.failure == "retry" else 0)
        partial = None
        problem = ""
        for attempt in range(1, attempts + 1):
            partial = None
            try:
                value, problem = check(self._invoke(m, fn))
            except (JudgeFailure, StepInterrupted):
                raise
            except (Exception, SystemExit) as exc:  # noqa: BLE001  any plugin error (even sys.exit) is a judge failure
                value, problem = None, one_line(exc)
            if problem is None:
                m.failures = 0
                return value
            partial = value
            if self.failure == "stop":
                self.log(f"judge {m.key} at step {step}: {problem}; stopping (judge_failure: stop)")
                raise JudgeFailure(f"judge {m.key} failed at step {step}: {problem}")
            if attempt < attempts:
                self.log(f"judge {m.key} at step {step}: {problem}; retrying ({attempt}/{attempts - 1})")
            else:
                what = "the affected samples" if partial is not None else "this call's samples"
                self.log(f"judge {m.key} at step {step}: {problem}; dropping {what}")
        if partial is not None:
            return partial
        m.failures += 1
        if m.failures >= self.max_consecutive_failures:
            raise JudgeFailure(f"judge {m.key} failed {m.failures} calls in a row (last: {problem}); "
                               "stopping the run")
        return fallback

    def _invoke(self, m: Member, fn: Callable[[], Any]) -> Any:
        if m.interactive:  # a person: the front end answers (and skips everything on stop)
            with m.lock:
                return fn()
        box: dict[str, Any] = {}

        def work() -> None:
            # The lock keeps a call that timed out (still running) and its retry
            # from using the judge at the same time.
            with m.lock:
                try:
                    box["value"] = fn()
                except BaseException as exc:  # noqa: BLE001  handed to the caller's thread
                    box["error"] = exc

        worker = threading.Thread(target=work, name=f"judge-{m.key}", daemon=True)
        worker.start()
        deadline = time.monotonic() + (self.timeout if self.timeout is not None else math.inf)
        while worker.is_alive() and time.monotonic() < deadline:
            worker.join(max(0.0, min(0.1, deadline - time.monotonic())))
            if self.interrupt is not None and self.interrupt.is_set() and worker.is_alive():
                # the call finishes in the background (under the member's lock); the step is abandoned
                raise StepInterrupted(f"judge {m.key} interrupted")
        if worker.is_alive():
            raise JudgeTimeout(f"timed out after {self.timeout:g}s")  # (never with timeout None)
        if "error" in box:
            raise box["error"]
        return box["value"]


def _join(parts: list[Any]) -> Any:
    """Per-rank lists joined in rank order; per-rank dicts of lists (dataset columns) joined by key."""
    if parts and isinstance(parts[0], dict):
        return {k: [x for p in parts for x in p[k]] for k in parts[0]}
    return [x for p in parts for x in p]


def verdict_score(v: Verdict) -> float | None:
    """A verdict of ``compare(x, baseline)`` as the probability that x is better."""
    if v.choice == "skip":
        return None
    if v.choice == "tie":
        return 0.5
    p = 1.0 if v.confidence is None else min(1.0, max(0.0, float(v.confidence)))
    return p if v.choice == "a" else 1.0 - p


def _check_scores(raw: Any, n: int, limit: float | None = MAX_ABS_SCORE) -> tuple[list[float | None] | None, str | None]:
    """The scores as floats (None = skipped) and a problem, if any. A score must be finite in
    float32, the dtype training uses (so 1e300, finite in float64, is not), and within ``limit``."""
    if isinstance(raw, (str, bytes, dict)) or not hasattr(raw, "__len__"):
        return None, f"returned {type(raw).__name__} instead of a list of {n} scores"
    values = list(raw)
    if len(values) != n:
        return None, f"returned {len(values)} scores for {n} samples"
    out: list[float | None] = []
    bad = huge = 0
    first = 0.0
    for v in values:
        if v is None:  # a skip: an answer, not an error
            out.append(None)
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            return None, f"returned a score that is not a number: {v!r:.40}"
        if not math.isfinite(f):
            bad += 1
            out.append(None)
        elif abs(f) > (limit if limit is not None else F32_MAX):
            huge += 1
            first = f if huge == 1 else first
            out.append(None)
        else:
            out.append(f)
    if bad or huge:
        problems = []
        if bad:
            problems.append(f"{bad} non-finite score(s) (NaN or inf)")
        if huge:
            bound = f"±{limit:g}" if limit is not None else "float32's range"
            problems.append(f"{huge} score(s) beyond {bound} (e.g. {first:.3g}; set score_clip to clip them)")
        return (out if bad + huge < n else None), f"returned {' and '.join(problems)} of {n}"
    return out, None


def _check_verdict(raw: Any) -> tuple[Verdict | None, str | None]:
    if isinstance(raw, Verdict):
        if raw.confidence is not None and not (0.0 <= float(raw.confidence) <= 1.0):
            return None, f"returned a confidence outside [0, 1]: {raw.confidence!r}"
        return raw, None
    shown = f" {raw!r:.40}" if isinstance(raw, str) else ""
    return None, f"returned {type(raw).__name__}{shown} instead of a Verdict (e.g. Verdict('a'))"
