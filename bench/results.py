"""Replace one benchmark's section of bench/RESULTS.md, keep the others (stdlib only)."""

from __future__ import annotations

import os
import re
from pathlib import Path


def end_mark(section: str) -> str:
    return f"<!-- end of {section.lstrip('# ').strip()} -->"


def write_section(path: Path, section: str, text: str) -> None:
    """Replace ``section`` (from its heading to its end marker, or to the next ``## ``) with ``text``.

    ``text`` starts with the heading; the end marker is added. Appended when the section is new;
    written atomically.
    """
    path = Path(path)
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    mark = end_mark(section)
    body = text.rstrip() + "\n" + mark + "\n"
    marked = re.compile(rf"^{re.escape(section)}\n.*?^{re.escape(mark)}\n?", re.S | re.M)
    unmarked = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    for pattern in (marked, unmarked):
        if pattern.search(old):
            new = pattern.sub(lambda _: body + ("\n" if pattern is unmarked else ""), old, count=1)
            break
    else:
        new = old.rstrip() + "\n\n" + body
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new.rstrip() + "\n")
    os.replace(tmp, path)
