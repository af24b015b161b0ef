"""Find judge plugins, register their judges, and build the judge set for a run.

Plugins are loaded one entry point at a time (group ``tui_trainer.judges``), so a
plugin that fails to import or to register is recorded as ``broken`` with a
one-line error while the others load. ``TUI_TRAINER_DISABLE_PLUGINS=name,...``
skips plugins by entry point name (status ``disabled``).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pluggy

from tui_trainer.config import judge_specs
from tui_trainer.errors import ConfigError, TrainerError
from tui_trainer.plugins.hookspecs import ENTRY_POINT_GROUP, KINDS, PROJECT, JudgeSpecs, Option
from tui_trainer.plugins.judge import JudgeContext, one_line
from tui_trainer.plugins.judgeset import MAX_ABS_SCORE, MAX_CONSECUTIVE_FAILURES, JudgeSet, Member
from tui_trainer.plugins.options import resolve

DISABLE_ENV = "TUI_TRAINER_DISABLE_PLUGINS"
BUILTIN = "builtin"
BUILTIN_MODULE = "tui_trainer.plugins.builtin"

__all__ = [
    "JudgeInfo", "PluginRecord", "JudgeRegistry", "get_plugin_manager", "load_plugins",
    "build_judge_set", "JudgeSet",
]


@dataclass(frozen=True)
class JudgeInfo:
    name: str
    factory: Callable[..., Any]
    description: str
    options: tuple[Option, ...]
    kind: str
    plugin: str

    @property
    def pointwise(self) -> bool:
        return self.kind in ("pointwise", "both")

    @property
    def pairwise(self) -> bool:
        return self.kind in ("pairwise", "both")


@dataclass
class PluginRecord:
    """One entry point: ``status`` is ok, broken or disabled; ``error`` is one line."""

    name: str
    version: str
    judges: list[str] = field(default_factory=list)
    status: str = "ok"
    error: str = ""
    value: str = ""  # the entry point's target, e.g. "pkg.module"


class JudgeRegistry:
    """The loaded plugins and the judges they registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(JudgeSpecs)
        self.plugins: list[PluginRecord] = []
        self.judges: dict[str, JudgeInfo] = {}

    def get(self, name: str) -> JudgeInfo:
        info = self.judges.get(name)
        if info is not None:
            return info
        known = ", ".join(sorted(self.judges)) or "none"
        close = difflib.get_close_matches(name, list(self.judges), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        msg = f"unknown judge {name!r}{hint} (available: {known})"
        broken = [p for p in self.plugins if p.status == "broken"]
        if broken:
            msg += "; broken plugins: " + ", ".join(f"{p.name} ({p.error})" for p in broken)
        raise ConfigError(msg)

    def create(self, name: str, options: dict[str, Any] | None, context: JudgeContext) -> Any:
        """Build judge ``name`` with ``options`` checked against its declared options."""
        info = self.get(name)
        resolved = resolve(info.options, options, name)
        try:
            judge = info.factory(resolved, context)
        except TrainerError:
            raise
        except Exception as exc:  # a plugin's own error while building its judge
            raise ConfigError(f"judge {name}: could not be created: {one_line(exc)}") from None
        for method in (("score",) if info.kind == "pointwise" else ("compare",) if info.kind == "pairwise"
                       else ("score", "compare")):
            if not callable(getattr(judge, method, None)):
                raise ConfigError(f"judge {name} is registered as {info.kind} but has no {method}() method")
        return judge

    # -- loading -------------------------------------------------------------------

    def add_plugin(self, name: str, obj: Any, version: str, value: str = "") -> PluginRecord:
        """Register ``obj`` (a module or object implementing the hook) as plugin ``name``."""
        record = PluginRecord(name=name, version=version, value=value)
        self.plugins.append(record)
        staged: dict[str, JudgeInfo] = {}

        def register(judge_name: str, factory: Callable[..., Any], *, description: str = "",
                     options: Iterable[Option] = (), kind: str = "pointwise") -> None:
            if not isinstance(judge_name, str) or not judge_name.strip() or any(c.isspace() for c in judge_name):
                raise ValueError(f"judge name must be a non-empty word, got {judge_name!r}")
            if not callable(factory):
                raise TypeError(f"judge {judge_name}: factory is not callable")
            if kind not in KINDS:
                raise ValueError(f"judge {judge_name}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
            opts = tuple(options)
            if not all(isinstance(o, Option) for o in opts):
                raise TypeError(f"judge {judge_name}: options must be Option(...) objects")
            if judge_name in staged or judge_name in self.judges:
                owner = staged[judge_name].plugin if judge_name in staged else self.judges[judge_name].plugin
                raise ValueError(f"judge {judge_name!r} is already registered by plugin {owner}")
            staged[judge_name] = JudgeInfo(judge_name, factory, str(description).strip().splitlines()[0]
                                           if str(description).strip() else "", opts, kind, name)

        try:
            self.pm.register(obj, name=name)
        except Exception as exc:
            return _broken(record, f"invalid plugin: {one_line(exc)}")
        impls = [i for i in self.pm.hook.register_judges.get_hookimpls() if i.plugin is obj]
        if not impls:
            self.pm.unregister(obj)
            return _broken(record, "implements no register_judges hook")
        try:
            for impl in impls:
                impl.function(register=register)
        except Exception as exc:
            self.pm.unregister(obj)
            return _broken(record, f"register_judges failed: {one_line(exc)}")
        self.judges.update(staged)
        record.judges = list(staged)
        return record


def load_plugins(entry_points: Iterable[md.EntryPoint] | None = None,
                 disabled: Iterable[str] | None = None) -> JudgeRegistry:
    """Load every plugin of the ``tui_trainer.judges`` group, each on its own.

    ``entry_points`` and ``disabled`` default to the installed entry points and
    ``$TUI_TRAINER_DISABLE_PLUGINS``. The built-in judges load even when this
    package is not installed (a source checkout), unless disabled.
    """
    if entry_points is None:
        entry_points = md.entry_points(group=ENTRY_POINT_GROUP)
    if disabled is None:
        disabled = os.environ.get(DISABLE_ENV, "").split(",")
    off = {d.strip() for d in disabled if d.strip()}
    reg = JudgeRegistry()
    seen: set[str] = set()
    eps = sorted(entry_points, key=lambda ep: (ep.name != BUILTIN, ep.name))
    if not any(ep.name == BUILTIN for ep in eps):
        eps.insert(0, md.EntryPoint(BUILTIN, BUILTIN_MODULE, ENTRY_POINT_GROUP))
    for ep in eps:
        if ep.name in seen:  # the same distribution seen twice on sys.path
            continue
        seen.add(ep.name)
        version = _version(ep)
        if ep.name in off:
            reg.plugins.append(PluginRecord(ep.name, version, status="disabled", value=ep.value,
                                            error=f"disabled by {DISABLE_ENV}"))
            continue
        try:
            obj = ep.load()
        except BaseException as exc:  # noqa: BLE001  an import may even sys.exit()
            if isinstance(exc, KeyboardInterrupt):
                raise
            reg.plugins.append(PluginRecord(ep.name, version, status="broken", value=ep.value,
                                            error=f"import failed: {one_line(exc)}"))
            continue
        reg.add_plugin(ep.name, obj, version, ep.value)
    return reg


_cached: JudgeRegistry | None = None
_cache_lock = threading.Lock()


def get_plugin_manager(refresh: bool = False) -> JudgeRegistry:
    """The process-wide registry (loaded on first use; ``refresh=True`` reloads)."""
    global _cached
    with _cache_lock:
        if _cached is None or refresh:
            _cached = load_plugins()
        return _cached


def _broken(record: PluginRecord, error: str) -> PluginRecord:
    record.status = "broken"
    record.error = error
    record.judges = []
    return record


def _version(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is not None:
        try:
            return dist.version or ""
        except Exception:  # noqa: BLE001  a malformed METADATA file
            return ""
    if ep.name == BUILTIN:
        try:
            return md.version("tui-trainer")
        except md.PackageNotFoundError:
            return ""
    return ""


def import_object(path: str) -> Any:
    """``"pkg.mod:func"``, ``"pkg.mod.func"`` or ``"path/to/file.py:func"`` -> the object;
    ConfigError when missing."""
    if ":" in path:
        module_name, _, attr = path.rpartition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{path!r} is not a dotted path like pkg.module:function")
    if module_name.endswith(".py"):
        module = _import_file(Path(module_name).expanduser(), path)
    else:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"cannot import {module_name} for {path!r}: {one_line(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{module_name} has no attribute {attr!r} (from {path!r})")
        obj = getattr(obj, part)
    return obj


def _import_file(file: Path, path: str) -> Any:
    """The module of a Python file named in ``path`` (``file.py:func``), imported once."""
    import importlib.util
    import sys

    if not file.is_file():
        raise ConfigError(f"{file}: no such file (from {path!r})")
    name = f"tui_trainer_user.{file.stem}_{abs(hash(str(file.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001  a user's file may raise anything, even SystemExit
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ConfigError(f"cannot import {file} for {path!r}: {one_line(exc)}") from None
    return module


def build_judge_set(specs: Iterable[Any], prompter: Any = None, run_dir: str | os.PathLike | None = None,
                    failure: str = "drop", retries: int = 2, timeout: float | None = 120.0,
                    log: Callable[[str], None] | None = None, *, seed: int = 0,
                    registry: JudgeRegistry | None = None,
                    max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES,
                    max_abs_score: float | None = MAX_ABS_SCORE, extra: dict[str, Any] | None = None) -> JudgeSet:
    """The judges of a run from ``cfg.judges`` (JudgeSpec objects or dicts with name,
    weight, options). Raises ConfigError for an unknown judge or a bad option.
    ``extra``: facts of the run every judge's context carries (``model``: the policy's model)."""
    specs = judge_specs(list(specs))
    reg = registry if registry is not None else get_plugin_manager()
    log = log or (lambda message: None)
    members: list[Member] = []
    counts: dict[str, int] = {}
    try:
        for i, spec in enumerate(specs):
            name, weight, options = spec.name, spec.weight, spec.options
            counts[name] = counts.get(name, 0) + 1
            key = name if counts[name] == 1 else f"{name}_{counts[name]}"
            context = JudgeContext(name=key, run_dir=Path(run_dir) if run_dir is not None else None,
                                   prompter=prompter, log=log, seed=seed + i, extra=dict(extra or {}))
            judge = reg.create(name, options, context)
            members.append(Member(key, reg.get(name), judge, weight, context,
                                  interactive=bool(getattr(judge, "interactive", False))))
        return JudgeSet(members, failure=failure, retries=retries, timeout=timeout, log=log,
                        max_consecutive_failures=max_consecutive_failures, max_abs_score=max_abs_score)
    except BaseException:
        JudgeSet.close_members(members)
        raise
