"""`tui-trainer plugins`: the judge plugins found, their judges and status."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also list each judge's kind, description and options")
    p.add_argument("--json", action="store_true",
                   help="print the plugins and judges as JSON (name, version, status, error, judges with kind, "
                        "description, options)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from tui_trainer.plugins.manager import get_plugin_manager

    reg = get_plugin_manager()
    if args.json:
        import json

        judges = {name: {"kind": info.kind, "plugin": info.plugin, "description": info.description,
                         "options": [{"name": o.name, "type": o.type.__name__, "default": o.default, "help": o.help}
                                     for o in info.options]}
                  for name, info in sorted(reg.judges.items())}
        plugins = [{"name": r.name, "version": r.version or None, "status": r.status, "error": r.error or None,
                    "module": r.value or None, "judges": list(r.judges)} for r in reg.plugins]
        print(json.dumps({"plugins": plugins, "judges": judges}, indent=2, default=repr))
        return 0
    console = Console(highlight=False)
    table = Table(title="judge plugins (entry point group tui_trainer.judges)", title_justify="left")
    for column in ("plugin", "version", "judges", "status"):
        table.add_column(column, overflow="fold")
    for rec in reg.plugins:
        if rec.status == "ok":
            status = Text("ok", style="green")
        elif rec.status == "disabled":
            status = Text("disabled", style="yellow")
        else:
            status = Text(f"broken: {rec.error}", style="red")
        table.add_row(rec.name, rec.version or "-", ", ".join(rec.judges) or "-", status)
    console.print(table)
    if args.verbose:
        for name, info in sorted(reg.judges.items()):
            opts = Table(title=Text(f"{name}  ({info.kind}, plugin {info.plugin}): {info.description}"),
                         title_justify="left", show_edge=False)
            for column in ("option", "type", "default", "help"):
                opts.add_column(column, overflow="fold")
            for opt in info.options:
                default = "-" if opt.default is None else repr(opt.default)
                if len(default) > 40:
                    default = default[:37] + "..."
                help_text = opt.help + (f" (choices: {', '.join(map(str, opt.choices))})" if opt.choices else "")
                opts.add_row(opt.name, opt.type.__name__, default, help_text)
            console.print()
            console.print(opts)
    return 0
