"""Prompt data: load, tokenize, and hand out batches in a deterministic, resumable order.

Sources (``DataConfig.path``):

- ``None``: the embedded prompt set shipped in the package (``tui_trainer/data/prompts.jsonl``);
- a file: ``.jsonl`` / ``.ndjson``, ``.json`` (a list of objects or of strings), ``.parquet``,
  ``.csv`` / ``.tsv``, ``.txt`` (one prompt per line);
- a directory written by ``datasets``' ``save_to_disk``, or a directory of data files;
- a Hugging Face hub dataset id (``openai/gsm8k``): read from the local cache (the hub cache, or
  the ``datasets`` cache) without the network when it is there; else downloaded once into the hub
  cache, announced and followed by a progress report; offline (``HF_HUB_OFFLINE=1``) that is one
  line of error.

``data.subset`` picks a dataset's subset (its config name, ``main`` for gsm8k); ``data.split`` a
split in datasets' own syntax, slices included (``train[:500]``, ``test[10%:]``). A single file is
the split ``train``.

Every field of a row besides the prompt is kept on its ``Prompt`` as ``columns`` (plain JSON-able
values): judges that declare them get them (``answer`` for a GSM8K-style check).

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
import io
import json
import random
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tui_trainer.errors import DataError, one_line

if TYPE_CHECKING:
    from tui_trainer.config import DataConfig

FILE_TYPES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".tsv", ".txt")
MESSAGES_FIELD = "messages"
EMBEDDED_NAME = "embedded prompts"
Progress = Callable[[int, int, str, str], None]  # (done, total, unit, detail)
Log = Callable[[str], None]


@dataclass
class Prompt:
    text: str  # the user's prompt (the last user message of a conversation)
    ids: list[int]  # what the policy sees: chat template applied when configured
    index: int = -1  # row number in the source, from 0
    columns: dict[str, Any] = dataclass_field(default_factory=dict)  # the row's other fields (e.g. answer), for judges


def embedded_prompts_path():
    """The default prompt set, read through importlib.resources (works from an installed wheel)."""
    return importlib.resources.files("tui_trainer").joinpath("data", "prompts.jsonl")


# ----------------------------------------------------------------------------- reading rows

@dataclass
class Rows:
    rows: list[Any]  # str or dict per row
    name: str  # for messages: the file or dataset
    line_numbers: list[int] | None = None  # JSONL / TXT: the file line of each row
    row_numbers: list[int] | None = None  # after a split slice: each row's number in its split, from 1

    def where(self, i: int) -> str:
        if self.line_numbers is not None:
            return f"{self.name} line {self.line_numbers[i]}"
        return f"{self.name} row {self.row_numbers[i] if self.row_numbers is not None else i + 1}"

    def sliced(self, start: int, stop: int) -> "Rows":
        lines = self.line_numbers[start:stop] if self.line_numbers is not None else None
        numbers = (self.row_numbers[start:stop] if self.row_numbers is not None
                   else list(range(start + 1, stop + 1)))
        return Rows(self.rows[start:stop], self.name, lines, numbers if lines is None else None)


def _plain(value: Any) -> Any:
    """A column value as plain JSON-able Python (what judges and samples.jsonl get)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def read_jsonl(path: Path, name: str) -> Rows:
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
    return Rows(rows, name, lines)


def read_json(path: Path, name: str) -> Rows:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{name}: expected a JSON list of objects or of strings, got a {type(data).__name__}")
    return Rows(data, name)


def read_csv(path: Path, name: str, delimiter: str) -> Rows:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            rows = [dict(r) for r in reader]
        except csv.Error as exc:
            raise DataError(f"{name} line {reader.line_num}: not valid CSV ({exc})") from None
        if reader.fieldnames is None:
            rows = []
    return Rows(rows, name)


def _read_txt(path: Path, name: str) -> Rows:
    rows, lines = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                rows.append(line.rstrip("\r\n"))
                lines.append(n)
    return Rows(rows, name, lines)


def _pick_column(columns: list[str], field: str, name: str) -> str:
    if field in columns:
        return field
    if MESSAGES_FIELD in columns:
        return MESSAGES_FIELD
    raise DataError(f"{name}: no field {field!r} (fields: {', '.join(columns) or 'none'}); set data.prompt_field")


def _read_parquet(path: Path, name: str, field: str) -> Rows:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends with long texts
        raise DataError(f"{name}: not a readable parquet file ({one_line(exc)[:200]})") from None
    _pick_column(pf.schema_arrow.names, field, name)
    return Rows([_plain(r) for r in pf.read().to_pylist()], name)


def _split_spec(split: str, sizes: dict[str, int], name: str):
    """``split`` in datasets' own syntax (``train``, ``train[:500]``, ``test[10%:]``, ``a+b``) as
    absolute (split, start, stop) instructions against ``sizes``."""
    from datasets import ReadInstruction

    try:
        return [(i.splitname, i.from_, i.to) for i in ReadInstruction.from_spec(split).to_absolute(sizes)]
    except (ValueError, AssertionError) as exc:
        text = one_line(exc)
        if text.startswith("ValueError: Unknown split"):
            return None  # the caller names the splits there are
        raise DataError(f"{name}: data.split {split!r} is not a split like train, train[:500] or "
                        f"test[10%:] ({text})") from None


def _slice_file(table: Rows, split: str) -> Rows:
    """A single file is the split ``train`` (as datasets calls it); ``train[:500]`` slices it."""
    if split == "train":
        return table
    parts = _split_spec(split, {"train": len(table.rows)}, table.name)
    if parts is None:
        raise DataError(f"{table.name}: a single file is the split 'train', so data.split {split!r} does not "
                        "apply; use train or a slice of it, e.g. train[:500]")
    out = Rows([], table.name, [] if table.line_numbers is not None else None, None)
    for _, start, stop in parts:
        piece = table.sliced(start, stop)
        out.rows += piece.rows
        if out.line_numbers is not None:
            out.line_numbers += piece.line_numbers
        else:
            out.row_numbers = (out.row_numbers or []) + piece.row_numbers
    return out


def _rows_of_dataset(ds, name: str, field: str, split: str) -> Rows:
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

    if isinstance(ds, (IterableDataset, IterableDatasetDict)):
        raise DataError(f"{name}: streaming datasets are not supported; save it with save_to_disk first")
    if isinstance(ds, Dataset):
        ds = DatasetDict({"train": ds})
    parts = _split_spec(split, {k: len(v) for k, v in ds.items()}, name)
    if parts is None:
        raise DataError(f"{name}: no split {split!r} (splits: {', '.join(ds.keys())}); set data.split")
    where = name if split == "train" and list(ds.keys()) == ["train"] else f"{name} {split}"
    rows: list[Any] = []
    numbers: list[int] = []
    for split_name, start, stop in parts:
        part = ds[split_name]
        _pick_column(list(part.column_names), field, name)
        rows += [_plain(r) for r in part.select(range(start, stop))]
        numbers += list(range(start + 1, stop + 1))
    return Rows(rows, where, None, numbers)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


@contextmanager
def _datasets_quiet(offline: bool = True):
    """Keep ``datasets`` off the network (``offline``), and its progress bars and log lines off the
    terminal (they would scribble over the TUI) while it loads."""
    import datasets
    import datasets.config as dconfig
    import datasets.utils.logging as dlogging
    import huggingface_hub.constants as hconst

    saved = dconfig.HF_HUB_OFFLINE, hconst.HF_HUB_OFFLINE
    verbosity, bars = dlogging.get_verbosity(), dlogging.is_progress_bar_enabled()
    if offline:
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


def _load_local_dataset(path: Path, name: str, subset: str | None):
    """A ``save_to_disk`` directory, or a directory of data files (a hub snapshot included: its
    README's ``configs`` name the subsets), with ``datasets``, offline."""
    import datasets

    try:
        with _datasets_quiet():
            if _is_saved_dataset(path):
                if subset is not None:
                    raise DataError(f"{name}: a saved dataset has no subsets; drop data.subset ({subset!r})")
                return datasets.load_from_disk(str(path))
            return datasets.load_dataset(str(path), subset, split=None)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types for a broken directory
        text = one_line(exc)
        if "BuilderConfig" in text and "not found" in text:
            raise DataError(f"{name}: no subset {subset!r} ({text.split('not found. ')[-1]}); "
                            "set data.subset") from None
        raise DataError(f"{name}: cannot load as a dataset ({text[:200]})") from None


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub read it at import or as the environment says now."""
    import os

    import huggingface_hub.constants as hconst

    return bool(hconst.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _cached_snapshot(ref: str) -> Path | None:
    """The dataset repository ``ref`` in the Hugging Face hub cache (``hf download --repo-type
    dataset``, or an earlier run's download), without the network."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref, repo_type="dataset", local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError), or not a valid repo id
        return None


def _cached_dataset(ref: str, subset: str | None):
    """``ref`` from the ``datasets`` cache (an earlier ``datasets.load_dataset(ref)``), offline."""
    import datasets

    try:
        with _datasets_quiet():
            return datasets.load_dataset(ref, subset, split=None)
    except Exception:
        return None


class _DownloadBar:
    """What a download has done so far, filled in by huggingface_hub's progress bars (built from
    ``bar_class``) on its own threads and read by the thread that shows it."""

    def __init__(self) -> None:
        import threading

        import tqdm.auto

        self.lock = threading.Lock()
        self.bytes = [0, 0]
        self.files = [0, 0]
        state = self

        class Bar(tqdm.auto.tqdm):
            def __init__(self, *args, **kwargs):
                kwargs.pop("name", None)
                kwargs["disable"] = False
                kwargs["file"] = io.StringIO()  # counted here, drawn by the front end
                super().__init__(*args, **kwargs)
                self._sync()

            def _sync(self) -> None:
                desc = str(getattr(self, "desc", ""))
                counts = state.bytes if getattr(self, "unit", "") == "B" and desc.startswith("Download") else \
                    state.files if desc.startswith("Fetching") else None
                if counts is not None:
                    with state.lock:
                        counts[:] = [int(self.n), int(self.total or 0)]

            def update(self, n=1):
                out = super().update(n)
                self._sync()
                return out

            def refresh(self, *args, **kwargs):
                self._sync()
                return super().refresh(*args, **kwargs)

        self.bar_class = Bar

    def now(self) -> tuple[int, int, str]:
        with self.lock:
            if self.bytes[1]:
                return self.bytes[0], self.bytes[1], "bytes"
            return self.files[0], self.files[1], "files"


def _download(ref: str, progress: Progress | None, log: Log | None) -> Path:
    """Download dataset repository ``ref`` into the hub cache, reporting ``progress`` from this
    thread; one line on failure."""
    import threading

    from huggingface_hub import snapshot_download

    if log is not None:
        log(f"downloading dataset {ref} from the Hugging Face hub (once; later runs read the cache)")
    bar = _DownloadBar()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["path"] = snapshot_download(ref, repo_type="dataset", tqdm_class=bar.bar_class)
        except BaseException as exc:  # noqa: BLE001  handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=work, name="dataset-download", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
        if progress is not None:
            done, total, unit = bar.now()
            progress(done, total, unit, f"downloading {ref} ({unit})")
    if "error" in box:
        exc = box["error"]
        kind = type(exc).__name__
        if kind in ("RepositoryNotFoundError", "GatedRepoError") or "404" in str(exc)[:400]:
            why = "no such dataset on the hub, or it is private or gated (log in with `hf auth login`)"
        else:
            why = f"{one_line(exc)[:160]}; check the network"
        raise DataError(f"{ref}: cannot download the dataset from the Hugging Face hub ({why})") from None
    done, total, unit = bar.now()
    if progress is not None:
        progress(total or done, total or done, unit, f"downloaded {ref} ({unit})")
    return Path(box["path"])


def _read_hub_dataset(ref: str, data_cfg: "DataConfig", progress: Progress | None, log: Log | None) -> Rows:
    """A hub dataset id: the cached copy when there is one (no network), else a download."""
    field, subset, split = data_cfg.prompt_field, data_cfg.subset, data_cfg.split
    snapshot = _cached_snapshot(ref)
    if snapshot is None:
        ds = _cached_dataset(ref, subset)
        if ds is not None:
            return _rows_of_dataset(ds, ref, field, split)
        if _hub_offline():
            raise DataError(f"{ref}: not a file, and not in the local Hugging Face cache; the hub is offline "
                            f"(HF_HUB_OFFLINE=1), so it cannot be downloaded: unset HF_HUB_OFFLINE, or fetch it "
                            f"once with `hf download --repo-type dataset {ref}`")
        snapshot = _download(ref, progress, log)
    return _rows_of_dataset(_load_local_dataset(snapshot, ref, subset), ref, field, split)


def read_rows(data_cfg: "DataConfig", *, progress: Progress | None = None, log: Log | None = None) -> Rows:
    """The raw rows (strings or dicts, every column kept) of the configured source, with
    ``data.subset`` and ``data.split`` applied. A hub dataset that is not cached is downloaded:
    ``log`` announces it, ``progress(done, total, unit, detail)`` follows it."""
    field = data_cfg.prompt_field
    if data_cfg.path is None:
        resource = embedded_prompts_path()
        with importlib.resources.as_file(resource) as path:
            return _slice_file(read_jsonl(Path(path), EMBEDDED_NAME), data_cfg.split)
    ref = str(data_cfg.path)
    path = Path(ref).expanduser()
    if path.is_dir():
        return _rows_of_dataset(_load_local_dataset(path, ref, data_cfg.subset), ref, field, data_cfg.split)
    if path.is_file():
        if data_cfg.subset is not None:
            raise DataError(f"{ref}: a file has no subsets; drop data.subset ({data_cfg.subset!r})")
        return _slice_file(_read_file(path, ref, field), data_cfg.split)
    looks_like_path = path.suffix.lower() in FILE_TYPES or ref.startswith((".", "/", "~")) or ref.count("/") > 1
    if looks_like_path:
        raise DataError(f"{ref}: no such file or directory")
    return _read_hub_dataset(ref, data_cfg, progress, log)


def _read_file(path: Path, ref: str, field: str) -> Rows:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            return read_jsonl(path, ref)
        if suffix == ".json":
            return read_json(path, ref)
        if suffix == ".parquet":
            return _read_parquet(path, ref, field)
        if suffix in (".csv", ".tsv"):
            return read_csv(path, ref, "\t" if suffix == ".tsv" else ",")
        if suffix == ".txt":
            return _read_txt(path, ref)
    except UnicodeDecodeError:
        raise DataError(f"{ref}: not UTF-8 text") from None
    except OSError as exc:
        raise DataError(f"{ref}: cannot read ({exc.strerror or type(exc).__name__})") from None
    raise DataError(f"{ref}: unsupported file type {suffix or '(none)'!r}; use one of {', '.join(FILE_TYPES)}")


# ----------------------------------------------------------------------------- rows -> messages

def prompt_key(row: Any, field: str) -> str | None:
    """The field of ``row`` that holds its prompt (``field``, else ``messages``); None for a text row."""
    if not isinstance(row, dict):
        return None
    return field if field in row or MESSAGES_FIELD not in row else MESSAGES_FIELD


def row_columns(row: Any, field: str) -> dict[str, Any]:
    """Every field of ``row`` but its prompt: what judges get as columns."""
    if not isinstance(row, dict):
        return {}
    key = prompt_key(row, field)
    return {str(k): v for k, v in row.items() if k != key}


def require_columns(table: Rows, field: str, needs: dict[str, tuple[str, ...]]) -> None:
    """Every row has each column a judge needs (``needs``: judge -> column names), with a value;
    else one line naming the judge, the column and the first row without it."""
    for judge, names in needs.items():
        for name in names:
            missing = [i for i, row in enumerate(table.rows) if row_columns(row, field).get(name) is None]
            if not missing:
                continue
            if len(missing) == len(table.rows):
                have = sorted({k for row in table.rows[:100] for k in row_columns(row, field)})
                raise DataError(f"{table.name}: no column {name!r}, which judge {judge} needs "
                                f"(columns: {', '.join(have) or 'none but the prompt'})")
            raise DataError(f"{table.where(missing[0])}: no {name!r} value, which judge {judge} needs "
                            f"({len(missing)} of {len(table.rows)} rows lack it)")


def messages_of(row: Any, where: str, field: str) -> list[dict]:
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


def template_ids(tokenizer, messages: list[dict], *, add_generation_prompt: bool, where: str = "") -> list[int]:
    """Token ids of ``messages`` through the tokenizer's chat template; a template error is one
    line (DataError). The prompts (``add_generation_prompt``) and the reward model both use it."""
    try:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    except Exception as exc:  # jinja errors for roles a template refuses, and the like
        prefix = f"{where}: " if where else ""
        raise DataError(f"{prefix}the chat template failed ({one_line(exc)[:200]})") from None
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return [int(t) for t in out]


def _encode(tokenizer, messages: list[dict], data_cfg: "DataConfig", where: str) -> list[int]:
    system = data_cfg.system_prompt
    if data_cfg.chat_template:
        if not getattr(tokenizer, "has_chat_template", getattr(tokenizer, "chat_template", None)):
            raise DataError("the tokenizer has no chat template; set data.chat_template: false")
        if system is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        return template_ids(tokenizer, messages, add_generation_prompt=True, where=where)
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
             seed: int = 0, table: "Rows | None" = None) -> "PromptSet":
        """Tokenized prompts of ``data_cfg``; ``table``: its rows, already read by ``read_rows``."""
        table = table if table is not None else read_rows(data_cfg)
        if not table.rows:
            raise DataError(f"{table.name}: no prompts (the data is empty)")
        prompts: list[Prompt] = []
        dropped = 0
        for i, row in enumerate(table.rows):
            where = table.where(i)
            messages = messages_of(row, where, data_cfg.prompt_field)
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
            prompts.append(Prompt(text=text, ids=ids, index=i, columns=row_columns(row, data_cfg.prompt_field)))
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
