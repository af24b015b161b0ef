"""Plugin loading: entry points one by one, broken plugins recorded with their error,
disabled plugins skipped, and `tui-trainer plugins` listing them all."""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import textwrap

import pytest

from tui_trainer.errors import ConfigError
from tui_trainer.plugins.manager import ENTRY_POINT_GROUP, JudgeRegistry, load_plugins

GOOD = '''
from tui_trainer.plugins import Option, hookimpl

class Echo:
    def __init__(self, options, context):
        self.value = options["value"]
    def score(self, prompts, completions):
        return [self.value] * len(completions)

@hookimpl
def register_judges(register):
    register("echo", Echo, description="returns a constant\\nsecond line ignored",
             options=[Option("value", float, 0.5, "the score")])
'''

PLUGINS = {
    "good_plug": GOOD,
    "import_boom": "raise RuntimeError('boom at import')\n",
    "register_boom": textwrap.dedent('''
        from tui_trainer.plugins import hookimpl
        @hookimpl
        def register_judges(register):
            register("half", object)
            raise ValueError("cannot register today")
        '''),
    "no_hook": "x = 1\n",
    "bad_kind": textwrap.dedent('''
        from tui_trainer.plugins import hookimpl
        @hookimpl
        def register_judges(register):
            register("weird", dict, kind="sideways")
        '''),
    "steals_rules": textwrap.dedent('''
        from tui_trainer.plugins import hookimpl
        @hookimpl
        def register_judges(register):
            register("rules", dict)
        '''),
    "wrong_arg": textwrap.dedent('''
        from tui_trainer.plugins import hookimpl
        @hookimpl
        def register_judges(reg, extra):
            pass
        '''),
    "exits": "import sys\nsys.exit(3)\n",
}


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    for name, src in PLUGINS.items():
        (tmp_path / f"{name}.py").write_text(src)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in PLUGINS:
        sys.modules.pop(name, None)


def eps(*names):
    return [md.EntryPoint(n, n, ENTRY_POINT_GROUP) for n in names]


def test_each_plugin_loads_on_its_own(plugin_dir):
    reg = load_plugins(entry_points=eps(*PLUGINS), disabled=[])
    status = {p.name: (p.status, p.error) for p in reg.plugins}
    assert status["builtin"] == ("ok", "")
    assert status["good_plug"] == ("ok", "")
    assert status["import_boom"] == ("broken", "import failed: RuntimeError: boom at import")
    assert status["register_boom"][0] == "broken"
    assert "cannot register today" in status["register_boom"][1]
    assert status["no_hook"] == ("broken", "implements no register_judges hook")
    assert "kind must be one of" in status["bad_kind"][1]
    assert "already registered by plugin builtin" in status["steals_rules"][1]
    assert status["wrong_arg"][0] == "broken" and "invalid plugin" in status["wrong_arg"][1]
    assert status["exits"][0] == "broken" and "SystemExit" in status["exits"][1]
    # what loaded is usable; a broken plugin leaves nothing half-registered
    assert set(reg.judges) == {"rules", "answer", "reward_function", "human", "llama", "reward", "echo"}
    assert "half" not in reg.judges
    assert reg.get("echo").description == "returns a constant"
    assert [p.judges for p in reg.plugins if p.name == "good_plug"] == [["echo"]]
    assert all("\n" not in p.error for p in reg.plugins)


def test_unknown_judge_names_the_broken_plugins(plugin_dir):
    reg = load_plugins(entry_points=eps("import_boom"), disabled=[])
    with pytest.raises(ConfigError, match=r"unknown judge 'x' .*broken plugins: import_boom \(import failed"):
        reg.get("x")


def test_disabled_plugins_are_skipped(plugin_dir, monkeypatch):
    monkeypatch.setenv("TUI_TRAINER_DISABLE_PLUGINS", " good_plug ,import_boom")
    reg = load_plugins(entry_points=eps("good_plug", "import_boom"))
    status = {p.name: p.status for p in reg.plugins}
    assert status == {"builtin": "ok", "good_plug": "disabled", "import_boom": "disabled"}
    assert "import_boom" not in sys.modules  # not even imported
    assert "echo" not in reg.judges


def test_builtin_can_be_disabled_too():
    reg = load_plugins(entry_points=[], disabled=["builtin"])
    assert [(p.name, p.status) for p in reg.plugins] == [("builtin", "disabled")]
    assert reg.judges == {}


def test_listing_never_imports_llama_cpp_or_mlx():
    code = ("import sys; from tui_trainer.plugins.manager import get_plugin_manager; get_plugin_manager(); "
            "print(sorted(m for m in ('llama_cpp', 'mlx', 'mlx.core') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_factory_errors_and_missing_methods(plugin_dir):
    reg = JudgeRegistry()
    from tui_trainer.plugins.judge import JudgeContext
    from tui_trainer.plugins.manager import JudgeInfo

    def explode(options, context):
        raise KeyError("api key")

    reg.judges["explode"] = JudgeInfo("explode", explode, "", (), "pointwise", "t")
    reg.judges["hollow"] = JudgeInfo("hollow", lambda o, c: object(), "", (), "both", "t")
    with pytest.raises(ConfigError, match="judge explode: could not be created: KeyError"):
        reg.create("explode", {}, JudgeContext("explode"))
    with pytest.raises(ConfigError, match="registered as both but has no score"):
        reg.create("hollow", {}, JudgeContext("hollow"))


def _fake_dist(root, dist, module, source, ep_name):
    info = root / f"{dist}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{ep_name} = {module}\n")
    (root / f"{module}.py").write_text(source)


def run_cli(*args, pythonpath=None, **env):
    e = dict(os.environ, COLUMNS="250", **env)
    if pythonpath:
        e["PYTHONPATH"] = os.pathsep.join([str(pythonpath), e.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "tui_trainer", *args], capture_output=True, text=True,
                          env=e, timeout=180)


def test_cli_lists_broken_plugin_and_the_rest(tmp_path):
    _fake_dist(tmp_path, "broken_judge_plugin", "broken_judge_mod",
               "raise ImportError('needs libfoo 2.0')\n", "broken")
    _fake_dist(tmp_path, "good_judge_plugin", "good_judge_mod", GOOD, "goodone")
    out = run_cli("plugins", pythonpath=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[1]: line for line in out.stdout.splitlines() if line.startswith("│")}
    assert "broken: import failed: ImportError: needs libfoo 2.0" in lines["broken"]
    assert "0.3" in lines["broken"]
    assert "echo" in lines["goodone"] and "ok" in lines["goodone"] and "0.3" in lines["goodone"]
    assert "rules, answer, reward_function, human, llama" in lines["builtin"] and "ok" in lines["builtin"]
    assert "http" in lines and "ok" in lines["http"]  # the example plugin, installed editable
    assert "Traceback" not in out.stdout + out.stderr

    # the app's other commands still work with the broken plugin installed
    out = run_cli("judge", "echo", "--prompt", "p", "--a", "x", "-o", "value=0.25", pythonpath=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "score: 0.2500" in out.stdout


def test_cli_plugins_lists_disabled(tmp_path):
    out = run_cli("plugins", TUI_TRAINER_DISABLE_PLUGINS="http")
    row = next(line for line in out.stdout.splitlines() if line.startswith("│ http "))
    assert "disabled" in row


def test_cli_judge_errors_are_one_line():
    out = run_cli("judge", "nope", "--prompt", "p", "--a", "x")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("tui-trainer: error: unknown judge 'nope'")
    assert len(out.stderr.strip().splitlines()) == 1
    out = run_cli("judge", "rules", "--prompt", "p", "--a", "x", "-o", "target_length")
    assert out.returncode == 2 and "needs KEY=VALUE" in out.stderr
