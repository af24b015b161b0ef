"""Number and duration formatting shared by the widgets (plain text, no colour)."""

from __future__ import annotations

import math

from tui_trainer.text import printable  # noqa: F401  (the widgets import it from here)


def format_value(value: float | None) -> str:
    """A short, stable rendering of a metric value; '-' when missing or not finite."""
    if value is None:
        return "-"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e5 or a < 1e-3:
        return f"{v:.2e}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.3f}"
    return f"{v:.4f}"


def format_duration(seconds: float | None) -> str:
    """'12.3s', '4m05s', '2h07m'; '-' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def finite(value: object) -> float | None:
    """``value`` as a finite float, or None."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def one_line(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(printable(text).split())
    if width <= 0:
        return ""
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"


PHASE_LABELS = {"loading": "loading", "rollout": "rollout", "judging": "judging", "reference": "reference",
                "update": "update", "evaluation": "evaluation"}


def progress_text(p) -> str:
    """One line for an ``events.Progress``: phase, counts, rate, detail and the step's ETA.

    The app's progress bar and the headless progress line show the same text.
    """
    if p.phase == "loading":
        return f"loading {p.done}/{p.total}: {p.detail} · {format_duration(p.elapsed)}"
    parts = [f"step {p.step}", f"{PHASE_LABELS.get(p.phase, p.phase)} {p.done}/{p.total} {p.unit}"]
    if p.phase == "rollout" and p.rate:
        parts.append(f"{p.rate:.1f} gen tok/s")
    if p.detail:
        parts.append(p.detail)
    if p.eta is not None:
        parts.append(f"step ETA {format_duration(p.eta)}")
    else:
        parts.append(f"{format_duration(p.elapsed)} into the step")
    return " · ".join(parts)


def slowest_rank_text(values: dict) -> str | None:
    """'slowest rank 1 (1.4x)': the rank that worked longest in a step of a run over several ranks
    (``time_step_slowest_rank``) and its work over the quickest rank's (``time_step_rank_spread``);
    None for one process."""
    rank = finite(values.get("time_step_slowest_rank"))
    if values.get("ranks", 1) <= 1 or rank is None:
        return None
    spread = finite(values.get("time_step_rank_spread"))
    return f"slowest rank {rank:.0f}" + (f" ({spread:.1f}x)" if spread is not None else "")
