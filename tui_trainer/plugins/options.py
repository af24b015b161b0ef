"""Check and coerce judge options against the options a judge declared.

Values come from YAML (already typed) or from the command line (strings), so a
string is converted to the declared type: ``"3"`` -> 3, ``"yes"`` -> True,
``'["a", "b"]'`` or ``"a,b"`` -> a list, ``'{"k": 1}'`` -> a dict. The conversion is
tui_trainer.values.convert, the same one config keys use.
"""

from __future__ import annotations

from typing import Any, Iterable

from tui_trainer.errors import ConfigError
from tui_trainer.plugins.hookspecs import Option
from tui_trainer.values import WrongValue, convert


def coerce(option: Option, value: Any, judge: str) -> Any:
    """``value`` converted to ``option.type`` by the one coercer (command-line text accepted);
    raises ConfigError with one line."""
    if value is None:
        return None
    where = f"judge {judge}: option {option.name}"
    try:
        out = convert(value, option.type, text=True)
    except WrongValue:
        raise ConfigError(f"{where} must be {option.type.__name__}, got {value!r}") from None
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


def parse_assignments(items: Iterable[str], what: str = "--option") -> dict[str, str]:
    """``["k=v", ...]`` from the command line into a dict (values stay strings)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} needs KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out
