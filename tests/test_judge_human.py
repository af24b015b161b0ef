"""The human judge: shown order randomised and mapped back, every verdict in labels.jsonl,
and the console prompter's keys."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from tui_trainer.errors import ConfigError
from tui_trainer.plugins.builtin.human import ConsolePrompter
from tui_trainer.plugins.judge import JudgeFailure, Verdict
from tui_trainer.plugins.manager import build_judge_set, load_plugins

REG = load_plugins(entry_points=[], disabled=[])


class PicksLonger:
    """A person who always prefers the longer completion, and rates by length."""

    def __init__(self):
        self.shown = []

    def compare(self, prompt, a, b, *, judge, step):
        self.shown.append((a, b))
        return Verdict("a" if len(a) > len(b) else "b")

    def rate(self, prompt, completion, *, judge, step, scale=(0, 9)):
        if completion == "skip me":
            return None
        return min(scale[1], len(completion))


def human_set(tmp_path, prompter, **options):
    return build_judge_set([{"name": "human", "options": options}], prompter=prompter, run_dir=tmp_path,
                           registry=REG, seed=3)


def read(tmp_path):
    return [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]


def test_shown_order_is_random_and_mapped_back(tmp_path):
    p = PicksLonger()
    js = human_set(tmp_path, p)
    verdicts = [js.compare("q", "a much longer answer", "short", step=s) for s in range(20)]
    # the answer always maps back to the longer completion, whatever order it was shown in
    assert verdicts == [Verdict("a")] * 20
    firsts = {shown[0] for shown in p.shown}
    assert firsts == {"a much longer answer", "short"}  # both orders happened
    labels = read(tmp_path)
    assert len(labels) == 20
    for rec, shown, step in zip(labels, p.shown, range(20)):
        assert rec["choice"] == "a" and rec["kind"] == "pairwise" and rec["step"] == step
        assert rec["a"] == "a much longer answer" and rec["b"] == "short" and rec["judge"] == "human"
        assert rec["shown"] == (["a", "b"] if shown[0] == rec["a"] else ["b", "a"])
        assert isinstance(rec["time"], float)


def test_no_shuffle_keeps_the_order(tmp_path):
    p = PicksLonger()
    js = human_set(tmp_path, p, shuffle=False)
    for _ in range(5):
        js.compare("q", "x", "yy")
    assert p.shown == [("x", "yy")] * 5
    assert all(r["shown"] == ["a", "b"] and r["choice"] == "b" for r in read(tmp_path))


def test_ratings_are_scaled_and_skips_are_none(tmp_path):
    js = human_set(tmp_path, PicksLonger())
    res = js.score(["p"] * 3, ["abc", "skip me", "abcdefghijkl"], step=2)
    assert res.scores == pytest.approx([3 / 9, None, 1.0])
    labels = read(tmp_path)
    assert [r["choice"] for r in labels] == ["rate", "skip", "rate"]
    assert [r["rating"] for r in labels] == [3.0, None, 9.0]
    assert labels[0]["kind"] == "rating" and labels[0]["b"] is None and labels[0]["scale"] == [0, 9]


def test_labels_can_be_switched_off(tmp_path):
    js = human_set(tmp_path, PicksLonger(), labels=False)
    js.compare("q", "a", "bb")
    assert not (tmp_path / "labels.jsonl").exists()


def test_human_without_prompter_or_terminal_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(ConfigError, match="needs a person"):
        build_judge_set([{"name": "human"}], run_dir=tmp_path, registry=REG)


def console_prompter(answers: str) -> tuple[ConsolePrompter, io.StringIO]:
    out = io.StringIO()
    return ConsolePrompter(Console(file=out, width=60), stdin=io.StringIO(answers)), out


@pytest.mark.parametrize("key, choice", [("1", "a"), ("a", "a"), ("2", "b"), ("B", "b"),
                                         ("t", "tie"), ("s", "skip")])
def test_console_prompter_keys(key, choice):
    cp, out = console_prompter(f"{key}\n")
    assert cp.compare("What is 2+2?", "four", "[bold]five[/]", judge="human", step=1) == Verdict(choice)
    text = out.getvalue()
    assert "What is 2+2?" in text and "four" in text and "[bold]five[/]" in text  # no markup injection


def test_console_prompter_asks_again_and_rates():
    cp, out = console_prompter("x\n12\n7\n")
    assert cp.rate("p", "c", judge="human", step=0) == 7.0
    assert out.getvalue().count("Please answer") == 2
    cp, _ = console_prompter("s\n")
    assert cp.rate("p", "c", judge="human", step=0, scale=(1, 5)) is None
    cp, _ = console_prompter("0\n6\n5\n")
    assert cp.rate("p", "c", judge="human", step=0, scale=(1, 5)) == 5.0


def test_console_prompter_closed_stdin_stops_the_run():
    cp, _ = console_prompter("")
    with pytest.raises(JudgeFailure, match="standard input is closed"):
        cp.compare("p", "a", "b", judge="human", step=0)


def test_closed_stdin_passes_through_the_judge_set(tmp_path):
    cp, _ = console_prompter("")
    js = human_set(tmp_path, cp)
    with pytest.raises(JudgeFailure, match="standard input is closed"):
        js.compare("p", "a", "b")
