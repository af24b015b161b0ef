"""Installed judge plugins: name, version, judges, status, and the error of a broken one.

It shows the plugin registry's own records (``JudgeRegistry.plugins`` and ``.judges``): the
same catalogue ``tui-trainer plugins`` prints and the setup form offers.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tui_trainer.errors import one_line as error_line
from tui_trainer.plugins.hookspecs import Option
from tui_trainer.plugins.manager import JudgeInfo, PluginRecord, get_plugin_manager
from tui_trainer.plugins.options import resolve
from tui_trainer.widgets.format import one_line

__all__ = ["PluginsScreen", "plugin_rows", "judge_catalog", "check_judge_options", "option_brief"]


def option_brief(opt: Option) -> str:
    """``name (type, default D)``."""
    default = one_line(repr(opt.default), 24) if opt.default is not None else ""
    bits = [b for b in (opt.type.__name__, f"default {default}" if default else "") if b]
    return opt.name + (f" ({', '.join(bits)})" if bits else "")


def plugin_rows() -> tuple[list[PluginRecord], str | None]:
    """The installed plugins (broken ones included), and an error if the registry itself failed."""
    try:
        return list(get_plugin_manager().plugins), None
    except Exception as exc:  # noqa: BLE001  the app must open whatever the plugins do
        return [], f"plugin manager unavailable: {error_line(exc)}"


def judge_catalog() -> dict[str, JudgeInfo]:
    """Judges that can be used (from plugins that loaded), by name."""
    try:
        return dict(get_plugin_manager().judges)
    except Exception:  # noqa: BLE001  the setup form opens without a catalogue
        return {}


def check_judge_options(name: str, options: dict[str, Any]) -> None:
    """Raise ConfigError (one line) if ``name`` is not an installed judge or ``options`` do not fit it."""
    info = get_plugin_manager().get(name)
    resolve(info.options, options, name)


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
        self.catalog = judge_catalog()
        table = self.query_one(DataTable)
        table.add_columns("plugin", "version", "status", "judges")
        for i, row in enumerate(self.rows):
            table.add_row(row.name, row.version or "-", row.status, ", ".join(row.judges) or "-", key=str(i))
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
            lines.append(f"error: {one_line(row.error, 500)}")
        for name in row.judges:
            j = self.catalog.get(name)
            if j is None:
                lines.append(f"  {name}")
                continue
            lines.append(f"  {j.name} [{j.kind}]: {j.description}")
            for opt in j.options:
                lines.append(f"    {option_brief(opt)}" + (f": {opt.help}" if opt.help else ""))
        detail.update("\n".join(lines))

    def action_back(self) -> None:
        self.app.pop_screen()
