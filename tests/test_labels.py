"""labels.jsonl -> `tui-trainer labels export --format dpo`: round trip, ties/skips left out."""

from __future__ import annotations

import json

import pytest

from tui_trainer.cli import main
from tui_trainer.plugins.builtin.labels import append_label, read_labels, to_dpo
from tui_trainer.plugins.judge import Verdict
from tui_trainer.plugins.manager import build_judge_set, load_plugins

REG = load_plugins(entry_points=[], disabled=[])


class Scripted:
    def __init__(self, answers):
        self.answers = list(answers)

    def compare(self, prompt, a, b, *, judge, step):
        # answers are about the completion *content*, whatever the shown order
        want = self.answers.pop(0)
        if want in ("tie", "skip"):
            return Verdict(want)
        return Verdict("a" if a == want else "b")

    def rate(self, prompt, completion, *, judge, step, scale=(0, 9)):
        return 5


PAIRS = [
    ("Capital of France?", "Paris", "Lyon", "Paris"),
    ("2+2?", "5", "4", "4"),
    ("Say hi", "hi", "hello", "tie"),
    ("Colour of grass?", "green", "blue", "skip"),
    ('Quote "this" \\ and\nnewline ünïcode', 'a "quoted"\nline', "plain", 'a "quoted"\nline'),
]


def test_round_trip_through_the_command(tmp_path, capsys):
    run = tmp_path / "run"
    js = build_judge_set([{"name": "human"}], prompter=Scripted([w for *_, w in PAIRS]), run_dir=run,
                         registry=REG)
    for step, (prompt, a, b, _) in enumerate(PAIRS):
        js.compare(prompt, a, b, step=step)
    js.score(["rated prompt"], ["rated completion"], step=9)  # a rating: not a pair

    out = tmp_path / "out" / "dpo.jsonl"
    assert main(["labels", "export", str(run), "--format", "dpo", "-o", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expected = [{"prompt": p, "chosen": w, "rejected": b if w == a else a}
                for p, a, b, w in PAIRS if w not in ("tie", "skip")]
    assert rows == expected
    assert "exported 3 pair(s) of 6 label(s)" in capsys.readouterr().err

    # stdout form gives the same rows
    assert main(["labels", "export", str(run)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == expected


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path, capsys):
    path = tmp_path / "labels.jsonl"
    append_label(path, {"kind": "pairwise", "prompt": "p", "a": "x", "b": "y", "shown": ["b", "a"],
                        "choice": "b"})
    with open(path, "a") as f:
        f.write('{"kind": "pairwise", "prompt": "p", "a": "x", "b"')
    records, bad = read_labels(path)
    assert bad == [2] and len(records) == 1
    assert to_dpo(records) == [{"prompt": "p", "chosen": "y", "rejected": "x"}]
    assert main(["labels", "export", str(path)]) == 0
    err = capsys.readouterr().err
    assert "1 unreadable line(s) skipped" in err and "skipped unreadable line(s) 2" in err


def test_export_replaces_the_output_atomically(tmp_path):
    run = tmp_path / "run"
    append_label(run / "labels.jsonl", {"kind": "pairwise", "prompt": "p", "a": "x", "b": "y",
                                        "shown": ["a", "b"], "choice": "a"})
    out = tmp_path / "dpo.jsonl"
    out.write_text("old content that is much longer than the new content\n" * 20)
    assert main(["labels", "export", str(run), "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == {"prompt": "p", "chosen": "x", "rejected": "y"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpo.jsonl", "run"]  # no temp file left


def test_missing_labels_is_a_one_line_error(tmp_path, capsys):
    assert main(["labels", "export", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tui-trainer: error:") and "no labels file" in err and "\n" not in err


def test_append_is_durable_line_by_line(tmp_path):
    path = tmp_path / "deep" / "labels.jsonl"
    for i in range(3):
        append_label(path, {"i": i})
        # each line is complete on disk as soon as append returns
        assert [json.loads(x)["i"] for x in path.read_text().splitlines()] == list(range(i + 1))
