"""Prompt data: sources, fields, chat template, errors, seeded order, resume, the embedded set."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tui_trainer.config import DataConfig
from tui_trainer.data import Prompt, PromptSet, embedded_prompts_path
from tui_trainer.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


class CharTokenizer:
    """One id per character; the chat template marks each role so tests can read it back."""

    chat_template = "<role>content"

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(i) for i in ids)

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        text += "<assistant>" if add_generation_prompt else ""
        return self.encode(text) if tokenize else text


TOK = CharTokenizer()


@pytest.fixture(scope="module")
def smol_tokenizer():
    from tui_trainer.engine.gguf import build_tokenizer, read_gguf
    from tui_trainer.engine.models import default_model_path

    _weights, meta = read_gguf(default_model_path())
    return build_tokenizer(meta)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the data loader tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load(path=None, tokenizer=TOK, max_prompt_tokens=None, seed=0, **data):
    cfg = DataConfig(path=None if path is None else str(path), **data)
    return PromptSet.load(cfg, tokenizer, max_prompt_tokens=max_prompt_tokens, seed=seed)


def texts(ps: PromptSet) -> list[str]:
    return [p.text for p in ps.prompts]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"prompt": f"question {i}", "id": i} for i in range(5)]
TEXTS = [r["prompt"] for r in ROWS]


# ----------------------------------------------------------------------------- sources

def test_jsonl(tmp_path):
    ps = load(write_jsonl(tmp_path / "p.jsonl", ROWS), chat_template=False)
    assert texts(ps) == TEXTS
    # the row's other fields stay with the prompt, for the judges
    assert ps.prompts[2] == Prompt(text="question 2", ids=TOK.encode("question 2"), index=2, columns={"id": 2})


def test_json_list_of_objects_and_of_strings(tmp_path):
    (tmp_path / "objs.json").write_text(json.dumps(ROWS))
    (tmp_path / "strs.json").write_text(json.dumps(TEXTS))
    assert texts(load(tmp_path / "objs.json")) == TEXTS
    assert texts(load(tmp_path / "strs.json")) == TEXTS


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(5)), "prompt": TEXTS}), tmp_path / "p.parquet")
    assert texts(load(tmp_path / "p.parquet")) == TEXTS


def test_csv_and_tsv(tmp_path):
    for name, delim in (("p.csv", ","), ("p.tsv", "\t")):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.writer(f, delimiter=delim)
            w.writerow(["id", "question"])
            for i, t in enumerate(TEXTS):
                w.writerow([i, t + ", please"])
        ps = load(tmp_path / name, prompt_field="question")
        assert texts(ps) == [t + ", please" for t in TEXTS]


def test_txt_one_prompt_per_line(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    assert texts(load(tmp_path / "p.txt")) == ["first", "second"]


def test_saved_dataset_dir(tmp_path, no_network):
    from datasets import Dataset, DatasetDict

    Dataset.from_dict({"q": TEXTS}).save_to_disk(str(tmp_path / "ds"))
    assert texts(load(tmp_path / "ds", prompt_field="q")) == TEXTS
    DatasetDict({"train": Dataset.from_dict({"q": ["a"]}), "test": Dataset.from_dict({"q": ["b", "c"]})}) \
        .save_to_disk(str(tmp_path / "dd"))
    assert texts(load(tmp_path / "dd", prompt_field="q", split="test")) == ["b", "c"]
    with pytest.raises(DataError, match=r"no split 'valid' \(splits: train, test\)"):
        load(tmp_path / "dd", prompt_field="q", split="valid")


def test_directory_of_data_files(tmp_path, no_network):
    (tmp_path / "files").mkdir()
    write_jsonl(tmp_path / "files" / "train.jsonl", ROWS)
    assert texts(load(tmp_path / "files")) == TEXTS


def test_cached_hub_dataset_by_name(tmp_path, monkeypatch, no_network):
    """A dataset in the datasets cache loads by name, offline. The layout built here is the one a
    hub download leaves: <cache>/<user>___<name>/<config>/<version>/<hash>/<name>-<split>.arrow."""
    import datasets
    import datasets.config

    src = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    build = tmp_path / "build"
    datasets.load_dataset("json", data_files=str(src), cache_dir=str(build))
    (version_dir,) = [p for p in (build / "json").glob("*/*/*") if p.is_dir()]
    (version_dir / "json-train.arrow").rename(version_dir / "toy-train.arrow")
    cache = tmp_path / "cache"
    target = cache / "someone___toy" / "default" / version_dir.parent.name / version_dir.name
    shutil.copytree(version_dir, target)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    assert texts(load("someone/toy")) == TEXTS


GSM8K_README = """---
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train-*
  - split: test
    path: main/test-*
- config_name: socratic
  data_files:
  - split: train
    path: socratic/train-*
---
"""


def gsm8k_files() -> dict[str, bytes]:
    """A dataset repository laid out like openai/gsm8k: two subsets, question / answer rows."""
    def rows(split, n):
        return "".join(json.dumps({"question": f"{split} {i} + 1?", "answer": f"{i} plus one\n#### {i + 1}"}) + "\n"
                       for i in range(n)).encode()

    return {"README.md": GSM8K_README.encode(), "main/train-00000-of-00001.jsonl": rows("train", 5),
            "main/test-00000-of-00001.jsonl": rows("test", 3),
            "socratic/train-00000-of-00001.jsonl": rows("socratic", 2)}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """Empty hub and datasets caches under tmp_path."""
    import datasets.config
    import huggingface_hub.constants as hconst

    monkeypatch.setattr(hconst, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    return tmp_path


@pytest.fixture
def hub(hub_cache, monkeypatch):
    """A local server speaking the hub's protocol for the repository "someone/gsm8k-like"."""
    import huggingface_hub.constants as hconst

    from hub_server import HubServer

    server = HubServer("someone/gsm8k-like", gsm8k_files())
    # what HF_ENDPOINT=<url> sets when huggingface_hub is imported
    monkeypatch.setattr(hconst, "ENDPOINT", server.url)
    monkeypatch.setattr(hconst, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hconst, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.close()


def test_hub_dataset_is_downloaded_once_with_subset_split_and_progress(hub, monkeypatch):
    from tui_trainer.data import read_rows

    logged, progress = [], []
    cfg = DataConfig(path="someone/gsm8k-like", subset="main", split="train[1:4]", prompt_field="question")
    table = read_rows(cfg, progress=lambda *a: progress.append(a), log=logged.append)
    assert [r["question"] for r in table.rows] == ["train 1 + 1?", "train 2 + 1?", "train 3 + 1?"]
    assert table.rows[0]["answer"] == "1 plus one\n#### 2"
    assert table.where(0) == "someone/gsm8k-like train[1:4] row 2"
    assert len(logged) == 1 and "downloading dataset someone/gsm8k-like from the Hugging Face hub" in logged[0]
    assert progress and progress[-1][0] == progress[-1][1] > 0 and "someone/gsm8k-like" in progress[-1][3]
    assert any(path.endswith("main/train-00000-of-00001.jsonl") for _, path in hub.requests)

    # later runs read the cache: no request, no announcement, even with the network gone
    hub.close()
    requests = len(hub.requests)

    def refuse(*args, **kwargs):
        raise AssertionError("the data loader tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    logged.clear()
    ps = PromptSet.load(DataConfig(path="someone/gsm8k-like", subset="socratic", prompt_field="question"),
                        TOK, seed=0, table=read_rows(DataConfig(path="someone/gsm8k-like", subset="socratic",
                                                                prompt_field="question"), log=logged.append))
    assert texts(ps) == ["socratic 0 + 1?", "socratic 1 + 1?"] and logged == []
    assert ps.prompts[1].columns == {"answer": "1 plus one\n#### 2"}
    assert len(hub.requests) == requests


def test_hub_dataset_unknown_subset_or_split_is_one_line(hub):
    msg = one_line_error("someone/gsm8k-like", subset="mian", prompt_field="question")
    assert "no subset 'mian'" in msg and "main" in msg and "socratic" in msg
    msg = one_line_error("someone/gsm8k-like", subset="main", split="validation", prompt_field="question")
    assert "no split 'validation' (splits: train, test)" in msg


def test_hub_dataset_not_on_the_hub_is_one_line(hub):
    msg = one_line_error("someone/not-there")
    assert msg.startswith("someone/not-there: cannot download the dataset from the Hugging Face hub")
    assert "no such dataset on the hub" in msg


def test_uncached_hub_dataset_offline_is_one_line(hub_cache, monkeypatch, no_network):
    import huggingface_hub.constants as hconst

    monkeypatch.setattr(hconst, "HF_HUB_OFFLINE", True)
    msg = one_line_error("nobody-here/not-a-cached-dataset")
    assert "nobody-here/not-a-cached-dataset: not a file, and not in the local Hugging Face cache" in msg
    assert "HF_HUB_OFFLINE" in msg


def test_hub_snapshot_in_the_cache_loads_offline(hub_cache, no_network):
    """A repository fetched with `hf download --repo-type dataset` (the hub cache layout) is read
    without the network."""
    snapshot = hub_cache / "hub" / "datasets--someone--toy" / "snapshots" / ("b" * 40)
    for name, body in gsm8k_files().items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(body)
    (hub_cache / "hub" / "datasets--someone--toy" / "refs").mkdir()
    (hub_cache / "hub" / "datasets--someone--toy" / "refs" / "main").write_text("b" * 40)
    ps = load("someone/toy", subset="main", split="test[-2:]", prompt_field="question")
    assert texts(ps) == ["test 1 + 1?", "test 2 + 1?"]


def test_split_slices_a_file_and_keeps_line_numbers(tmp_path):
    from tui_trainer.data import read_rows

    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    assert texts(load(path, split="train[:2]")) == TEXTS[:2]
    assert texts(load(path, split="train[-40%:]")) == TEXTS[3:]
    assert [p.index for p in load(path, split="train[3:]").prompts] == [0, 1]
    assert read_rows(DataConfig(path=str(path), split="train[3:]")).where(1) == f"{path} line 5"
    assert "a single file is the split 'train'" in one_line_error(path, split="test")
    assert "is not a split like train" in one_line_error(path, split="train[:x]")
    assert "a file has no subsets" in one_line_error(path, subset="main")


def test_saved_dataset_split_slice(tmp_path, no_network):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"q": ["a", "b"], "answer": ["1", "2"]}),
                 "test": Dataset.from_dict({"q": ["c", "d", "e"], "answer": ["3", "4", "5"]})}) \
        .save_to_disk(str(tmp_path / "dd"))
    ps = load(tmp_path / "dd", prompt_field="q", split="test[1:]+train[:1]")
    assert texts(ps) == ["d", "e", "a"]
    assert [p.columns for p in ps.prompts] == [{"answer": "4"}, {"answer": "5"}, {"answer": "1"}]


def test_required_columns_name_the_judge_and_the_row(tmp_path):
    from tui_trainer.data import read_rows, require_columns

    rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?"}, {"question": "3+3?", "answer": None}]
    table = read_rows(DataConfig(path=str(write_jsonl(tmp_path / "g.jsonl", rows))))
    require_columns(table, "question", {"answer": ()})
    with pytest.raises(DataError) as info:
        require_columns(table, "question", {"answer": ("answer",)})
    assert str(info.value) == (f"{tmp_path / 'g.jsonl'} line 2: no 'answer' value, which judge answer needs "
                               "(2 of 3 rows lack it)")
    with pytest.raises(DataError) as info:
        require_columns(table, "question", {"grader": ("solution",)})
    assert str(info.value) == f"{tmp_path / 'g.jsonl'}: no column 'solution', which judge grader needs (columns: answer)"


# ----------------------------------------------------------------------------- fields + chat

def test_messages_rows_are_used(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                      {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]},
    ]
    ps = load(write_jsonl(tmp_path / "m.jsonl", rows), system_prompt="SYS")
    assert texts(ps) == ["hi", "q2"]
    # trailing assistant turn dropped, system prompt added where missing, kept where present
    assert TOK.decode(ps.prompts[0].ids) == "<system>SYS<user>hi<assistant>"
    assert TOK.decode(ps.prompts[1].ids) == "<system>S<user>q1<assistant>a1<user>q2<assistant>"


def test_prompt_field_holding_messages(tmp_path):
    rows = [{"conv": [{"role": "user", "content": "x?"}]}]
    ps = load(write_jsonl(tmp_path / "m.jsonl", rows), prompt_field="conv")
    assert TOK.decode(ps.prompts[0].ids) == "<user>x?<assistant>"


def test_chat_template_off_encodes_plain_text(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS[:1])
    assert load(path, chat_template=False).prompts[0].ids == TOK.encode("question 0")
    assert load(path, chat_template=False, system_prompt="Be brief.").prompts[0].ids == \
        TOK.encode("Be brief.\n\nquestion 0")
    assert TOK.decode(load(path).prompts[0].ids) == "<user>question 0<assistant>"


def test_real_chat_template(smol_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 2+2?"}])
    ids = load(path, tokenizer=smol_tokenizer, system_prompt="Answer in one word.").prompts[0].ids
    text = smol_tokenizer.decode(ids)
    assert text == ("<|im_start|>system\nAnswer in one word.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    plain = load(path, tokenizer=smol_tokenizer, chat_template=False).prompts[0].ids
    assert plain == smol_tokenizer.encode("What is 2+2?")


# ----------------------------------------------------------------------------- errors

def one_line_error(*args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def test_missing_file(tmp_path):
    msg = one_line_error(tmp_path / "nope.jsonl")
    assert "nope.jsonl: no such file" in msg


def test_empty_data(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    assert "no prompts" in one_line_error(tmp_path / "e.jsonl")
    (tmp_path / "e.json").write_text("[]")
    assert "no prompts" in one_line_error(tmp_path / "e.json")
    (tmp_path / "e.csv").write_text("")
    assert "no prompts" in one_line_error(tmp_path / "e.csv")


def test_missing_field_names_field_and_fields(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "q", "answer": "a"}])
    msg = one_line_error(path)
    assert "p.jsonl line 1" in msg and "no field 'prompt'" in msg and "fields: question, answer" in msg


def test_missing_parquet_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a"], "label": [1]}), tmp_path / "p.parquet")
    assert "no field 'prompt' (fields: text, label)" in one_line_error(tmp_path / "p.parquet")


def test_too_long_prompt_names_row_and_length(tmp_path):
    rows = [{"prompt": "short"}, {"prompt": "x" * 40}, {"prompt": "ok"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    msg = one_line_error(path, chat_template=False, max_prompt_tokens=10)
    assert "line 2" in msg and "40 tokens" in msg and "10" in msg
    ps = load(path, chat_template=False, max_prompt_tokens=10, drop_long=True)
    assert texts(ps) == ["short", "ok"] and ps.dropped == 1
    assert "every prompt" in one_line_error(path, chat_template=False, max_prompt_tokens=1, drop_long=True)


@pytest.mark.parametrize("name,content,needle", [
    ("bad.jsonl", '{"prompt": "a"}\n{"prompt": \n', "bad.jsonl line 2: not valid JSON"),
    ("obj.json", '{"prompt": "a"}', "expected a JSON list"),
    ("p.xml", "<a/>", "unsupported file type '.xml'"),
    ("blank.jsonl", '{"prompt": "  "}\n', "line 1: the prompt is empty"),
    ("num.jsonl", '{"prompt": 5}\n', "line 1: the prompt must be text or a messages list"),
    ("list.jsonl", '[1, 2]\n', "line 1: expected an object or a string, got list"),
    ("noturn.jsonl", '{"messages": [{"role": "assistant", "content": "x"}]}\n', "no user turn"),
])
def test_malformed_data(tmp_path, name, content, needle):
    (tmp_path / name).write_text(content)
    assert needle in one_line_error(tmp_path / name)


def test_tokenizer_without_chat_template(tmp_path):
    class Plain:
        def encode(self, text):
            return [1, 2]

    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    assert "no chat template" in one_line_error(path, tokenizer=Plain())
    assert load(path, tokenizer=Plain(), chat_template=False).prompts[0].ids == [1, 2]


# ----------------------------------------------------------------------------- order + resume

def make_set(n=10, seed=0, shuffle=True) -> PromptSet:
    return PromptSet([Prompt(str(i), [i]) for i in range(n)], seed=seed, shuffle=shuffle)


def draw(ps: PromptSet, n: int) -> list[str]:
    return [p.text for p in ps.next_batch(n)]


def test_order_is_deterministic_per_seed():
    assert draw(make_set(seed=1), 10) == draw(make_set(seed=1), 10)
    assert draw(make_set(seed=1), 10) != draw(make_set(seed=2), 10)


def test_each_epoch_is_a_fresh_permutation():
    ps = make_set(seed=3)
    first, second = draw(ps, 10), draw(ps, 10)
    assert sorted(first) == sorted(second) == sorted(str(i) for i in range(10))
    assert first != second
    assert ps.epoch == 1


def test_no_shuffle_keeps_source_order(tmp_path):
    ps = load(write_jsonl(tmp_path / "p.jsonl", ROWS), shuffle=False)
    assert draw(ps, 7) == TEXTS + TEXTS[:2]


def test_next_batch_wraps_across_epochs():
    ps = make_set(n=4, seed=5)
    got = draw(ps, 3) + draw(ps, 3) + draw(ps, 3)
    ref = make_set(n=4, seed=5)
    assert got == draw(ref, 4) + draw(ref, 4) + draw(ref, 1)
    assert len(draw(make_set(n=4), 9)) == 9  # a batch larger than the data


def test_seed_changes_the_order_of_loaded_data(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(30)])
    assert draw(load(path, seed=0), 30) != draw(load(path, seed=1), 30)


def test_state_resumes_exactly():
    ps = make_set(n=7, seed=11)
    draw(ps, 3)
    draw(ps, 5)  # into the second epoch
    saved = json.loads(json.dumps(ps.state()))  # survives a JSON checkpoint
    expected = [draw(ps, 4) for _ in range(4)]
    resumed = make_set(n=7, seed=999)  # the saved seed wins
    resumed.set_state(saved)
    assert [draw(resumed, 4) for _ in range(4)] == expected


def test_state_from_other_data_is_refused():
    saved = make_set(n=7).state()
    with pytest.raises(DataError, match="7 prompts, the data now has 8"):
        make_set(n=8).set_state(saved)
    other = PromptSet([Prompt(str(i), [i + 100]) for i in range(7)])
    with pytest.raises(DataError, match="prompts differ"):
        other.set_state(saved)
    with pytest.raises(DataError, match="malformed"):
        make_set(n=7).set_state({"epoch": 0})


# ----------------------------------------------------------------------------- embedded set

def test_embedded_set(smol_tokenizer):
    ps = load(None, tokenizer=smol_tokenizer, max_prompt_tokens=128)
    assert ps.source == "embedded prompts"
    assert len(ps) >= 200
    assert len(set(texts(ps))) == len(ps)  # no duplicates
    lengths = [len(p.ids) for p in ps.prompts]
    assert max(lengths) <= 128
    first = ps.prompts[0]
    assert smol_tokenizer.decode(first.ids).endswith(f"<|im_start|>user\n{first.text}<|im_end|>\n"
                                                     "<|im_start|>assistant\n")


def test_embedded_prompts_are_varied():
    rows = [json.loads(line) for line in embedded_prompts_path().read_text().splitlines() if line.strip()]
    assert all(set(r) == {"prompt"} for r in rows)
    prompts = [r["prompt"] for r in rows]
    assert sum("yes or no" in p.lower() for p in prompts) >= 10
    assert sum(p.lower().startswith(("list", "name")) for p in prompts) >= 10
    assert sum(any(c.isdigit() for c in p) for p in prompts) >= 15
    assert sum(p.lower().startswith(("rewrite", "make this", "fix", "correct")) for p in prompts) >= 10


def test_embedded_prompts_ship_in_the_built_package(tmp_path):
    """Build the package the way a wheel does (setuptools build_py on a copy of the sources) and
    read the prompts through importlib.resources from the built tree, with site-packages off."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "tui_trainer", src / "tui_trainer",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    lib = tmp_path / "lib"
    build = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                            "--build-lib", str(lib)], cwd=src, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    assert (lib / "tui_trainer" / "data" / "prompts.jsonl").is_file()
    probe = ("import json, types, tui_trainer; from tui_trainer.data import read_rows, embedded_prompts_path;"
             "rows = read_rows(types.SimpleNamespace(path=None, prompt_field='prompt', split='train')).rows;"
             "print(json.dumps([tui_trainer.__file__, len(rows), rows[0]]))")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(lib)
    out = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    where, count, first = json.loads(out.stdout)
    assert Path(where).is_relative_to(lib)  # the built copy, not the source tree
    assert count >= 200 and "prompt" in first
