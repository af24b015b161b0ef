"""Atomic file writes: a temp file in the same folder, fsync, then os.replace (and the same for
whole folders: ``replace_path``)."""

from __future__ import annotations

import json
import os
import shutil
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


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file, a link or a folder tree, if there is one."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_path(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the finished ``tmp`` (a file or folder written beside ``final``) in place of ``final``.

    A new ``final`` appears in one rename. An existing one is renamed aside first and removed
    after, so at every moment ``final`` is either the old whole thing or the new one (a crash
    between the two renames leaves the old one under a ``.old-`` name, never a half-written one).
    """
    tmp, final = Path(tmp), Path(final)
    if final.exists() or final.is_symlink():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        remove_path(old)
        os.replace(final, old)
        os.replace(tmp, final)
        remove_path(old)
    else:
        os.replace(tmp, final)
