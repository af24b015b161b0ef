"""Set up a run: model, data, mode, judges (with options) and the main hyperparameters.

The form starts from a Config; ctrl+o loads a YAML config, ctrl+s saves one,
ctrl+r starts the run (resuming when the box is ticked). Every value goes
through tui_trainer.config's validation before a run starts or a file is
written; a bad value is one line in the form's message bar.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Input, Label, Select, Static

from tui_trainer.config import DECLARED, JUDGE_FAILURES, MODES, PAIRWISE_OBJECTIVES, Config, JudgeSpec
from tui_trainer.errors import one_line
from tui_trainer.screens.plugins import JudgeInfo, check_judge_options, judge_catalog
from tui_trainer.widgets.format import printable

DEFAULT_CONFIG_PATH = "tui-trainer.yaml"

# The form's fields: (key, label). Each key's type (and whether empty means null) comes from its
# declaration in config.py; the labels are the form's own short names.
TEXT_FIELDS = (("model", "model"), ("init_adapter", "init adapter"), ("data.path", "data"), ("run_dir", "run dir"))
PLACEHOLDERS = {
    "model": "embedded SmolLM2-135M-Instruct (or a model dir / .gguf)",
    "init_adapter": "a fresh adapter (or an mlx-lm adapter folder: SFT -> PPO)",
    "data.path": "embedded prompts (or a JSONL/CSV/parquet file)",
}
HYPER_FIELDS = (
    ("steps", "steps"), ("batch_size", "batch size"), ("num_samples", "samples/prompt"),
    ("max_new_tokens", "max new tokens"), ("temperature", "temperature"), ("beta", "KL beta"),
    ("kl_target", "KL target"), ("epsilon", "clip epsilon"), ("ppo_epochs", "PPO epochs"),
    ("minibatch_size", "minibatch"), ("actor_lr", "actor lr"), ("critic_lr", "critic lr"),
    ("adapter.rank", "LoRA rank"), ("save_every", "save every"), ("seed", "seed"),
)
_KINDS = {"int": int, "float": float, "float | None": "float?", "str": "str", "str | None": "str?"}


def kind_of(key: str) -> Any:
    """How the form parses ``key``: int, float, "float?" / "str?" (empty = null) or "str"."""
    return _KINDS[DECLARED[key].type]


def get_key(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def set_key(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def show_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_field(label: str, text: str, kind: Any) -> Any:
    """The typed value of one form field; ValueError with a one-line message if it is not one."""
    text = text.strip()
    if kind in ("str?", "float?") and not text:
        return None
    if kind in ("str", "str?"):
        if not text:
            raise ValueError(f"{label}: needs a value")
        return text
    try:
        if kind is int:
            return int(text)
        return float(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{label}: {text!r} is not {what}") from None


def parse_options(name: str, text: str) -> dict:
    text = text.strip()
    if not text:
        return {}
    try:
        value = yaml.safe_load(text if text.startswith("{") else "{" + text + "}")
    except yaml.YAMLError:
        raise ValueError(f"judge {name}: options must look like {{key: value, other: 2}}") from None
    if not isinstance(value, dict):
        raise ValueError(f"judge {name}: options must look like {{key: value, other: 2}}")
    return value


def options_text(options: dict) -> str:
    if not options:
        return ""
    return yaml.safe_dump(options, default_flow_style=True, width=10_000).strip()


def field_id(key: str) -> str:
    return "f-" + key.replace(".", "-")


class JudgeRow(Horizontal):
    """One judge of the run: name, weight, options."""

    def __init__(self, spec: JudgeSpec, names: list[str]) -> None:
        super().__init__(classes="judge-row")
        self.spec = spec
        self.names = names if spec.name in names else [spec.name, *names]

    def compose(self) -> ComposeResult:
        yield Select([(n, n) for n in self.names], value=self.spec.name, allow_blank=False,
                     compact=True, classes="judge-name")
        yield Label("weight", classes="small-label")
        yield Input(show_value(self.spec.weight), compact=True, classes="judge-weight")
        yield Label("options", classes="small-label")
        yield Input(options_text(self.spec.options), placeholder="{key: value}", compact=True,
                    classes="judge-options")
        yield Button("remove", compact=True, classes="judge-remove")

    def read(self) -> dict:
        name = str(self.query_one(".judge-name", Select).value)
        weight = parse_field(f"judge {name} weight", self.query_one(".judge-weight", Input).value, float)
        options = parse_options(name, self.query_one(".judge-options", Input).value)
        return {"name": name, "weight": weight, "options": options}


class SetupScreen(Screen):
    """The run's settings as a form; start posts :class:`SetupScreen.Start` to the app."""

    class Start(Message):
        """Start a run with ``config`` (``config_path``: the form's config file, for the next run)."""

        def __init__(self, config: Config, resume: bool, config_path: str | None) -> None:
            super().__init__()
            self.config, self.resume, self.config_path = config, resume, config_path

    CSS_PATH = "setup.tcss"
    BINDINGS = [
        Binding("ctrl+r", "start", "Start", priority=True),
        Binding("ctrl+s", "save", "Save YAML", priority=True),
        Binding("ctrl+o", "load", "Load YAML", priority=True),
    ]

    def __init__(self, config: Config | None = None, *, config_path: str | None = None,
                 resume: bool = False) -> None:
        super().__init__()
        self.base = copy.deepcopy(config) if config is not None else Config()
        self.config_path = config_path
        self.resume = resume
        self.catalog: dict[str, JudgeInfo] = judge_catalog()

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        cfg = self.base
        yield Static("tui-trainer · set up a run · Tab moves · ctrl+r start · ? help",
                     id="setup-title", markup=False)
        with VerticalScroll(id="form"):
            with Horizontal(classes="row"):
                yield Label("config", classes="label")
                yield Input(self.config_path or DEFAULT_CONFIG_PATH, compact=True, id="config-path")
                yield Button("Load", compact=True, id="load")
                yield Button("Save", compact=True, id="save")
            yield Static("model & data", classes="section")
            for key, label in TEXT_FIELDS:
                with Horizontal(classes="row"):
                    yield Label(label, classes="label")
                    yield Input(show_value(get_key(cfg, key)), placeholder=PLACEHOLDERS.get(key, ""),
                                compact=True, id=field_id(key))
            with Horizontal(classes="row"):
                yield Label("mode", classes="label")
                yield Select([(m, m) for m in MODES], value=cfg.mode if cfg.mode in MODES else MODES[0],
                             allow_blank=False, compact=True, id="f-mode")
                yield Label("pairwise obj.", classes="label wide-label")
                yield Select([(m, m) for m in PAIRWISE_OBJECTIVES],
                             value=cfg.pairwise_objective if cfg.pairwise_objective in PAIRWISE_OBJECTIVES
                             else PAIRWISE_OBJECTIVES[0],
                             allow_blank=False, compact=True, id="f-pairwise_objective")
            yield Static("judges", classes="section")
            with Vertical(id="judges"):
                for spec in cfg.judges:
                    yield JudgeRow(spec, self.judge_names())
            with Horizontal(classes="row"):
                yield Button("+ judge", compact=True, id="add-judge")
                yield Label("on failure", classes="label")
                yield Select([(m, m) for m in JUDGE_FAILURES],
                             value=cfg.judge_failure if cfg.judge_failure in JUDGE_FAILURES else "drop",
                             allow_blank=False, compact=True, id="f-judge_failure")
            yield Static("", id="judge-hint", markup=False)
            yield Static("hyperparameters", classes="section")
            with Vertical(id="hyper"):
                pairs = [HYPER_FIELDS[i:i + 2] for i in range(0, len(HYPER_FIELDS), 2)]
                for pair in pairs:
                    with Horizontal(classes="row"):
                        for key, label in pair:
                            yield Label(label, classes="label")
                            yield Input(show_value(get_key(cfg, key)), compact=True, id=field_id(key),
                                        classes="hyper-input")
            with Horizontal(classes="row"):
                yield Checkbox("resume from the run dir's last checkpoint", self.resume,
                               compact=True, id="resume")
            with Horizontal(classes="row"):
                yield Button("Start (ctrl+r)", variant="primary", compact=True, id="start")
                yield Button("Plugins (F2)", compact=True, id="plugins")
        yield Static("", id="setup-message", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(f"#{field_id('model')}", Input).focus()
        self._show_hint(self.base.judges[0].name if self.base.judges else None)

    def judge_names(self) -> list[str]:
        names = list(self.catalog)
        return names or ["rules", "llama", "human"]

    # ------------------------------------------------------------------ reading the form
    def form_config(self) -> Config:
        """The form as a validated Config; raises ValueError or the config module's error."""
        from tui_trainer.config import config_to_dict, load_config

        tree = config_to_dict(self.base)
        for key, label in (*TEXT_FIELDS, *HYPER_FIELDS):
            set_key(tree, key, parse_field(label, self.query_one(f"#{field_id(key)}", Input).value, kind_of(key)))
        for key in ("mode", "pairwise_objective", "judge_failure"):
            set_key(tree, key, self.query_one(f"#f-{key}", Select).value)
        judges = [row.read() for row in self.query(JudgeRow)]
        if not judges:
            raise ValueError("add at least one judge (+ judge)")
        for judge in judges:
            check_judge_options(judge["name"], judge["options"])
        tree["judges"] = judges
        # Adapter scale: keep the base's, and drop a stale alpha spelling if there was one.
        cfg = load_config(None, overrides=tree)
        cfg.load_warnings = [*self.base.load_warnings, *cfg.load_warnings]  # the file's, logged when the run starts
        return cfg

    def _checked(self) -> Config | None:
        try:
            return self.form_config()
        except Exception as exc:  # ValueError from the form or ConfigError from validation
            self.say(one_line(exc), error=True)
            return None

    def say(self, text: str, *, error: bool = False) -> None:
        bar = self.query_one("#setup-message", Static)
        bar.update(printable(text))
        bar.set_class(error, "error")

    # ------------------------------------------------------------------ actions
    def action_start(self) -> None:
        cfg = self._checked()
        if cfg is None:
            return
        resume = self.query_one("#resume", Checkbox).value
        path = self.query_one("#config-path", Input).value.strip() or None
        self.post_message(self.Start(cfg, resume, path))

    def action_save(self) -> None:
        from tui_trainer.config import save_config
        cfg = self._checked()
        if cfg is None:
            return
        path = self.query_one("#config-path", Input).value.strip() or DEFAULT_CONFIG_PATH
        try:
            save_config(cfg, path)
        except Exception as exc:
            self.say(f"could not save {path}: {one_line(exc)}", error=True)
            return
        self.config_path = path
        self.say(f"saved {path}")

    def action_load(self) -> None:
        from tui_trainer.config import load_config
        path = self.query_one("#config-path", Input).value.strip() or DEFAULT_CONFIG_PATH
        try:
            cfg = load_config(path)
        except Exception as exc:
            self.say(one_line(exc), error=True)
            return
        screen = SetupScreen(cfg, config_path=path, resume=self.query_one("#resume", Checkbox).value)
        self.app.switch_screen(screen)
        ignored = f"; {len(cfg.load_warnings)} key(s) ignored by PPO (listed when the run starts)" \
            if cfg.load_warnings else ""
        screen.call_after_refresh(screen.say, f"loaded {path}{ignored}")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        button = event.button
        if button.id == "start":
            self.action_start()
        elif button.id == "save":
            self.action_save()
        elif button.id == "load":
            self.action_load()
        elif button.id == "plugins":
            self.run_action("app.plugins")
        elif button.id == "add-judge":
            names = self.judge_names()
            row = JudgeRow(JudgeSpec(name=names[0]), names)
            self.query_one("#judges").mount(row)
            row.call_after_refresh(lambda: row.query_one(Select).focus())
        elif button.has_class("judge-remove"):
            row = button.parent
            if isinstance(row, JudgeRow):
                row.remove()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.has_class("judge-name"):
            self._show_hint(str(event.value))
        elif event.select.id == "f-mode":
            # pairwise compares two completions of a prompt; the other modes take the default again
            samples = self.query_one(f"#{field_id('num_samples')}", Input)
            if event.value == "pairwise":
                samples.value = "2"
            elif samples.value.strip() == "2" and self.base.num_samples != 2:
                samples.value = str(self.base.num_samples)

    def on_descendant_focus(self, event: Any) -> None:
        widget = event.widget
        for ancestor in widget.ancestors_with_self:
            if isinstance(ancestor, JudgeRow):
                self._show_hint(str(ancestor.query_one(".judge-name", Select).value))
                return

    def _show_hint(self, name: str | None) -> None:
        hint = self.query_one("#judge-hint", Static)
        info = self.catalog.get(name or "")
        if info is None:
            hint.update(f"{name}: not among the installed judges (F2 lists them)" if name else "")
            return
        text = f"{info.name}: {info.description}" if info.description else info.name
        if info.kind:
            text += f" [{info.kind}]"
        if info.options:
            text += " · options: " + ", ".join(opt.name for opt in info.options)
        hint.update(text)
