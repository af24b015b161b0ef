"""Trained against base under a judge: the win rate, its Wilson interval, the report files.

Plain Python (no MLX): ``tui-trainer eval`` (commands/eval.py) samples the completions with the
engine and judges them; this module turns the outcomes into numbers and ``eval.json`` / ``eval.md``.

Outcome per prompt: ``win`` (the trained completion is preferred), ``loss``, ``tie`` (counts
half a win), or ``skip`` (a judge failed or skipped: left out of n). Win rate = (wins + ties / 2) / n,
with the 95% Wilson score interval on that proportion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui_trainer.fileio import atomic_write_json, atomic_write_text

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for ``successes`` of ``n`` (successes may be fractional: ties count half).
    n = 0 gives (0, 1): nothing is known."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def outcome_of_scores(trained: float | None, base: float | None) -> str:
    if trained is None or base is None or not (math.isfinite(trained) and math.isfinite(base)):
        return "skip"
    return "win" if trained > base else "loss" if trained < base else "tie"


def outcome_of_verdict(choice: str) -> str:
    """A pairwise verdict on (a = trained, b = base)."""
    return {"a": "win", "b": "loss", "tie": "tie"}.get(choice, "skip")


@dataclass
class EvalResult:
    prompts: list[str]
    trained: list[str]
    base: list[str]
    outcomes: list[str]
    trained_scores: list[float | None] = field(default_factory=list)
    base_scores: list[float | None] = field(default_factory=list)
    per_judge: dict[str, dict[str, float | None]] = field(default_factory=dict)  # key -> {trained, base} means
    info: dict[str, Any] = field(default_factory=dict)  # checkpoint, judges, data rule, sampling

    def count(self, what: str) -> int:
        return sum(1 for o in self.outcomes if o == what)

    @property
    def n(self) -> int:
        return len(self.outcomes) - self.count("skip")

    @property
    def win_rate(self) -> float | None:
        return (self.count("win") + 0.5 * self.count("tie")) / self.n if self.n else None

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.count("win") + 0.5 * self.count("tie"), self.n)

    def summary(self) -> dict[str, Any]:
        """What ``eval --json`` prints."""
        lo, hi = self.ci95
        return {"win_rate": self.win_rate, "ci95": [lo, hi], "n": self.n}

    def as_json(self) -> dict[str, Any]:
        examples = [{"prompt": p, "trained": t, "base": b, "outcome": o,
                     "trained_score": ts, "base_score": bs}
                    for p, t, b, o, ts, bs in zip(self.prompts, self.trained, self.base, self.outcomes,
                                                  _pad(self.trained_scores, len(self.prompts)),
                                                  _pad(self.base_scores, len(self.prompts)))]
        return {**self.summary(), "wins": self.count("win"), "losses": self.count("loss"),
                "ties": self.count("tie"), "skipped": self.count("skip"), "per_judge": self.per_judge,
                **self.info, "examples": examples}

    def markdown(self, max_examples: int = 20) -> str:
        lo, hi = self.ci95
        rate = "n/a" if self.win_rate is None else f"{self.win_rate:.3f}"
        info = self.info
        lines = [f"# Evaluation: trained vs base ({info.get('checkpoint', '')})", "",
                 f"- judge(s): {', '.join(info.get('judges', []))}",
                 f"- prompts: {len(self.prompts)} ({info.get('data', '')})",
                 f"- sampling: temperature {info.get('temperature')}, max_new_tokens {info.get('max_new_tokens')}",
                 f"- **win rate of trained over base: {rate}** (95% Wilson interval {lo:.3f} - {hi:.3f}, "
                 f"n = {self.n}; ties count half)",
                 f"- wins {self.count('win')}, losses {self.count('loss')}, ties {self.count('tie')}, "
                 f"skipped {self.count('skip')}", ""]
        if self.per_judge:
            lines += ["| judge | mean score, trained | mean score, base |", "|---|---|---|"]
            lines += [f"| {k} | {_num(v.get('trained'))} | {_num(v.get('base'))} |" for k, v in self.per_judge.items()]
            lines.append("")
        lines += ["| # | prompt | trained | base | outcome |", "|---|---|---|---|---|"]
        for i, (p, t, b, o) in enumerate(zip(self.prompts, self.trained, self.base, self.outcomes)):
            if i >= max_examples:
                lines.append(f"\n({len(self.prompts) - max_examples} more in eval.json)")
                break
            lines.append(f"| {i + 1} | {_cell(p)} | {_cell(t)} | {_cell(b)} | {o} |")
        return "\n".join(lines) + "\n"

    def save(self, run_dir: str | Path) -> tuple[Path, Path]:
        run_dir = Path(run_dir)
        atomic_write_json(run_dir / "eval.json", self.as_json())
        atomic_write_text(run_dir / "eval.md", self.markdown())
        return run_dir / "eval.json", run_dir / "eval.md"


def mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


def _pad(values: list, n: int) -> list:
    return list(values) + [None] * (n - len(values))


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _cell(text: str, width: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 3] + "..."
