"""Check and coerce judge options against the options a judge declared.

Values come from YAML (already typed) or from the command line (strings), so a
string is converted to the declared type: ``"3"`` -> 3, ``"yes"`` -> True,
``'["a", "b"]'`` or ``"a,b"`` -> a list, ``'{"k": 1}'`` -> a dict.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

from tui_trainer.errors import ConfigError
from tui_trainer.plugins.hookspecs import Option

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def coerce(option: Option, value: Any, judge: str) -> Any:
    """``value`` converted to ``option.type``; raises ConfigError with one line."""
    if value is None:
        return None
    where = f"judge {judge}: option {option.name}"
    t = option.type
    try:
        if t is bool:
            out = _to_bool(value)
        elif t is int:
            out = _to_int(value)
        elif t is float:
            out = _to_float(value)
        elif t is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            out = str(value)
        elif t is list:
            out = _to_list(value)
        else:
            out = _to_dict(value)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ConfigError(f"{where} must be {t.__name__}, got {value!r}") from None
    if option.choices is not None and out not in option.choices:
        allowed = ", ".join(str(c) for c in option.choices)
        raise ConfigError(f"{where} must be one of {allowed}, got {value!r}")
    return out


def resolve(options: Iterable[Option], raw: dict[str, Any] | None, judge: str) -> dict[str, Any]:
    """Every declared option, with ``raw``'s values (aliases accepted) or defaults."""
    declared = list(options)
    by_name: dict[str, Option] = {}
    for opt in declared:
        by_name[opt.name] = opt
        for alias in opt.aliases:
            by_name[alias] = opt
    out = {opt.name: opt.default for opt in declared}
    seen: dict[str, str] = {}
    for key, value in (raw or {}).items():
        opt = by_name.get(str(key))
        if opt is None:
            known = ", ".join(o.name for o in declared) or "none"
            raise ConfigError(f"judge {judge}: unknown option {key!r} (options: {known})")
        if opt.name in seen and seen[opt.name] != key:
            raise ConfigError(f"judge {judge}: option {opt.name} given twice (as {seen[opt.name]} and {key})")
        seen[opt.name] = str(key)
        out[opt.name] = coerce(opt, value, judge)
    return out


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["k=v", ...]`` from the command line into a dict (values stay strings)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option needs KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise ValueError


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise ValueError


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        out = float(value.strip())
    else:
        raise ValueError
    if math.isnan(out):
        raise ValueError
    return out


def _to_list(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            parsed = json.loads(text)
            if not isinstance(parsed, list):
                raise ValueError
            return parsed
        return [part.strip() for part in text.split(",") if part.strip()]
    raise ValueError


def _to_dict(value: Any) -> dict:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str):
        parsed = json.loads(value)
        if isinstance(parsed, dict):
            return parsed
    raise ValueError
