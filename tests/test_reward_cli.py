"""`tui-trainer reward train|eval|score` end to end (main(argv), a tiny random model), and exit
code 2 with one line for bad input."""

from __future__ import annotations

import json
import random

import pytest

from tui_trainer.cli import main

from helpers import make_tiny_model_dir
from test_data import hub_cache  # noqa: F401  (fixture: empty hub and datasets caches)

WORDS = ["cat", "dog", "sun", "tree", "car", "book", "rain", "milk"]


def write_pairs(path, n, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = (" ".join(rng.choice(WORDS) for _ in range(3)) for _ in range(2))
        rows.append({"prompt": f"say {rng.choice(WORDS)}", "chosen": f"{a} yes", "rejected": f"{b} no"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_pairs(root / "pairs.jsonl", 40)
    out = root / "rm"
    code = main(["reward", "train", "--data", str(data), "-o", str(out), "--model", str(tiny_dir),
                 "--epochs", "3", "--lr", "3e-4", "--layers", "-1", "--eval-fraction", "0.25"])
    return code, root, out


def test_train_writes_a_reward_model(trained, capsys):
    code, root, out = trained
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"adapters.safetensors", "adapter_config.json",
                                               "reward_head.safetensors", "reward_config.json"}
    cfg = json.loads((out / "reward_config.json").read_text())
    assert cfg["train"]["final"]["eval_accuracy"] >= 0.9 and cfg["train"]["eval_pairs"] == 10


def test_eval_json_and_score(trained, capsys):
    _, root, out = trained
    held = write_pairs(root / "fresh.jsonl", 16, seed=7)  # pairs never seen in training
    assert main(["reward", "eval", str(out), "--data", str(held), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"accuracy", "margin", "pairs"}
    assert result["pairs"] == 16 and result["accuracy"] >= 0.9 and result["margin"] > 0
    assert main(["reward", "score", str(out), "--prompt", "say cat", "--completion", "tree dog yes", "--raw"]) == 0
    good = float(capsys.readouterr().out)
    assert main(["reward", "score", str(out), "--prompt", "say cat", "--completion", "tree dog no", "--raw"]) == 0
    bad = float(capsys.readouterr().out)
    assert good > bad
    stats = json.loads((out / "reward_config.json").read_text())["score_stats"]
    assert main(["reward", "score", str(out), "--prompt", "say cat", "--completion", "tree dog yes"]) == 0
    assert float(capsys.readouterr().out) == pytest.approx((good - stats["mean"]) / stats["std"], rel=1e-4, abs=1e-5)


def test_train_from_a_run_directory_of_labels(tiny_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    labels = [{"kind": "pairwise", "prompt": "p", "a": "x yes", "b": "y no", "shown": ["b", "a"], "choice": "a"},
              {"kind": "pairwise", "prompt": "p", "a": "z no", "b": "w yes", "shown": ["a", "b"], "choice": "b"},
              {"kind": "pairwise", "prompt": "p", "a": "z", "b": "w", "shown": ["a", "b"], "choice": "tie"}]
    (run / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    out = tmp_path / "rm"
    assert main(["reward", "train", "--data", str(run), "-o", str(out), "--model", str(tiny_dir),
                 "--epochs", "1", "--eval-fraction", "0"]) == 0
    printed = capsys.readouterr().out
    assert "2 preference pair(s)" in printed and "1 tie" in printed and "no held-out pairs" in printed
    assert json.loads((out / "reward_config.json").read_text())["train"]["train_pairs"] == 2


def run_bad(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("tui-trainer: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_exits_2_with_one_line(trained, tiny_dir, tmp_path, capsys):
    _, root, out = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
                   + json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    assert "bad.jsonl line 2: no field 'rejected'" in run_bad(
        ["reward", "train", "--data", str(bad), "-o", str(tmp_path / "x"), "--model", str(tiny_dir)], capsys)
    assert not (tmp_path / "x").exists()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "labels.jsonl").write_text(json.dumps(
        {"kind": "pairwise", "prompt": "p", "a": "x", "b": "y", "shown": ["a", "b"], "choice": "skip"}) + "\n")
    assert "no usable pairs" in run_bad(
        ["reward", "train", "--data", str(run_dir), "-o", str(tmp_path / "x"), "--model", str(tiny_dir)], capsys)
    other = make_tiny_model_dir(tmp_path / "other", seed=3)
    assert "is a different model" in run_bad(
        ["reward", "eval", str(out), "--data", str(root / "pairs.jsonl"), "--model", str(other)], capsys)
    assert "not a reward-model directory" in run_bad(
        ["reward", "score", str(other), "--prompt", "p", "--completion", "c"], capsys)
    assert "not a reward model" in run_bad(
        ["reward", "train", "--data", str(root / "pairs.jsonl"), "-o", str(other), "--model", str(tiny_dir)], capsys)
    assert "no checkpoint to resume from" in run_bad(
        ["reward", "train", "--data", str(root / "pairs.jsonl"), "-o", str(tmp_path / "z"), "--model", str(tiny_dir),
         "--resume"], capsys)
    assert "--epochs: must be >= 1" in run_bad(
        ["reward", "train", "--data", str(root / "pairs.jsonl"), "-o", str(tmp_path / "y"), "--epochs", "0"], capsys)


PREFS_README = """---
configs:
- config_name: default
  data_files:
  - split: train_prefs
    path: data/train_prefs-*
  - split: test_prefs
    path: data/test_prefs-*
---
"""


def test_eval_and_train_read_a_hub_dataset_and_a_saved_one(trained, hub_cache, monkeypatch, tmp_path, capsys):  # noqa: F811
    """A hub id (UltraFeedback-binarized layout: train_prefs / test_prefs splits, message-list replies)
    is downloaded once through the data loader, with --split; a save_to_disk folder reads the same."""
    import datasets
    import huggingface_hub.constants as hconst

    from hub_server import HubServer

    _, root, out = trained
    rows = [json.loads(line) for line in write_pairs(tmp_path / "held.jsonl", 12, seed=7).read_text().splitlines()]
    as_messages = [{"prompt": r["prompt"],
                    "chosen": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}],
                    "rejected": [{"role": "user", "content": r["prompt"]},
                                 {"role": "assistant", "content": r["rejected"]}]} for r in rows]
    body = "".join(json.dumps(r) + "\n" for r in as_messages).encode()
    server = HubServer("someone/prefs", {"README.md": PREFS_README.encode(),
                                         "data/train_prefs-00000-of-00001.jsonl": body[: body.index(b"\n") + 1],
                                         "data/test_prefs-00000-of-00001.jsonl": body})
    monkeypatch.setattr(hconst, "ENDPOINT", server.url)
    monkeypatch.setattr(hconst, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hconst, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        assert main(["reward", "eval", str(out), "--data", str(tmp_path / "held.jsonl"), "--json"]) == 0
        from_file = json.loads(capsys.readouterr().out)
        assert main(["reward", "eval", str(out), "--data", "someone/prefs", "--split", "test_prefs", "--json"]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out) == pytest.approx(from_file, rel=1e-5)
        assert "downloading dataset someone/prefs" in captured.err
        assert main(["reward", "eval", str(out), "--data", "someone/prefs", "--split", "test_prefs[:4]", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["pairs"] == 4
        assert main(["reward", "eval", str(out), "--data", "someone/prefs", "--split", "nope", "--json"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no split 'nope'" in err and "test_prefs" in err
    finally:
        server.close()
    saved = tmp_path / "saved"
    datasets.DatasetDict({"test_prefs": datasets.Dataset.from_list(as_messages)}).save_to_disk(str(saved))
    assert main(["reward", "eval", str(out), "--data", str(saved), "--split", "test_prefs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(from_file, rel=1e-5)
