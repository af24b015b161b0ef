"""Atomic file writes: a temp file in the same folder, fsync, then os.replace."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` itself if it exists, else its closest ancestor that does (where it would be created)."""
    above = Path(path)
    while not above.exists() and above != above.parent:
        above = above.parent
    return above


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a part."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Write ``rows`` as JSON lines; returns how many."""
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    atomic_write_text(path, "".join(lines))
    return len(lines)
