"""The rules judge: each component, weights, the dotted-path callable, bad options."""

from __future__ import annotations

import sys

import pytest

from tui_trainer.errors import ConfigError
from tui_trainer.plugins.manager import build_judge_set, load_plugins

REG = load_plugins(entry_points=[], disabled=[])


def score(options, completions, prompts=None, weight=1.0):
    js = build_judge_set([{"name": "rules", "options": options, "weight": weight}], registry=REG)
    prompts = prompts or ["p"] * len(completions)
    return js.score(prompts, completions).scores


def test_length_target_in_words_with_tolerance():
    opts = {"target_length": 10, "length_tolerance": 2}
    s = score(opts, ["w " * 10, "w " * 12, "w " * 15, "w " * 25, ""])
    assert s == pytest.approx([1.0, 1.0, 0.7, 0.0, 0.2])


def test_length_in_chars():
    assert score({"target_length": 4, "length_unit": "chars"}, ["abcd", "ab", "abcdefgh"]) == \
        pytest.approx([1.0, 0.5, 0.0])


def test_default_rule_is_a_length_target_of_20_words():
    s = score({}, ["w " * 20, "w " * 24, "w " * 35])
    assert s == pytest.approx([1.0, 1.0, 0.5])


def test_keywords_present_and_absent_are_whole_words_case_insensitive():
    s = score({"require": ["Paris", "capital"]}, ["The capital is PARIS.", "Paris!", "Parisian capitals"])
    assert s == pytest.approx([1.0, 0.5, 0.0])
    s = score({"forbid": ["sorry", "as an ai"]}, ["Sure.", "Sorry, as an AI I can't", "sorry"])
    assert s == pytest.approx([1.0, 0.0, 0.5])


def test_regex_mode_and_case_sensitivity():
    s = score({"require": [r"\d{3}-\d{4}"], "regex": True}, ["call 555-1234", "call me"])
    assert s == [1.0, 0.0]
    s = score({"require": ["Paris"], "ignore_case": False}, ["paris", "Paris"])
    assert s == [0.0, 1.0]


def test_valid_json_with_or_without_a_fence():
    s = score({"json": True}, ['{"a": 1}', '```json\n[1, 2]\n```', "{'a': 1}", "", "yes"])
    assert s == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_callable_by_dotted_path_both_spellings(tmp_path, monkeypatch):
    (tmp_path / "my_reward.py").write_text(
        "def overlap(prompt, completion):\n"
        "    return len(set(prompt.split()) & set(completion.split())) / 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for path in ("my_reward:overlap", "my_reward.overlap"):
        s = score({"callable": path}, ["a b c", "x"], prompts=["a b", "a b"])
        assert s == [1.0, 0.0]
    sys.modules.pop("my_reward", None)


def test_components_combine_with_weights():
    opts = {"require": ["yes"], "json": True, "weights": {"require": 3, "json": 1}}
    assert score(opts, ['"yes"', "yes", "{}"]) == pytest.approx([1.0, 0.75, 0.25])


def test_judge_weight_scales_the_total():
    assert score({"json": True}, ["{}"], weight=2.5) == [2.5]


@pytest.mark.parametrize("opts, message", [
    ({"callable": "no_such_module_xyz:f"}, "cannot import no_such_module_xyz"),
    ({"callable": "json:nope"}, "has no attribute 'nope'"),
    ({"callable": "justaname"}, "not a dotted path"),
    ({"require": ["("], "regex": True}, "not a valid regex"),
    ({"json": True, "weights": {"jsn": 1}}, "unknown component 'jsn'"),
    ({"json": True, "weights": {"json": 0}}, "must sum to more than 0"),
    ({"length_unit": "pages"}, "must be one of words, chars"),
    ({"target_length": "ten"}, "must be int"),
])
def test_bad_options_are_one_line_config_errors(opts, message):
    with pytest.raises(ConfigError, match=message) as info:
        score(opts, ["x"])
    assert "\n" not in str(info.value)
