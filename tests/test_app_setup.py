"""The setup screen: the form becomes a validated Config, saved and loaded as YAML."""

from __future__ import annotations

import asyncio

import yaml
from textual.widgets import Input, Select

from tui_trainer.app import TrainerApp
from tui_trainer.config import Config, JudgeSpec, load_config
from tui_trainer.screens.setup import JudgeRow, SetupScreen

from helpers import screen_text


def run(coro):
    return asyncio.run(coro)


async def set_input(pilot, screen, selector: str, text: str) -> None:
    widget = screen.query_one(selector, Input)
    widget.value = text
    await pilot.pause()


def test_form_edits_become_the_config_and_round_trip_through_yaml(tmp_path):
    path = tmp_path / "run.yaml"

    async def go():
        cfg = Config(steps=7, judges=[JudgeSpec("rules", 1.0, {"target_length": 30})])
        app = TrainerApp(cfg, config_path=str(path))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, SetupScreen)
            assert screen.query_one("#f-steps", Input).value == "7"
            await set_input(pilot, screen, "#f-steps", "12")
            await set_input(pilot, screen, "#f-actor_lr", "3e-5")
            await set_input(pilot, screen, "#f-kl_target", "0.1")
            await set_input(pilot, screen, "#f-run_dir", str(tmp_path / "runs" / "a"))
            await set_input(pilot, screen, "#f-adapter-rank", "4")
            screen.query_one("#f-mode", Select).value = "rloo"
            row = screen.query_one(JudgeRow)
            row.query_one(".judge-weight", Input).value = "2"
            row.query_one(".judge-options", Input).value = "{target_length: 40}"
            await pilot.pause()
            form = screen.form_config()
            assert (form.steps, form.actor_lr, form.kl_target, form.mode, form.adapter.rank) == \
                (12, 3e-5, 0.1, "rloo", 4)
            assert form.model is None and form.data.path is None  # empty = embedded defaults
            assert [(j.name, j.weight, j.options) for j in form.judges] == [("rules", 2.0, {"target_length": 40})]
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert path.exists()
            saved = load_config(str(path))
            assert (saved.steps, saved.mode, saved.judges[0].options) == (12, "rloo", {"target_length": 40})
            assert "saved" in screen_text(app)

            # change the file outside, then load it into the form
            raw = yaml.safe_load(path.read_text())
            raw["steps"] = 33
            path.write_text(yaml.safe_dump(raw))
            await pilot.press("ctrl+o")
            await pilot.pause(0.2)
            screen = app.screen
            assert isinstance(screen, SetupScreen)
            assert screen.query_one("#f-steps", Input).value == "33"
            assert screen.form_config().mode == "rloo"
    run(go())


def test_bad_values_give_one_line_and_start_nothing(tmp_path):
    async def go():
        app = TrainerApp(Config())
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            screen = app.screen
            await set_input(pilot, screen, "#f-steps", "many")
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert app.screen is screen and not app.run_active
            bar = screen.query_one("#setup-message")
            assert "steps: 'many' is not a whole number" in screen_text(app)
            assert bar.has_class("error")
            # a value of the right type but out of range: the config module's validation
            await set_input(pilot, screen, "#f-steps", "5")
            await set_input(pilot, screen, "#f-temperature", "-1")
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert app.screen is screen and not app.run_active
            assert "temperature" in str(screen.query_one("#setup-message").render())
            # judge options that are not a mapping
            await set_input(pilot, screen, "#f-temperature", "1.0")
            screen.query_one(JudgeRow).query_one(".judge-options", Input).value = "[1, 2]"
            await pilot.pause()
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert "options must look like" in str(screen.query_one("#setup-message").render())
    run(go())


def test_judges_can_be_added_and_removed_by_keyboard():
    async def go():
        app = TrainerApp(Config())
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            screen = app.screen
            screen.query_one("#add-judge").focus()
            await pilot.press("enter")
            await pilot.pause()
            rows = list(screen.query(JudgeRow))
            assert len(rows) == 2
            rows[1].query_one(".judge-remove").focus()
            await pilot.press("enter")
            await pilot.pause()
            assert len(list(screen.query(JudgeRow))) == 1
            rows[0].query_one(".judge-remove").focus()
            await pilot.press("enter")
            await pilot.pause()
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert "add at least one judge" in str(screen.query_one("#setup-message").render())
    run(go())


def test_unknown_judge_option_is_caught_in_the_form():
    async def go():
        app = TrainerApp(Config())
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            screen = app.screen
            screen.query_one(JudgeRow).query_one(".judge-options", Input).value = "{target_lenght: 40}"
            await pilot.pause()
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert not app.run_active
            message = str(screen.query_one("#setup-message").render())
            assert "unknown option 'target_lenght'" in message and "target_length" in message
    run(go())


def test_plugins_screen_lists_judges_and_a_broken_plugin(monkeypatch):
    import importlib.metadata as md

    from tui_trainer.plugins import manager

    registry = manager.load_plugins(entry_points=[
        md.EntryPoint("builtin", "tui_trainer.plugins.builtin", "tui_trainer.judges"),
        md.EntryPoint("badplugin", "tui_trainer_no_such_module_here", "tui_trainer.judges"),
    ], disabled=[])
    monkeypatch.setattr(manager, "_cached", registry)

    async def go():
        app = TrainerApp(Config())
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            await pilot.press("f2")
            await pilot.pause()
            assert type(app.screen).__name__ == "PluginsScreen"
            text = screen_text(app)
            assert "2 installed, 1 broken" in text
            assert "builtin" in text and "rules, answer, reward_function, human, llama" in text
            assert "badplugin" in text and "broken" in text
            await pilot.press("down")
            await pilot.pause()
            assert "tui_trainer_no_such_module_here" in screen_text(app)  # the error, one line
            await pilot.press("escape")
            await pilot.pause()
            assert type(app.screen).__name__ == "SetupScreen"
            # the broken plugin does not stop the rest: the working plugin's judges are offered
            assert set(app.screen.catalog) == {"rules", "answer", "reward_function", "human", "llama", "reward"}
    run(go())


def test_choosing_pairwise_sets_two_samples_per_prompt():
    """The default is 4 samples per prompt; pairwise compares 2, so picking it sets 2 (and back)."""
    async def go():
        app = TrainerApp(Config())
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            screen = app.screen
            samples = screen.query_one("#f-num_samples", Input)
            assert samples.value == "4"
            screen.query_one("#f-mode", Select).value = "pairwise"
            await pilot.pause()
            assert samples.value == "2"
            form = screen.form_config()
            assert (form.mode, form.num_samples) == ("pairwise", 2)
            screen.query_one("#f-mode", Select).value = "grpo"
            await pilot.pause()
            assert samples.value == "4" and screen.form_config().num_samples == 4
    run(go())


def test_an_mlx_lm_config_loads_into_the_form_with_its_ignored_keys_and_init_adapter(tmp_path, monkeypatch):
    """Ctrl+O on an mlx-lm lora_config.yaml: the form says how many keys PPO ignores, keeps those
    warnings for the run, and resume_adapter_file is the init adapter field."""
    monkeypatch.chdir(tmp_path)  # a short path: the message line shows it whole
    path = tmp_path / "lora.yaml"
    path.write_text("iters: 9\nval_batches: 25\ntest: false\nresume_adapter_file: sft/adapters\n")

    async def go():
        app = TrainerApp(Config())
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            await set_input(pilot, app.screen, "#config-path", "lora.yaml")
            await pilot.press("ctrl+o")
            await pilot.pause(0.2)
            screen = app.screen
            assert "2 key(s) ignored by PPO" in screen_text(app)
            assert screen.query_one("#f-init_adapter", Input).value == "sft/adapters"
            await set_input(pilot, screen, "#f-init_adapter", "sft2")
            form = screen.form_config()
            assert (form.steps, form.init_adapter) == (9, "sft2")
            assert [w.split(": ")[1] for w in form.load_warnings] == ["val_batches", "test"]

    asyncio.run(go())
