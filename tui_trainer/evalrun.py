"""An evaluation of a trained run, assembled in one place: ``evaluate_run(RUN_DIR, ...)``.

Like run.py for training, this is where the engine (the trained policy, sampling with the adapter
on and off) meets the plugins (the judge set). ``tui-trainer eval`` and the app's "after" view
(screens/after.py, on the engine thread) both call it. The numbers and report files are
evaluation.py's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable


def judge_specs_for(run: str | Path, names: list[str] | None, options: dict | None = None) -> list:
    """The judges to evaluate with: ``names`` (each with ``options``), else the run's own."""
    from tui_trainer.engine.trained import locate_checkpoint, run_config
    from tui_trainer.errors import ConfigError

    if names:
        return [{"name": name, "options": dict(options or {})} for name in names]
    if options:
        raise ConfigError("judge options need a judge name (the run's own judges keep their options)")
    _, run_dir = locate_checkpoint(run)
    return list(run_config(run_dir).judges)


def evaluate_run(run: str | Path, *, judges: list | None = None, data: str | None = None, n: int = 100,
                 max_new_tokens: int | None = None, temperature: float = 0.0, seed: int = 0, batch_size: int = 8,
                 prompter: Any = None, progress: Callable[[str, int, int], None] | None = None,
                 log: Callable[[str], None] | None = None, save: bool = True):
    """Trained vs base on held-out prompts; returns (EvalResult, paths written or None).

    ``judges``: JudgeSpecs / dicts (default: the run's own). Raises ConfigError / ModelError /
    DataError (one line) for bad input, before the model loads where it can."""
    from tui_trainer.engine.trained import held_out_prompts, load_trained, locate_checkpoint, run_config, sample_both
    from tui_trainer.errors import ConfigError
    from tui_trainer.evaluation import EvalResult, mean, outcome_of_scores, outcome_of_verdict
    from tui_trainer.plugins.manager import build_judge_set, get_plugin_manager

    if n < 1:
        raise ConfigError(f"-n must be >= 1, got {n}")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature}")
    report = progress or (lambda phase, done, total: None)
    _, run_dir = locate_checkpoint(run)  # bad paths fail before any model loads
    cfg = run_config(run_dir)
    js = build_judge_set(judges if judges else cfg.judges, prompter=prompter, run_dir=None, failure="drop",
                         retries=cfg.judge_retries, timeout=cfg.judge_timeout, log=log,
                         registry=get_plugin_manager())
    try:
        report("loading", 0, 1)
        trained = load_trained(run)
        report("loading", 1, 1)
        prompts, rule = held_out_prompts(trained, data, n)
        max_new = max_new_tokens or trained.config.max_new_tokens
        t0 = time.perf_counter()
        texts = [p.text for p in prompts]
        done_trained, done_base = sample_both(trained, [p.ids for p in prompts], max_new_tokens=max_new,
                                              temperature=temperature, seed=seed, batch_size=max(1, batch_size),
                                              progress=report)
        t_sample = time.perf_counter() - t0
        js.progress = lambda key, done, total: report(f"judging ({key})", done, total)
        per_judge: dict = {}
        tr_scores: list = []
        base_scores: list = []
        if any(m.info.pointwise for m in js.members):
            k = len(prompts)
            columns = [p.columns for p in prompts] * 2 if any(p.columns for p in prompts) else None
            res = js.score(texts * 2, done_trained + done_base, columns=columns)
            tr_scores, base_scores = res.scores[:k], res.scores[k:]
            outcomes = [outcome_of_scores(a, b) for a, b in zip(tr_scores, base_scores)]
            per_judge = {key: {"trained": mean(v[:k]), "base": mean(v[k:])} for key, v in res.per_judge.items()}
        else:  # every judge is pairwise: compare trained (a) with base (b)
            outcomes = []
            for i, (p, a, b) in enumerate(zip(texts, done_trained, done_base)):
                outcomes.append(outcome_of_verdict(js.compare(p, a, b).choice))
                report(f"judging ({js.names[0]})", i + 1, len(texts))
        info = {"checkpoint": str(trained.checkpoint), "step": trained.step, "judges": js.names, "data": rule,
                "temperature": temperature, "max_new_tokens": max_new, "seed": seed,
                "base_model": trained.config.model or "embedded SmolLM2-135M-Instruct",
                "seconds": {"sampling": round(t_sample, 2), "total": round(time.perf_counter() - t0, 2)}}
        result = EvalResult(texts, done_trained, done_base, outcomes, tr_scores, base_scores, per_judge, info)
        paths = result.save(run_dir if run_dir is not None else trained.checkpoint) if save else None
    finally:
        js.close()
    return result, paths
