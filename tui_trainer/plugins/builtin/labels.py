"""Human labels: ``labels.jsonl`` in the run directory, and its exports.

Every verdict of a human judge is appended as one JSON line, flushed and
fsync'ed, so a crash loses at most the line being written. A line is::

    {"time": 1732363200.5, "step": 3, "judge": "human", "kind": "pairwise",
     "prompt": "...", "a": "...", "b": "...", "shown": ["b", "a"], "choice": "a"}

``a``/``b`` are the completions in the order the trainer gave them, ``shown``
the order they were put on screen (``["b", "a"]``: b was shown first, as "1"),
``choice`` is a / b / tie / skip in terms of ``a`` and ``b`` (already mapped back).
Ratings (pointwise) have ``kind: "rating"``, ``b: null``, ``shown: ["a"]``,
``choice: "rate"`` or ``"skip"``, ``rating`` and ``scale``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from tui_trainer.errors import DataError
from tui_trainer.fileio import atomic_write_jsonl

LABELS_FILE = "labels.jsonl"
FORMATS = ("dpo",)

_lock = threading.Lock()


def labels_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LABELS_FILE


def append_label(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as a JSON line; flushed and fsync'ed before returning."""
    record = {"time": time.time(), **record}
    line = json.dumps(record, ensure_ascii=False) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def read_labels(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[int]]:
    """All records of a labels file, and the numbers of the lines that could not be read
    (a line cut short by a crash, say); DataError when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no labels file (a run writes one when a human judge answers)")
    records: list[dict[str, Any]] = []
    bad: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad.append(number)
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad.append(number)
    return records, bad


def to_dpo(records: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """{prompt, chosen, rejected} for each pairwise label with a winner (ties, skips
    and ratings left out)."""
    out = []
    for rec in records:
        if rec.get("kind", "pairwise") != "pairwise" or rec.get("choice") not in ("a", "b"):
            continue
        a, b, prompt = rec.get("a"), rec.get("b"), rec.get("prompt")
        if not all(isinstance(x, str) for x in (a, b, prompt)):
            continue
        chosen, rejected = (a, b) if rec["choice"] == "a" else (b, a)
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` as JSON lines to ``path`` via a temp file and os.replace."""
    return atomic_write_jsonl(path, rows)
