"""Installed judge plugins: name, version, judges, status, and the error of a broken one.

Also the judge catalogue the setup screen offers (names, descriptions, option
schemas), read from the plugin manager.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tui_trainer.widgets.format import one_line


@dataclass
class OptionInfo:
    name: str
    type: str = ""
    default: Any = None
    help: str = ""

    def brief(self) -> str:
        default = one_line(repr(self.default), 24) if self.default is not None else ""
        bits = [b for b in (self.type, f"default {default}" if default else "") if b]
        return self.name + (f" ({', '.join(bits)})" if bits else "")


@dataclass
class JudgeInfo:
    name: str
    plugin: str = ""
    description: str = ""
    options: list[OptionInfo] = field(default_factory=list)
    kind: str = ""  # pointwise | pairwise | both


@dataclass
class PluginRow:
    name: str
    version: str
    judges: list[JudgeInfo]
    status: str
    error: str


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _type_name(tp: Any) -> str:
    if tp is None:
        return ""
    return tp.__name__ if isinstance(tp, type) else str(tp)


def _option_infos(raw: Any) -> list[OptionInfo]:
    """Options as a plugin declares them: (name, type, default, help) records (objects,
    dicts or tuples) in a list, or a mapping name -> spec (a record or a default value)."""
    if not raw:
        return []
    items = list(raw.items()) if isinstance(raw, dict) else [(None, v) for v in raw]
    out = []
    for key, spec in items:
        if isinstance(spec, (tuple, list)):
            name, tp, default, help_text = (list(spec) + [None] * 4)[:4]
        elif isinstance(spec, str) and key is None:
            name, tp, default, help_text = spec, None, None, ""
        elif spec is None or isinstance(spec, (str, int, float, bool)):
            name, tp, default, help_text = key, None, spec, ""
        else:
            name = _get(spec, "name", None) or key
            tp, default, help_text = _get(spec, "type"), _get(spec, "default"), _get(spec, "help", "")
        if name is not None:
            out.append(OptionInfo(str(name), _type_name(tp), default, str(help_text or "")))
    return out


def _judge_info(name: str, j: Any, plugin: str) -> JudgeInfo:
    options = _get(j, "options", None) or _get(j, "schema", None)
    return JudgeInfo(str(name), str(_get(j, "plugin", None) or plugin),
                     str(_get(j, "description", "") or ""), _option_infos(options), str(_get(j, "kind", "") or ""))


def _judge_infos(raw: Any, plugin: str, known: dict[str, Any] | None = None) -> list[JudgeInfo]:
    """A record's judges: names (looked up in ``known``, the manager's judges) or records."""
    if raw is None:
        return []
    items: list[tuple[Any, Any]]
    if isinstance(raw, dict):
        items = list(raw.items())
    else:
        items = [(None, j) for j in raw]
    infos = []
    for key, j in items:
        if isinstance(j, str):
            infos.append(_judge_info(j, known[j], plugin) if known and j in known else JudgeInfo(j, plugin))
            continue
        name = _get(j, "name", key) or key
        if name is not None:
            infos.append(_judge_info(str(name), j, plugin))
    return infos


def plugin_rows() -> tuple[list[PluginRow], str | None]:
    """The installed plugins (broken ones included), and an error if the manager itself failed."""
    try:
        from tui_trainer.plugins.manager import get_plugin_manager
        manager = get_plugin_manager()
    except Exception as exc:  # the app must open whatever the plugins do
        return [], f"plugin manager unavailable: {type(exc).__name__}: {exc}"
    records = None
    for attr in ("plugins", "records", "list_plugins"):
        records = getattr(manager, attr, None)
        if records is not None:
            break
    if callable(records):
        records = records()
    if isinstance(records, dict):
        records = list(records.values())
    known = getattr(manager, "judges", None)
    known = known if isinstance(known, dict) else None
    rows = []
    for rec in records or []:
        name = str(_get(rec, "name", "?"))
        error = _get(rec, "error", None)
        status = str(_get(rec, "status", None) or ("broken" if error else "ok"))
        rows.append(PluginRow(name, str(_get(rec, "version", "") or ""),
                              _judge_infos(_get(rec, "judges", None), name, known), status,
                              one_line(str(error), 500) if error else ""))
    return rows, None


def judge_catalog() -> dict[str, JudgeInfo]:
    """Judges that can be used (from plugins that loaded), by name."""
    rows, _ = plugin_rows()
    catalog: dict[str, JudgeInfo] = {}
    for row in rows:
        if row.error and not row.judges:
            continue
        for info in row.judges:
            catalog.setdefault(info.name, info)
    return catalog


def check_judge_options(name: str, options: dict) -> None:
    """Raise (one line) if ``name`` is not an installed judge or ``options`` do not fit it."""
    try:
        from tui_trainer.plugins.manager import get_plugin_manager
        from tui_trainer.plugins.options import resolve
    except ImportError:
        return  # checked again when the run builds its judges
    registry = get_plugin_manager()
    get = getattr(registry, "get", None)
    if get is None:
        return
    info = get(name)
    resolve(getattr(info, "options", ()), options, name)


class PluginsScreen(Screen):
    CSS_PATH = "plugins.tcss"
    BINDINGS = [Binding("escape,q", "back", "Back")]

    def compose(self) -> ComposeResult:
        yield Static("", id="plugins-title", markup=False)
        yield DataTable(id="plugins-table", cursor_type="row")
        with VerticalScroll(id="plugin-detail-box"):
            yield Static("", id="plugin-detail", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.rows, error = plugin_rows()
        table = self.query_one(DataTable)
        table.add_columns("plugin", "version", "status", "judges")
        for i, row in enumerate(self.rows):
            table.add_row(row.name, row.version or "-", row.status,
                          ", ".join(j.name for j in row.judges) or "-", key=str(i))
        broken = sum(1 for r in self.rows if r.error)
        title = f"judge plugins: {len(self.rows)} installed, {broken} broken · Esc back"
        self.query_one("#plugins-title", Static).update(error or title)
        table.focus()
        self._show_detail(0)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail(event.cursor_row)

    def _show_detail(self, index: int) -> None:
        detail = self.query_one("#plugin-detail", Static)
        if not self.rows or not 0 <= index < len(self.rows):
            detail.update("No judge plugins found.")
            return
        row = self.rows[index]
        lines = [f"{row.name} {row.version} · {row.status}"]
        if row.error:
            lines.append(f"error: {row.error}")
        for j in row.judges:
            lines.append(f"  {j.name}" + (f" [{j.kind}]" if j.kind else "") + f": {j.description}")
            for opt in j.options:
                lines.append(f"    {opt.brief()}" + (f": {opt.help}" if opt.help else ""))
        detail.update("\n".join(lines))

    def action_back(self) -> None:
        self.app.pop_screen()
