"""Preference pairs for reward-model training: ``{prompt, chosen, rejected}`` files and the
human judge's ``labels.jsonl``.

Sources (each ``reward train --data`` argument, repeatable):

- a preference file: ``.jsonl`` / ``.ndjson``, ``.json`` (a list of objects), ``.parquet``,
  ``.csv`` / ``.tsv``, with one pair per row. ``prompt`` is text or a chat ``messages`` list;
  ``chosen`` / ``rejected`` are text or a conversation whose last message is the assistant's
  reply (UltraFeedback-binarized style). A row with no ``prompt`` takes it from the messages
  before the chosen reply.
- a run directory (its ``labels.jsonl``), or a labels file (named ``labels.jsonl``, or a JSONL
  file whose rows are label records): every pairwise verdict with a winner is a pair. The
  record's ``choice`` is already given in terms of ``a`` / ``b`` whatever order the person saw
  them in (``shown``), so both shown orders read the same; ties, skips and ratings are left
  out (counted in ``PreferenceData.notes``), and so are lines cut short by a crash.
- a dataset: a Hugging Face hub id (``mlx-community/Human-Like-DPO``; downloaded once, then read
  from the cache, like the training data) or a folder written by ``datasets``' ``save_to_disk``,
  with ``split`` (datasets' slicing: ``train_prefs[:2000]``) and ``subset``; rows as in a file.

Plain Python at the bottom of the import graph: no MLX. Rows are read with data.py's readers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui_trainer.config import DataConfig
from tui_trainer.data import messages_of, read_csv, read_json, read_jsonl, read_rows, Rows
from tui_trainer.errors import DataError, one_line

LABELS_FILE = "labels.jsonl"  # the human judge's file (plugins/builtin/labels.py writes it)
PAIR_FILE_TYPES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".tsv")


@dataclass(frozen=True)
class Pair:
    """One preference: ``prompt`` (chat messages ending with a user turn) and two replies."""

    prompt: tuple[tuple[str, str], ...]  # ((role, content), ...), hashable
    chosen: str
    rejected: str
    where: str = ""  # file and line / row, for messages

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.prompt]

    @property
    def prompt_text(self) -> str:
        """The last user message (what a judge sees as the prompt during PPO)."""
        return next(c for r, c in reversed(self.prompt) if r == "user")


@dataclass
class PreferenceData:
    pairs: list[Pair]
    sources: list[str]
    notes: list[str] = field(default_factory=list)  # what was left out, per source


def user_prompt(text: str) -> tuple[tuple[str, str], ...]:
    return (("user", text),)


# ----------------------------------------------------------------------------- preference rows

def _reply(value: Any, name: str, where: str) -> tuple[str, list[dict] | None]:
    """(the reply text, the conversation before it or None) of a ``chosen`` / ``rejected`` value."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        for m in value:
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: every message of {name!r} needs text 'role' and 'content'")
        if value[-1]["role"] != "assistant":
            raise DataError(f"{where}: the last message of {name!r} must be the assistant's reply, "
                            f"got role {value[-1]['role']!r}")
        return value[-1]["content"], [{"role": m["role"], "content": m["content"]} for m in value[:-1]]
    shown = "an empty list" if value == [] else f"a {type(value).__name__}"
    raise DataError(f"{where}: {name!r} must be text or a messages list ending with the assistant's reply, "
                    f"got {shown}")


def pair_of_row(row: Any, where: str) -> Pair:
    """A Pair from one ``{prompt, chosen, rejected}`` row; DataError naming ``where`` otherwise."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with prompt, chosen, rejected; got {type(row).__name__}")
    missing = [k for k in ("chosen", "rejected") if k not in row or row[k] is None]
    if missing:
        fields = ", ".join(map(str, row)) or "none"
        raise DataError(f"{where}: no field {' or '.join(repr(m) for m in missing)} (fields: {fields})")
    chosen, before = _reply(row["chosen"], "chosen", where)
    rejected, _ = _reply(row["rejected"], "rejected", where)
    if row.get("prompt") is not None:
        messages = messages_of(row, where, "prompt")
    elif before:
        messages = messages_of({"prompt": before}, where, "prompt")
    else:
        fields = ", ".join(map(str, row))
        raise DataError(f"{where}: no field 'prompt' (fields: {fields}), and 'chosen' is not a conversation "
                        "holding it")
    if not any(m["content"].strip() for m in messages if m["role"] == "user"):
        raise DataError(f"{where}: the prompt is empty")
    return Pair(tuple((m["role"], m["content"]) for m in messages), chosen, rejected, where)


def _read_parquet_rows(path: Path, name: str) -> Rows:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends with long texts
        raise DataError(f"{name}: not a readable parquet file ({one_line(exc)[:200]})") from None
    return Rows(rows, name)


def _read_rows(path: Path, name: str) -> Rows:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            return read_jsonl(path, name)
        if suffix == ".json":
            return read_json(path, name)
        if suffix == ".parquet":
            return _read_parquet_rows(path, name)
        if suffix in (".csv", ".tsv"):
            return read_csv(path, name, "\t" if suffix == ".tsv" else ",")
    except UnicodeDecodeError:
        raise DataError(f"{name}: not UTF-8 text") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror or type(exc).__name__})") from None
    raise DataError(f"{name}: unsupported file type {suffix or '(none)'!r}; use one of {', '.join(PAIR_FILE_TYPES)}, "
                    f"a run directory or its {LABELS_FILE}")


# ----------------------------------------------------------------------------- labels.jsonl

def _is_label(row: Any) -> bool:
    return isinstance(row, dict) and "choice" in row and "a" in row and "chosen" not in row


def pairs_of_labels(path: Path, name: str) -> tuple[list[Pair], str]:
    """The pairs of a human judge's labels file, and a note of what was left out.
    Lines that are not JSON (a line cut short by a crash) are left out, not fatal."""
    pairs: list[Pair] = []
    counts = {"tie": 0, "skip": 0, "rating": 0, "unreadable": 0, "incomplete": 0}
    total = 0
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror or type(exc).__name__})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        total += 1
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            counts["unreadable"] += 1
            continue
        choice = rec.get("choice")
        if rec.get("kind", "pairwise") != "pairwise":
            counts["rating"] += 1
        elif choice in ("tie", "skip"):
            counts[choice] += 1
        elif choice not in ("a", "b") or not all(isinstance(rec.get(k), str) for k in ("prompt", "a", "b")):
            counts["incomplete"] += 1
        else:
            chosen, rejected = (rec["a"], rec["b"]) if choice == "a" else (rec["b"], rec["a"])
            pairs.append(Pair(user_prompt(rec["prompt"]), chosen, rejected, f"{name} line {number}"))
    plural = {"tie": "ties", "skip": "skips", "rating": "ratings"}
    left = ", ".join(f"{n} {plural.get(k, k) if n != 1 else k}" for k, n in counts.items() if n)
    if not pairs:
        raise DataError(f"{name}: no usable pairs in {total} label(s)" + (f" ({left})" if left else "")
                        + "; only pairwise verdicts with a winner train a reward model")
    return pairs, (f"{name}: {len(pairs)} pair(s) of {total} label(s); left out: {left}" if left else "")


# ----------------------------------------------------------------------------- sources

def _looks_like_hub_id(ref: str) -> bool:
    return ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and Path(ref).suffix.lower() not in \
        PAIR_FILE_TYPES


def _pairs_of_table(table: Rows, ref: str) -> list[Pair]:
    if not table.rows:
        raise DataError(f"{ref}: no pairs (the data is empty)")
    return [pair_of_row(row, table.where(i)) for i, row in enumerate(table.rows)]


def read_source(ref: str, split: str = "train", subset: str | None = None, *, progress=None,
                log=None) -> tuple[list[Pair], str]:
    """The pairs of one source (file, labels file, run directory, saved dataset folder or hub
    dataset id), and a note (may be empty). ``split`` / ``subset`` apply to datasets only;
    ``progress`` / ``log`` follow a hub download (data.read_rows)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        labels = path / LABELS_FILE
        if labels.is_file():
            return pairs_of_labels(labels, str(labels))
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            table = read_rows(DataConfig(path=ref, split=split, subset=subset))
            return _pairs_of_table(table, ref), ""
        raise DataError(f"{ref}: a directory without {LABELS_FILE}; give a preference file "
                        f"({', '.join(PAIR_FILE_TYPES)}), a saved dataset, a hub dataset id or a run "
                        "directory whose human judge wrote labels")
    if not path.is_file():
        if _looks_like_hub_id(ref):
            table = read_rows(DataConfig(path=ref, split=split, subset=subset), progress=progress, log=log)
            return _pairs_of_table(table, ref), ""
        raise DataError(f"{ref}: no such file or directory")
    if path.name == LABELS_FILE:
        return pairs_of_labels(path, ref)
    table = _read_rows(path, ref)
    if not table.rows:
        raise DataError(f"{ref}: no pairs (the file is empty)")
    if path.suffix.lower() in (".jsonl", ".ndjson") and _is_label(table.rows[0]):
        return pairs_of_labels(path, ref)
    return _pairs_of_table(table, ref), ""


def read_preferences(sources: list[str] | str, split: str = "train", subset: str | None = None, *,
                     progress=None, log=None) -> PreferenceData:
    """Every pair of ``sources``, in order. DataError (one line) for a bad or empty source.
    ``split`` / ``subset``: of the dataset sources (hub ids, saved datasets)."""
    refs = [sources] if isinstance(sources, str) else list(sources)
    if not refs:
        raise DataError("no preference data given (--data FILE_OR_RUN_DIR)")
    pairs: list[Pair] = []
    notes: list[str] = []
    for ref in refs:
        got, note = read_source(str(ref), split, subset, progress=progress, log=log)
        pairs += got
        if note:
            notes.append(note)
    return PreferenceData(pairs, [str(r) for r in refs], notes)
