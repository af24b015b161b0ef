"""One coercer for settings: config keys and judge options both come through ``convert``.

A value is checked against a type annotation (``bool``, ``int``, ``float``, ``str``,
``list`` / ``list[X]``, ``dict`` / ``dict[str, X]``, ``X | None``). Numbers are also read from
numeric text, because YAML 1.1 leaves ``1e-5`` a string. Values typed on a command line
(``--option k=v``) are all text, so with ``text=True`` text also becomes a bool (``yes`` /
``no``), a list (``a,b`` or JSON) or a dict (JSON), and a number becomes text.

A value that does not fit raises ``WrongValue`` whose message reads ``expected an integer, got
str 'ten'``; callers put their own place in front (a config file line, a judge's option).
"""

from __future__ import annotations

import json
import math
import types
import typing
from typing import Any

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


class WrongValue(ValueError):
    """The value does not fit the type; the message says what was expected and what came."""


def short(value: Any) -> str:
    """``repr(value)``, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def type_name(tp: Any) -> str:
    """The type in words: ``an integer``, ``a list of text``, ``a number or null``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(type_name(a) for a in args) + " or null"
    if origin is list or tp is list:
        args = typing.get_args(tp)
        return f"a list of {type_name(args[0])}" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def number(value: Any) -> float | int | None:
    """A number from an int/float, or from text such as "1e-5"; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
    return None


def convert(value: Any, tp: Any, *, text: bool = False, shown: Any = None) -> Any:
    """``value`` as the annotation ``tp``, or ``WrongValue``. None passes for ``X | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return convert(value, args[0], text=text, shown=tp)

    def wrong() -> WrongValue:
        expected = type_name(shown if shown is not None else tp)
        return WrongValue(f"expected {expected}, got {type(value).__name__} {short(value)}")

    if tp is bool:
        if isinstance(value, bool):
            return value
        if text and isinstance(value, int) and value in (0, 1):
            return bool(value)
        if text and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise wrong()
    if tp is int or tp is float:
        n = number(value)
        if n is None:
            raise wrong()
        if not math.isfinite(n):
            raise WrongValue(f"expected a finite number, got {short(value)}")
        if tp is float:
            return float(n)
        if isinstance(n, int):
            return n
        if float(n).is_integer():
            return int(n)
        raise wrong()
    if tp is str:
        if isinstance(value, str):
            return value
        if text and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise wrong()
    if origin is list or tp is list:
        if text and isinstance(value, str):
            value = _list_from_text(value)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise wrong()
        args = typing.get_args(tp)
        return [convert(item, args[0], text=text) for item in value] if args else list(value)
    if origin is dict or tp is dict:
        if text and isinstance(value, str):
            value = _json(value)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise wrong()
        return dict(value)
    raise wrong()


def _list_from_text(value: str) -> Any:
    stripped = value.strip()
    if stripped.startswith("["):
        return _json(stripped)
    return [part.strip() for part in stripped.split(",") if part.strip()]


def _json(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
