"""Prompt data: load, tokenize, and hand out batches in a deterministic, resumable order.

Sources (``DataConfig.path``):

- ``None``: the embedded prompt set shipped in the package (``tui_trainer/data/prompts.jsonl``);
- a file: ``.jsonl`` / ``.ndjson``, ``.json`` (a list of objects or of strings), ``.parquet``,
  ``.csv`` / ``.tsv``, ``.txt`` (one prompt per line);
- a directory written by ``datasets``' ``save_to_disk``, or a directory of data files;
- the name of a ``datasets`` dataset already in the local cache (nothing is downloaded).

A row gives its prompt in ``prompt_field`` (text, or a chat ``messages`` list), or in a
``messages`` list when it has no such field. With ``chat_template`` on, the messages go
through ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``, with
``system_prompt`` added in front of conversations that have no system message; off, the
text is encoded as is.

The order is a permutation of the rows drawn from (seed, epoch); ``next_batch`` wraps into
the next epoch, and ``state()`` / ``set_state()`` carry the position across a resume.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.resources
import json
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui_trainer.errors import DataError, one_line

if TYPE_CHECKING:
    from tui_trainer.config import DataConfig

FILE_TYPES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".tsv", ".txt")
MESSAGES_FIELD = "messages"
EMBEDDED_NAME = "embedded prompts"


@dataclass
class Prompt:
    text: str  # the user's prompt (the last user message of a conversation)
    ids: list[int]  # what the policy sees: chat template applied when configured
    index: int = -1  # row number in the source, from 0


def embedded_prompts_path():
    """The default prompt set, read through importlib.resources (works from an installed wheel)."""
    return importlib.resources.files("tui_trainer").joinpath("data", "prompts.jsonl")


# ----------------------------------------------------------------------------- reading rows

@dataclass
class _Rows:
    rows: list[Any]  # str or dict per row
    name: str  # for messages: the file or dataset
    line_numbers: list[int] | None = None  # JSONL: the file line of each row

    def where(self, i: int) -> str:
        if self.line_numbers is not None:
            return f"{self.name} line {self.line_numbers[i]}"
        return f"{self.name} row {i + 1}"


def _read_jsonl(path: Path, name: str) -> _Rows:
    rows, lines = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{name} line {n}: not valid JSON ({exc.msg}, column {exc.colno})") from None
            lines.append(n)
    return _Rows(rows, name, lines)


def _read_json(path: Path, name: str) -> _Rows:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{name}: expected a JSON list of objects or of strings, got a {type(data).__name__}")
    return _Rows(data, name)


def _read_csv(path: Path, name: str, delimiter: str) -> _Rows:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            rows = [dict(r) for r in reader]
        except csv.Error as exc:
            raise DataError(f"{name} line {reader.line_num}: not valid CSV ({exc})") from None
        if reader.fieldnames is None:
            rows = []
    return _Rows(rows, name)


def _read_txt(path: Path, name: str) -> _Rows:
    rows, lines = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                rows.append(line.rstrip("\r\n"))
                lines.append(n)
    return _Rows(rows, name, lines)


def _pick_column(columns: list[str], field: str, name: str) -> str:
    if field in columns:
        return field
    if MESSAGES_FIELD in columns:
        return MESSAGES_FIELD
    raise DataError(f"{name}: no field {field!r} (fields: {', '.join(columns) or 'none'}); set data.prompt_field")


def _read_parquet(path: Path, name: str, field: str) -> _Rows:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends with long texts
        raise DataError(f"{name}: not a readable parquet file ({one_line(exc)[:200]})") from None
    column = _pick_column(pf.schema_arrow.names, field, name)
    values = pf.read(columns=[column]).column(column).to_pylist()
    return _Rows([{column: v} for v in values], name)


def _rows_of_dataset(ds, name: str, field: str, split: str) -> _Rows:
    from datasets import DatasetDict, IterableDataset, IterableDatasetDict

    if isinstance(ds, (DatasetDict, IterableDatasetDict)):
        if split not in ds:
            raise DataError(f"{name}: no split {split!r} (splits: {', '.join(ds.keys())}); set data.split")
        ds = ds[split]
    if isinstance(ds, IterableDataset):
        raise DataError(f"{name}: streaming datasets are not supported; save it with save_to_disk first")
    column = _pick_column(list(ds.column_names), field, name)
    return _Rows([{column: v} for v in ds[column]], name)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


@contextmanager
def _datasets_quiet_offline():
    """Keep ``datasets`` off the network, and its progress bars and log lines off the terminal
    (they would scribble over the TUI) while it loads."""
    import datasets
    import datasets.config as dconfig
    import datasets.utils.logging as dlogging
    import huggingface_hub.constants as hconst

    saved = dconfig.HF_HUB_OFFLINE, hconst.HF_HUB_OFFLINE
    verbosity, bars = dlogging.get_verbosity(), dlogging.is_progress_bar_enabled()
    dconfig.HF_HUB_OFFLINE = hconst.HF_HUB_OFFLINE = True
    dlogging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        dconfig.HF_HUB_OFFLINE, hconst.HF_HUB_OFFLINE = saved
        dlogging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


def _read_dataset_dir(path: Path, name: str, field: str, split: str) -> _Rows:
    import datasets

    try:
        with _datasets_quiet_offline():
            if _is_saved_dataset(path):
                ds = datasets.load_from_disk(str(path))
            else:
                ds = datasets.load_dataset(str(path), split=None)
    except Exception as exc:  # datasets raises many types for a broken directory
        raise DataError(f"{name}: cannot load as a dataset ({one_line(exc)[:200]})") from None
    return _rows_of_dataset(ds, name, field, split)


def _read_cached_dataset(ref: str, field: str, split: str) -> _Rows:
    import datasets

    try:
        with _datasets_quiet_offline():
            ds = datasets.load_dataset(ref, split=None)
    except Exception:
        raise DataError(f"{ref}: no such file, and not a dataset in the local datasets cache (nothing is "
                        f"downloaded at run time; fetch it once with datasets.load_dataset({ref!r}))") from None
    return _rows_of_dataset(ds, ref, field, split)


def read_rows(data_cfg: "DataConfig") -> _Rows:
    """The raw rows (strings or dicts) of the configured source."""
    field = data_cfg.prompt_field
    if data_cfg.path is None:
        resource = embedded_prompts_path()
        with importlib.resources.as_file(resource) as path:
            return _read_jsonl(Path(path), EMBEDDED_NAME)
    ref = str(data_cfg.path)
    path = Path(ref).expanduser()
    if path.is_dir():
        return _read_dataset_dir(path, ref, field, data_cfg.split)
    if path.is_file():
        suffix = path.suffix.lower()
        try:
            if suffix in (".jsonl", ".ndjson"):
                return _read_jsonl(path, ref)
            if suffix == ".json":
                return _read_json(path, ref)
            if suffix == ".parquet":
                return _read_parquet(path, ref, field)
            if suffix in (".csv", ".tsv"):
                return _read_csv(path, ref, "\t" if suffix == ".tsv" else ",")
            if suffix == ".txt":
                return _read_txt(path, ref)
        except UnicodeDecodeError:
            raise DataError(f"{ref}: not UTF-8 text") from None
        except OSError as exc:
            raise DataError(f"{ref}: cannot read ({exc.strerror or type(exc).__name__})") from None
        raise DataError(f"{ref}: unsupported file type {suffix or '(none)'!r}; use one of {', '.join(FILE_TYPES)}")
    looks_like_path = path.suffix.lower() in FILE_TYPES or ref.startswith((".", "/", "~")) or ref.count("/") > 1
    if looks_like_path:
        raise DataError(f"{ref}: no such file or directory")
    return _read_cached_dataset(ref, field, data_cfg.split)


# ----------------------------------------------------------------------------- rows -> messages

def _messages_of(row: Any, where: str, field: str) -> list[dict]:
    if isinstance(row, str):
        value = row
    elif isinstance(row, dict):
        if field in row:
            value = row[field]
        elif MESSAGES_FIELD in row:
            value = row[MESSAGES_FIELD]
        else:
            fields = ", ".join(map(str, row)) or "none"
            raise DataError(f"{where}: no field {field!r} (fields: {fields}); set data.prompt_field")
    else:
        raise DataError(f"{where}: expected an object or a string, got {type(row).__name__}")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        messages = []
        for m in value:
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: every chat message needs text 'role' and 'content'")
            messages.append({"role": m["role"], "content": m["content"]})
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()  # a finished conversation: the policy writes the reply
        if not any(m["role"] == "user" for m in messages):
            raise DataError(f"{where}: the messages hold no user turn")
        return messages
    shown = "an empty list" if value == [] else f"a {type(value).__name__}"
    raise DataError(f"{where}: the prompt must be text or a messages list of {{role, content}}, got {shown}")


def _encode(tokenizer, messages: list[dict], data_cfg: "DataConfig", where: str) -> list[int]:
    system = data_cfg.system_prompt
    if data_cfg.chat_template:
        if not getattr(tokenizer, "has_chat_template", getattr(tokenizer, "chat_template", None)):
            raise DataError("the tokenizer has no chat template; set data.chat_template: false")
        if system is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        try:
            out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except Exception as exc:  # jinja errors for roles a template refuses, and the like
            raise DataError(f"{where}: the chat template failed ({one_line(exc)[:200]})") from None
        if hasattr(out, "keys"):
            out = out["input_ids"]
    else:
        parts = [m["content"] for m in messages]
        if system is not None and messages[0]["role"] != "system":
            parts.insert(0, system)
        out = tokenizer.encode("\n\n".join(parts))
    return [int(t) for t in out]


# ----------------------------------------------------------------------------- the set

class PromptSet:
    """Tokenized prompts handed out in a seeded order that resumes exactly."""

    def __init__(self, prompts: list[Prompt], *, seed: int = 0, shuffle: bool = True,
                 source: str = "", dropped: int = 0):
        if not prompts:
            raise DataError(f"{source or 'prompt data'}: no prompts")
        self.prompts = prompts
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.source = source
        self.dropped = dropped  # rows left out by data.drop_long
        self.epoch = 0
        self.position = 0
        self._fingerprint: str | None = None
        self._order = self._order_for(0)

    @classmethod
    def load(cls, data_cfg: "DataConfig", tokenizer, max_prompt_tokens: int | None = None,
             seed: int = 0, table: "_Rows | None" = None) -> "PromptSet":
        """Tokenized prompts of ``data_cfg``; ``table``: its rows, already read by ``read_rows``."""
        table = table if table is not None else read_rows(data_cfg)
        if not table.rows:
            raise DataError(f"{table.name}: no prompts (the data is empty)")
        prompts: list[Prompt] = []
        dropped = 0
        for i, row in enumerate(table.rows):
            where = table.where(i)
            messages = _messages_of(row, where, data_cfg.prompt_field)
            text = next(m["content"] for m in reversed(messages) if m["role"] == "user")
            if not text.strip():
                raise DataError(f"{where}: the prompt is empty")
            ids = _encode(tokenizer, messages, data_cfg, where)
            if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
                if data_cfg.drop_long:
                    dropped += 1
                    continue
                raise DataError(f"{where}: the prompt is {len(ids)} tokens, longer than the {max_prompt_tokens} "
                                "that fit before the completion; shorten it, or set data.drop_long: true")
            prompts.append(Prompt(text=text, ids=ids, index=i))
        if not prompts:
            raise DataError(f"{table.name}: every prompt is longer than {max_prompt_tokens} tokens")
        return cls(prompts, seed=seed, shuffle=data_cfg.shuffle, source=table.name, dropped=dropped)

    def __len__(self) -> int:
        return len(self.prompts)

    def _order_for(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        if self.shuffle:
            random.Random(f"tui-trainer-data:{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self, n: int) -> list[Prompt]:
        """The next ``n`` prompts, wrapping into a freshly shuffled epoch when one runs out."""
        if n < 1:
            raise ValueError(f"batch size must be >= 1, got {n}")
        batch = []
        while len(batch) < n:
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._order_for(self.epoch)
            take = min(n - len(batch), len(self._order) - self.position)
            batch += [self.prompts[i] for i in self._order[self.position:self.position + take]]
            self.position += take
        return batch

    def fingerprint(self) -> str:
        """A short hash of the token ids, to tell a resume that the data changed."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for p in self.prompts:
                h.update(json.dumps(p.ids).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def state(self) -> dict:
        """The data position (JSON-friendly), for checkpoints."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                "size": len(self.prompts), "fingerprint": self.fingerprint()}

    def set_state(self, state: dict) -> None:
        """Continue from ``state()``: the next batch is the one the saved run would have drawn."""
        try:
            epoch, position, size = int(state["epoch"]), int(state["position"]), int(state["size"])
        except (KeyError, TypeError, ValueError):
            raise DataError("the checkpoint's data position is malformed") from None
        if size != len(self.prompts):
            raise DataError(f"the checkpoint was made with {size} prompts, the data now has {len(self.prompts)}; "
                            "resume with the same data")
        if state.get("fingerprint") not in (None, self.fingerprint()):
            raise DataError("the prompts differ from the ones the checkpoint was made with; resume with the same data")
        if not 0 <= position <= size or epoch < 0:
            raise DataError("the checkpoint's data position is out of range")
        self.seed = int(state.get("seed", self.seed))
        self.shuffle = bool(state.get("shuffle", self.shuffle))
        self.epoch, self.position = epoch, position
        self._order = self._order_for(epoch)
