"""Configs users bring from mlx-lm, TRL and autotrain: their names map onto ours, SFT-only keys are
accepted with one warning line each, what we cannot do is refused with one line.

``tests/data/mlx_lm_lora_config.yaml`` is mlx-lm's own ``mlx_lm/examples/lora_config.yaml``, copied
unchanged (git blob ed87002..., mlx-lm commit d78bf58e; see tests/data/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import yaml

from tui_trainer.cli import main
from tui_trainer.config import IGNORED_KEYS, add_config_arguments, config_from_args, load_config
from tui_trainer.errors import ConfigError

MLX_LM_EXAMPLE = Path(__file__).parent / "data" / "mlx_lm_lora_config.yaml"
MLX_LM_EXAMPLE_BLOB = "ed8700244b4a6e68dd927c4a4f067b9b4d20da7e"  # git's id of the upstream file


def write(tmp_path, data) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def error_of(tmp_path, data) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    message = str(info.value)
    assert "\n" not in message, message
    return message


def ignored_keys(cfg) -> list[str]:
    """The keys named by the config's warnings ("file line N: key: ignored by PPO (...)")."""
    return [line.split(": ")[1].split(" (= ")[0] for line in cfg.load_warnings]


# ----------------------------------------------------------------------------- mlx-lm

def test_mlx_lm_example_config_loads_unchanged():
    raw = MLX_LM_EXAMPLE.read_bytes()
    assert hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest() == MLX_LM_EXAMPLE_BLOB  # still the upstream file
    cfg = load_config(MLX_LM_EXAMPLE)
    assert cfg.model == "mlx-community/Llama-3.2-1B-Instruct-bf16"
    assert cfg.adapter.type == "lora"
    assert cfg.data.path == "mlx-community/WikiSQL"
    assert (cfg.seed, cfg.adapter.layers, cfg.batch_size, cfg.steps) == (0, 16, 4, 1000)
    assert cfg.actor_lr == 1e-5 and cfg.grad_accum == 1 and cfg.init_adapter is None
    assert cfg.run_dir == "adapters" and cfg.save_every == 100 and cfg.max_seq_length == 2048
    assert cfg.adapter.keys == ["self_attn.q_proj", "self_attn.v_proj"]
    assert (cfg.adapter.rank, cfg.adapter.scale, cfg.adapter.dropout) == (8, 20.0, 0.0)
    # every other key of the file: one warning each, with its line, saying PPO ignores it
    assert ignored_keys(cfg) == ["train", "optimizer", "val_batches", "steps_per_report", "steps_per_eval", "test",
                                 "test_batches", "grad_checkpoint"]
    lines = MLX_LM_EXAMPLE.read_text().splitlines()
    for warning in cfg.load_warnings:
        where, key, rest = warning.split(": ", 2)
        assert rest.startswith("ignored by PPO (") and "\n" not in warning
        assert lines[int(where.rsplit(" ", 1)[1]) - 1].startswith(f"{key}:")


def test_every_key_of_the_mlx_lm_example_is_mapped_or_ignored():
    raw = yaml.safe_load(MLX_LM_EXAMPLE.read_text())
    cfg = load_config(MLX_LM_EXAMPLE)
    mapped = set(raw) - set(ignored_keys(cfg))
    assert mapped == {"model", "fine_tune_type", "data", "seed", "num_layers", "batch_size", "iters", "learning_rate",
                      "grad_accumulation_steps", "resume_adapter_file", "adapter_path", "save_every",
                      "max_seq_length", "lora_parameters"}


def test_mlx_lm_cli_defaults_that_are_not_in_the_example_are_accepted(tmp_path):
    # the rest of mlx_lm.lora's CONFIG_DEFAULTS
    cfg = load_config(write(tmp_path, {"mask_prompt": False, "report_to": None, "project_name": None,
                                       "trust_remote_code": False, "clear_cache_threshold": 0,
                                       "optimizer_config": {"adamw": {}}, "lr_schedule": None,
                                       "training_mode": "normal", "fine_tune_type": "dora"}))
    assert cfg.adapter.type == "dora"
    assert cfg.report_to == []  # mlx-lm's default (None): no tracker
    assert sorted(ignored_keys(cfg)) == sorted(["mask_prompt", "project_name", "trust_remote_code",
                                                "clear_cache_threshold", "optimizer_config", "lr_schedule",
                                                "training_mode"])


def test_resume_adapter_file_is_init_adapter(tmp_path):
    cfg = load_config(write(tmp_path, {"resume_adapter_file": "sft/adapters.safetensors"}))
    assert cfg.init_adapter == "sft/adapters.safetensors"
    message = error_of(tmp_path, {"resume_adapter_file": "a", "init_adapter": "b"})
    assert "init_adapter is given twice" in message


# ----------------------------------------------------------------------------- TRL and autotrain

@pytest.mark.parametrize("alias,key,value", [
    ("rl_value_loss_coef", "vf_coef", 0.5), ("rl_value_clip_range", "value_clip", 0.3),
    ("rl_mini_batch_size", "minibatch_size", 8), ("rl_top_k", "top_k", 40), ("rl_top_p", "top_p", 0.9),
    ("rl_temperature", "temperature", 0.7), ("max_prompt_length", "max_prompt_tokens", 256),
    ("num_train_epochs", "epochs", 2.0), ("warmup_ratio", "warmup_ratio", 0.1),
    ("grad_accumulation_steps", "grad_accum", 2), ("num_iterations", "ppo_epochs", 3),
    ("adapter_path", "run_dir", "adapters"), ("iters", "steps", 7), ("learning_rate", "actor_lr", 3e-5),
    ("lora_target_modules", "adapter.keys", ["q_proj", "v_proj"]), ("target_modules", "adapter.keys", ["q_proj"]),
])
def test_other_tools_names(tmp_path, alias, key, value):
    cfg = load_config(write(tmp_path, {alias: value}))
    sec, _, name = key.rpartition(".")
    assert getattr(getattr(cfg, sec) if sec else cfg, name) == value
    assert cfg.load_warnings == []


def test_peft_target_modules_as_one_string(tmp_path):
    assert load_config(write(tmp_path, {"lora_target_modules": "all-linear"})).adapter.keys == ["all-linear"]


def test_a_trl_ppo_config(tmp_path):
    """A PPOConfig as a TRL user writes it (examples/scripts/ppo), with its logging keys."""
    cfg = load_config(write(tmp_path, {
        "learning_rate": 3e-6, "output_dir": "runs/trl", "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2, "num_ppo_epochs": 4, "num_mini_batches": 2, "kl_coef": 0.05,
        "cliprange": 0.2, "cliprange_value": 0.2, "vf_coef": 0.1, "gamma": 1.0, "lam": 0.95,
        "whiten_rewards": False, "response_length": 53, "temperature": 0.7, "num_train_epochs": 1,
        "warmup_ratio": 0.1, "seed": 42, "report_to": "wandb", "missing_eos_penalty": 1.0,
        "kl_estimator": "k3", "num_generations": 4, "logging_steps": 10, "bf16": True}))
    assert (cfg.actor_lr, cfg.run_dir, cfg.batch_size, cfg.grad_accum, cfg.ppo_epochs) == (3e-6, "runs/trl", 4, 2, 4)
    assert cfg.minibatch_size == 4 * 4 // 2  # num_mini_batches splits batch_size * num_samples
    assert (cfg.beta, cfg.max_new_tokens, cfg.temperature, cfg.epochs, cfg.warmup_ratio) == (0.05, 53, 0.7, 1, 0.1)
    assert (cfg.missing_eos_penalty, cfg.kl_estimator, cfg.seed) == (1.0, "k3", 42)
    assert sorted(ignored_keys(cfg)) == ["bf16", "logging_steps"]
    assert cfg.report_to == ["wandb"]  # TRL's report_to is a real key: the W&B tracker


def test_trl_ppo_tldr_example_flags(tmp_path):
    """The flags of TRL's PPO TL;DR example (examples/scripts/ppo/ppo_tldr.py), as a YAML file."""
    flags = {"dataset_name": "trl-internal-testing/tldr-preference-sft-trl-style",
             "dataset_test_split": "validation", "learning_rate": 3e-6, "output_dir": "models/ppo_tldr",
             "per_device_train_batch_size": 8, "gradient_accumulation_steps": 8, "total_episodes": 30000,
             "model_name_or_path": "EleutherAI/pythia-1b-deduped", "local_rollout_forward_batch_size": 16,
             "missing_eos_penalty": 1.0, "stop_token": "eos", "response_length": 53, "eval_strategy": "steps",
             "eval_steps": 100, "report_to": "tensorboard"}
    cfg = load_config(write(tmp_path, flags))
    assert (cfg.data.path, cfg.actor_lr, cfg.run_dir, cfg.batch_size, cfg.grad_accum) == \
        ("trl-internal-testing/tldr-preference-sft-trl-style", 3e-6, "models/ppo_tldr", 8, 8)
    assert (cfg.steps, cfg.model, cfg.missing_eos_penalty, cfg.max_new_tokens) == \
        (3750, "EleutherAI/pythia-1b-deduped", 1.0, 53)  # ceil(30000 episodes / 8 prompts a step)
    assert sorted(ignored_keys(cfg)) == ["dataset_test_split", "eval_steps", "eval_strategy",
                                         "local_rollout_forward_batch_size", "stop_token"]
    assert cfg.report_to == ["tensorboard"]
    cfg = load_config(write(tmp_path, {**flags, "reward_model_path": "rm"}))
    assert [(j.name, j.options) for j in cfg.judges] == [("reward", {"path": "rm"})]
    cfg = load_config(write(tmp_path, {"total_episodes": 100, "iters": 3, "num_train_epochs": 2}))
    assert (cfg.steps, cfg.epochs) == (3, None) and sorted(ignored_keys(cfg)) == ["num_train_epochs", "total_episodes"]
    cfg = load_config(write(tmp_path, {"total_episodes": 10, "batch_size": 4, "num_train_epochs": 2}))
    assert (cfg.steps, cfg.epochs) == (3, None) and ignored_keys(cfg) == ["num_train_epochs"]


def test_a_trl_grpo_config(tmp_path):
    cfg = load_config(write(tmp_path, {"mode": "grpo", "num_generations": 8, "beta": 0.04, "epsilon": 0.2,
                                       "max_completion_length": 64, "max_prompt_length": 128,
                                       "num_iterations": 2, "per_device_train_batch_size": 2}))
    assert (cfg.num_samples, cfg.beta, cfg.epsilon, cfg.max_new_tokens) == (8, 0.04, 0.2, 64)
    assert (cfg.max_prompt_tokens, cfg.ppo_epochs, cfg.batch_size) == (128, 2, 2)


def test_num_mini_batches_must_divide_and_not_clash(tmp_path):
    message = error_of(tmp_path, "batch_size: 3\nnum_samples: 2\nnum_mini_batches: 4\n")
    assert "line 3: num_mini_batches: must divide batch_size * num_samples = 6" in message
    message = error_of(tmp_path, {"num_mini_batches": 2, "mini_batch_size": 8})
    assert "give minibatch_size or num_mini_batches, not both" in message


def test_the_explicit_key_wins_as_in_trl(tmp_path):
    cfg = load_config(write(tmp_path, {"max_steps": 5, "num_train_epochs": 3, "warmup_steps": 2,
                                       "warmup_ratio": 0.5}))
    assert (cfg.steps, cfg.epochs, cfg.warmup_steps, cfg.warmup_ratio) == (5, None, 2, None)
    assert ignored_keys(cfg) == ["num_train_epochs", "warmup_ratio"]
    assert "(max_steps (= steps) is given and wins)" in cfg.load_warnings[0]


def test_reward_model_paths_become_the_reward_judge(tmp_path):
    for key in ("rl_reward_model_path", "reward_model_path"):
        cfg = load_config(write(tmp_path, {key: "some/rm"}))
        assert [(j.name, j.weight, j.options) for j in cfg.judges] == [("reward", 1.0, {"path": "some/rm"})]
    message = error_of(tmp_path, {"reward_model_path": "some/rm", "judges": ["rules"]})
    assert "judges is given twice, as judges and reward_model_path" in message
    assert "reward_model_path: expected a reward-model directory" in error_of(tmp_path, {"reward_model_path": [1]})


def test_mlx_lm_hf_dataset_points_to_data(tmp_path):
    message = error_of(tmp_path, {"hf_dataset": {"path": "billsum", "train_split": "train[:1000]"}})
    assert "line 1: hf_dataset: not read; give the dataset as data: {path:" in message


def test_max_seq_length_must_leave_room_for_a_prompt(tmp_path):
    assert "max_seq_length: 48 leaves no room for a prompt" in error_of(tmp_path, {"max_seq_length": 48})


def test_unknown_keys_are_still_errors(tmp_path):
    assert "unknown key; did you mean 'val_batches'?" in error_of(tmp_path, {"val_batchs": 3})


def test_ignored_keys_are_real_keys_of_no_declared_meaning():
    from tui_trainer.config import ALIASES, DECLARED

    assert not set(IGNORED_KEYS) & (set(DECLARED) | set(ALIASES))


# ----------------------------------------------------------------------------- front ends

def test_warnings_come_through_the_command_line_loader(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    path = write(tmp_path, "iters: 3\nval_batches: 25\n")
    cfg = config_from_args(parser.parse_args(["--config", str(path), "--steps", "4"]))
    assert cfg.steps == 4 and cfg.load_warnings == [f"{path} line 2: val_batches: ignored by PPO (an SFT option of "
                                                    "mlx-lm; PPO has no validation set)"]


def test_refused_key_exits_2_with_one_line(tmp_path):
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["train", "--headless", "--config", str(write(tmp_path, {"hf_dataset": {"path": "billsum"}})),
                     "--run-dir", str(tmp_path / "run")])
    assert code == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "hf_dataset: not read; give the dataset as data:" in lines[0]
    assert not (tmp_path / "run").exists()


def test_warmup_ratio_counts_optimizer_updates():
    from tui_trainer.config import Config
    from tui_trainer.engine.trainer import make_schedule

    schedule = make_schedule(Config(warmup_ratio=0.1), 1e-3, total_updates=95)  # ceil(9.5) = 10 warm-up updates
    assert math.isclose(schedule(0).item(), 1e-8, rel_tol=1e-4)
    assert schedule(5).item() < 1e-3 * 0.6
    assert math.isclose(schedule(10).item(), 1e-3, rel_tol=1e-6)
    assert make_schedule(Config(warmup_ratio=0), 1e-3, total_updates=95) == 1e-3  # no warm-up: a constant
    default = make_schedule(Config(), 1e-3, total_updates=40)  # the default ramps the first fifth: 8 updates
    assert default(4).item() < 1e-3 * 0.6 and math.isclose(default(8).item(), 1e-3, rel_tol=1e-6)
    assert make_schedule(Config(warmup_steps=3), 1e-3, total_updates=40)(3).item() == pytest.approx(1e-3)


def test_warmup_steps_win_over_the_default_ratio_and_a_saved_config_keeps_both(tmp_path):
    from tui_trainer.config import Config, save_config

    assert load_config(write(tmp_path, {"warmup_steps": 4})).warmup_ratio is None
    assert load_config(write(tmp_path, {"warmup_ratio": 0})).warmup_ratio == 0
    save_config(Config(), tmp_path / "saved.yaml")
    again = load_config(tmp_path / "saved.yaml")
    assert (again.warmup_steps, again.warmup_ratio) == (0, 0.2) and not again.load_warnings


# ----------------------------------------------------------------------------- in a run (tiny model)

@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    import json

    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"say {w} please"}) + "\n" for w in ["alpha", "beta", "gamma"]))
    return path


def test_headless_run_shows_the_warnings_and_counts_epochs_in_steps(tiny_dir, prompts_file, tmp_path, capsys):
    path = write(tmp_path, {"model": str(tiny_dir), "data": str(prompts_file), "adapter_path": str(tmp_path / "run"),
                            "num_train_epochs": 1, "batch_size": 2, "num_generations": 2, "response_length": 6,
                            "lora_parameters": {"rank": 4}, "num_layers": 1, "save_every": 0,
                            "val_batches": 25, "judges": [{"name": "rules", "options":
                                                           {"callable": "test_trainer:char_length"}}]})
    assert main(["train", "--headless", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    line = path.read_text().splitlines().index("val_batches: 25") + 1
    assert f"{path} line {line}: val_batches: ignored by PPO" in " ".join(out.split())
    assert "num_train_epochs 1 over 3 prompts, 2 a step: 2 steps" in out  # ceil(1 * 3 / 2)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["steps"], saved["epochs"]) == (2, None)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_max_prompt_length_bounds_the_prompt(tiny_dir, prompts_file, tmp_path):
    from tui_trainer.config import Config, DataConfig
    from tui_trainer.errors import DataError
    from tui_trainer.run import build_run

    cfg = Config(model=str(tiny_dir), data=DataConfig(path=str(prompts_file)), run_dir=str(tmp_path / "run"),
                 max_prompt_tokens=5)
    with pytest.raises(DataError, match="longer than the 5 that fit"):
        build_run(cfg).run()
    cfg.max_prompt_tokens, cfg.max_seq_length, cfg.max_new_tokens = None, 16, 10
    with pytest.raises(DataError, match="longer than the 6 that fit"):  # max_seq_length - max_new_tokens
        build_run(cfg).run()
