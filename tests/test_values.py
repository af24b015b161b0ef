"""The one coercer behind config keys and judge options (tui_trainer.values)."""

import pytest

from tui_trainer.errors import ConfigError
from tui_trainer.plugins import Option
from tui_trainer.plugins.options import coerce
from tui_trainer.values import WrongValue, convert


@pytest.mark.parametrize(("value", "tp", "text", "expected"), [
    ("1e-5", float, False, 1e-5),          # YAML 1.1 leaves 1e-5 a string
    ("3", int, False, 3),
    (4.0, int, False, 4),
    (None, int | None, False, None),
    (["a"], list[str], False, ["a"]),
    ("yes", bool, True, True),
    ("off", bool, True, False),
    ("a, b", list, True, ["a", "b"]),
    ('["a", 2]', list, True, ["a", 2]),
    ('{"k": 1}', dict, True, {"k": 1}),
    (3, str, True, "3"),
])
def test_convert_accepts(value, tp, text, expected):
    assert convert(value, tp, text=text) == expected


@pytest.mark.parametrize(("value", "tp", "text", "message"), [
    ("yes", bool, False, "expected true or false, got str 'yes'"),
    (30.5, int, False, "expected an integer, got float 30.5"),
    (True, int, True, "expected an integer, got bool True"),
    (12, str, False, "expected text, got int 12"),
    (12, str | None, False, "expected text or null, got int 12"),
    ("nan", float, True, "expected a finite number, got 'nan'"),
    ([1, "x"], list[int], False, "expected an integer, got str 'x'"),
    ("{not json", dict, True, "expected a mapping, got str '{not json'"),
])
def test_convert_refuses_with_the_reason(value, tp, text, message):
    with pytest.raises(WrongValue) as info:
        convert(value, tp, text=text)
    assert str(info.value) == message


def test_config_and_judge_options_read_text_the_same_way(tmp_path):
    from tui_trainer.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("steps: '7'\nbeta: '2e-2'\n")
    cfg = load_config(path)
    assert (cfg.steps, cfg.beta) == (7, 0.02)
    assert coerce(Option("n", int, 1), "7", "j") == 7
    assert coerce(Option("x", float, 1.0), "2e-2", "j") == 0.02
    with pytest.raises(ConfigError, match="judge j: option n must be int, got 'seven'"):
        coerce(Option("n", int, 1), "seven", "j")
