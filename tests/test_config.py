"""Config: YAML loading, aliases, validation errors, command-line precedence, save/init round trips."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import yaml

from tui_trainer import cli
from tui_trainer.config import (
    FIELD_HELP,
    SECTIONS,
    AdapterConfig,
    Config,
    DataConfig,
    JudgeSpec,
    add_config_arguments,
    commented_yaml,
    config_from_args,
    config_to_dict,
    load_config,
    save_config,
)
from tui_trainer.errors import ConfigError


def write(tmp_path, text: str, name: str = "cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- loading

def test_no_file_gives_defaults():
    assert load_config() == Config()


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "# nothing set\n")) == Config()


def test_nested_sections_and_judges(tmp_path):
    cfg = load_config(write(tmp_path, """
model: some/model
adapter: {type: dora, rank: 16, scale: 2.5, layers: -1, keys: [self_attn.q_proj]}
data:
  path: prompts.csv
  prompt_field: question
  chat_template: false
  system_prompt: Be brief.
judges:
  - name: rules
    weight: 0.5
    options: {target_length: 20}
  - {name: llama, weight: 2}
"""))
    assert cfg.model == "some/model"
    assert cfg.adapter == AdapterConfig(type="dora", rank=16, scale=2.5, dropout=0.0, layers=-1,
                                        keys=["self_attn.q_proj"])
    assert cfg.data.path == "prompts.csv" and cfg.data.prompt_field == "question"
    assert cfg.data.chat_template is False and cfg.data.system_prompt == "Be brief."
    assert cfg.judges == [JudgeSpec("rules", 0.5, {"target_length": 20}), JudgeSpec("llama", 2.0, {})]
    assert isinstance(cfg.judges[1].weight, float)
    # keys not given keep their defaults
    assert cfg.data.split == "train" and cfg.beta == Config().beta


def test_judge_name_shorthand(tmp_path):
    cfg = load_config(write(tmp_path, "judges: [rules, human]\n"))
    assert [j.name for j in cfg.judges] == ["rules", "human"]
    assert all(j.weight == 1.0 and j.options == {} for j in cfg.judges)


def test_numeric_strings_are_numbers(tmp_path):
    # YAML 1.1 reads 1e-5 (no dot) as a string
    raw = yaml.safe_load("actor_lr: 1e-5\n")
    assert raw["actor_lr"] == "1e-5"
    cfg = load_config(write(tmp_path, "actor_lr: 1e-5\ncritic_lr: 3E-4\nbeta: '0.1'\nsteps: '1e3'\n"))
    assert cfg.actor_lr == pytest.approx(1e-5) and isinstance(cfg.actor_lr, float)
    assert cfg.critic_lr == pytest.approx(3e-4)
    assert cfg.beta == pytest.approx(0.1)
    assert cfg.steps == 1000 and isinstance(cfg.steps, int)


def test_int_field_takes_integral_float_only(tmp_path):
    assert load_config(write(tmp_path, "steps: 30.0\n")).steps == 30
    assert "expected an integer" in error_of(tmp_path, "steps: 30.5\n")


# ----------------------------------------------------------------------------- aliases

@pytest.mark.parametrize("alias,key,value", [
    ("kl_coef", "beta", 0.3), ("rl_kl_coef", "beta", 0.3), ("init_kl_coef", "beta", 0.3),
    ("clip_range", "epsilon", 0.1), ("rl_clip_range", "epsilon", 0.1), ("cliprange", "epsilon", 0.1),
    ("cliprange_value", "value_clip", 0.3), ("clip_range_value", "value_clip", 0.3),
    ("rl_gamma", "gamma", 0.9), ("rl_gae_lambda", "lam", 0.5), ("gae_lambda", "lam", 0.5),
    ("rl_num_ppo_epochs", "ppo_epochs", 3), ("num_ppo_epochs", "ppo_epochs", 3),
    ("rl_max_new_tokens", "max_new_tokens", 17), ("max_completion_length", "max_new_tokens", 17),
    ("response_length", "max_new_tokens", 17), ("learning_rate", "actor_lr", 3e-6),
    ("target", "kl_target", 6.0), ("horizon", "kl_horizon", 500),
    ("num_generations", "num_samples", 6), ("per_device_train_batch_size", "batch_size", 3),
    ("mini_batch_size", "minibatch_size", 3), ("gradient_accumulation_steps", "grad_accum", 2),
    ("vf_coef", "vf_coef", 0.5), ("max_grad_norm", "max_grad_norm", 0.5),
    ("whiten_rewards", "whiten_rewards", True), ("missing_eos_penalty", "missing_eos_penalty", 1.0),
])
def test_alias_maps_to_canonical_key(tmp_path, alias, key, value):
    cfg = load_config(write(tmp_path, yaml.safe_dump({alias: value})))
    assert getattr(cfg, key) == value
    assert getattr(cfg, key) != getattr(Config(), key)


def test_adapter_aliases_and_alpha_to_scale(tmp_path):
    cfg = load_config(write(tmp_path, "lora_rank: 16\nlora_alpha: 32\nlora_dropout: 0.1\n"))
    assert cfg.adapter.rank == 16
    assert cfg.adapter.scale == pytest.approx(2.0)  # alpha / rank, PEFT's multiplier
    assert cfg.adapter.dropout == pytest.approx(0.1)
    cfg = load_config(write(tmp_path, "rank: 4\nalpha: 8\n"))
    assert (cfg.adapter.rank, cfg.adapter.scale) == (4, 2.0)
    # inside the section, with the default rank of 8
    cfg = load_config(write(tmp_path, "adapter: {alpha: 4}\n"))
    assert cfg.adapter.scale == pytest.approx(0.5)
    # mlx-lm's own layout
    cfg = load_config(write(tmp_path, "fine_tune_type: dora\nnum_layers: 4\nlora_parameters: {rank: 2, scale: 10.0}\n"))
    assert cfg.adapter == AdapterConfig(type="dora", rank=2, scale=10.0, layers=4)


def test_alpha_and_scale_together_is_an_error(tmp_path):
    msg = error_of(tmp_path, "adapter: {alpha: 16, scale: 2.0}\n")
    assert "scale" in msg and "alpha" in msg


def test_override_alpha_recomputes_with_override_rank(tmp_path):
    path = write(tmp_path, "adapter: {scale: 5.0}\n")
    cfg = load_config(path, {"lora_alpha": 32, "adapter.rank": 16})
    assert cfg.adapter.scale == pytest.approx(2.0)


def test_alias_and_canonical_disagreeing_is_an_error(tmp_path):
    msg = error_of(tmp_path, "beta: 0.1\nkl_coef: 0.2\n")
    assert "beta" in msg and "kl_coef" in msg and "twice" in msg
    # agreeing is fine
    assert load_config(write(tmp_path, "beta: 0.1\nkl_coef: 0.1\n")).beta == 0.1


def test_judge_system_goes_to_llama_judges(tmp_path):
    cfg = load_config(write(tmp_path, """
judge_system: You are a strict grader.
judges:
  - name: rules
  - name: llama
    options: {model: judge.gguf}
"""))
    assert cfg.judges[0].options == {}
    assert cfg.judges[1].options == {"model": "judge.gguf", "system": "You are a strict grader."}


def test_judge_system_makes_a_llama_judge(tmp_path):
    cfg = load_config(write(tmp_path, "judge_system: Grade it.\n"))
    assert cfg.judges == [JudgeSpec("llama", 1.0, {"system": "Grade it."})]
    cfg = load_config(write(tmp_path, "judge_system: Grade it.\njudges: [rules]\n"))
    assert [j.name for j in cfg.judges] == ["rules", "llama"]
    assert cfg.judges[1].options["system"] == "Grade it."


# ----------------------------------------------------------------------------- errors

def test_unknown_key_suggests(tmp_path):
    msg = error_of(tmp_path, "seed: 1\nbetta: 0.1\n")
    assert "cfg.yaml line 2" in msg and "betta" in msg and "did you mean 'beta'" in msg


def test_unknown_key_in_section_suggests(tmp_path):
    msg = error_of(tmp_path, "adapter:\n  rnak: 4\n")
    assert "line 2" in msg and "adapter.rnak" in msg and "did you mean 'rank'" in msg


def test_unknown_judge_key(tmp_path):
    msg = error_of(tmp_path, "judges:\n  - {name: rules, wieght: 2}\n")
    assert "judges[0].wieght" in msg and "did you mean 'weight'" in msg


@pytest.mark.parametrize("text,needles", [
    ("steps: ten\n", ["steps", "expected an integer", "'ten'"]),
    ("beta: [1]\n", ["beta", "expected a number", "list"]),
    ("whiten_rewards: 1\n", ["whiten_rewards", "true or false", "int"]),
    ("model: 12\n", ["model", "expected text or null", "int"]),
    ("adapter: {keys: q_proj}\n", ["adapter.keys", "list of text"]),
    ("adapter: 4\n", ["adapter", "mapping"]),
    ("judges: [{name: rules, options: 3}]\n", ["judges[0].options", "mapping"]),
    ("judges: []\n", ["judges", "at least one"]),
    ("judges: [{weight: 2}]\n", ["judges[0]", "name"]),
    ("beta: .nan\n", ["beta", "finite"]),
])
def test_wrong_types(tmp_path, text, needles):
    msg = error_of(tmp_path, text)
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize("text,needles", [
    ("epsilon: 0\n", ["epsilon", "> 0"]),
    ("gamma: 0\n", ["gamma", "(0, 1]"]),
    ("gamma: 1.5\n", ["gamma", "(0, 1]"]),
    ("lam: -0.1\n", ["lam", "[0, 1]"]),
    ("temperature: -1\n", ["temperature", ">= 0"]),
    ("top_p: 0\n", ["top_p", "(0, 1]"]),
    ("top_p: 1.1\n", ["top_p", "(0, 1]"]),
    ("num_samples: 0\n", ["num_samples", ">= 1"]),
    ("mode: ppo2\n", ["mode", "ppo, pairwise, rloo, grpo", "did you mean 'ppo'"]),
    ("mode: pairwise\nnum_samples: 4\n", ["num_samples", "pairwise", "= 2"]),
    ("mode: rloo\nnum_samples: 1\n", ["num_samples", "rloo"]),
    ("adapter: {type: qlora}\n", ["adapter.type", "lora, dora, full"]),
    ("scheduler: cosin\n", ["scheduler", "did you mean 'cosine'"]),
    ("kl_estimator: k2\n", ["kl_estimator", "k1, k3"]),
    ("judge_failure: ignore\n", ["judge_failure", "drop, retry, stop"]),
    ("minibatch_size: 17\n", ["minibatch_size", "batch_size * num_samples = 16"]),
    ("steps: 0\n", ["steps", ">= 1"]),
    ("kl_target: 0\n", ["kl_target", "> 0"]),
    ("adapter: {dropout: 1.0}\n", ["adapter.dropout", "[0, 1)"]),
    ("adapter: {layers: 0}\n", ["adapter.layers", "-1"]),
    ("actor_lr: 0\n", ["actor_lr", "> 0"]),
    ("clip_range: -0.2\n", ["clip_range (= epsilon)", "> 0"]),
])
def test_out_of_range(tmp_path, text, needles):
    msg = error_of(tmp_path, text)
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_error_names_the_line(tmp_path):
    msg = error_of(tmp_path, "seed: 1\nsteps: 2\n\nbeta: -1\n")
    assert msg.startswith(f"{tmp_path / 'cfg.yaml'} line 4: beta:")


def test_default_minibatch_follows_a_small_batch(tmp_path):
    cfg = load_config(write(tmp_path, "batch_size: 1\nnum_samples: 2\n"))
    assert cfg.minibatch_size == 2  # 1 prompt x 2 samples; the default of 4 would not fit


@pytest.mark.parametrize("text,needles", [
    ("steps: 3\n  beta: 0.1\n", ["line 2", "invalid YAML"]),
    ("model: [unclosed\n", ["invalid YAML", "line"]),
    ("- a\n- b\n", ["mapping", "list"]),
    ("beta: 0.1\nbeta: 0.2\n", ["line 2", "beta", "twice"]),
])
def test_malformed_yaml(tmp_path, text, needles):
    msg = error_of(tmp_path, text)
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file") as info:
        load_config(tmp_path / "nope.yaml")
    assert "\n" not in str(info.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_config_flag_errors_point_into_the_file(tmp_path):
    path = write(tmp_path, "steps: 1\nbeta: oops\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    with pytest.raises(ConfigError) as info:
        config_from_args(parser.parse_args(["--config", str(path)]))
    assert str(info.value) == f"{path} line 2: beta: expected a number, got str 'oops'"


# ----------------------------------------------------------------------------- overrides + command line

def test_overrides_beat_the_file(tmp_path):
    path = write(tmp_path, "steps: 5\nbeta: 0.2\nadapter: {rank: 4, dropout: 0.1}\n")
    cfg = load_config(path, {"steps": 7, "adapter": {"rank": 2}, "data.path": "x.jsonl"})
    assert cfg.steps == 7 and cfg.beta == 0.2
    assert cfg.adapter.rank == 2 and cfg.adapter.dropout == pytest.approx(0.1)  # merged, not replaced
    assert cfg.data.path == "x.jsonl"


def parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(argv)


def test_all_flags_default_to_none():
    args = parse([])
    for name, value in vars(args).items():
        assert value is None, name
    assert config_from_args(args) == Config()


def test_flag_beats_yaml_beats_default(tmp_path):
    path = write(tmp_path, "steps: 5\nbeta: 0.2\nseed: 3\njudges: [llama]\n")
    cfg = config_from_args(parse(["--config", str(path), "--steps", "9", "--judge", "rules", "--judge", "human",
                                  "--data", "p.jsonl", "--actor-lr", "2e-5", "--run-dir", "runs/x"]))
    assert cfg.steps == 9  # flag
    assert cfg.beta == 0.2 and cfg.seed == 3  # YAML
    assert cfg.temperature == Config().temperature  # default
    assert [j.name for j in cfg.judges] == ["rules", "human"]  # --judge replaces
    assert cfg.data.path == "p.jsonl" and cfg.actor_lr == pytest.approx(2e-5) and cfg.run_dir == "runs/x"


@pytest.mark.parametrize("flag,value,key,expected", [
    ("--model", "m.gguf", "model", "m.gguf"), ("--mode", "rloo", "mode", "rloo"), ("--seed", "4", "seed", 4),
    ("--batch-size", "2", "batch_size", 2), ("--num-samples", "3", "num_samples", 3),
    ("--max-new-tokens", "9", "max_new_tokens", 9), ("--temperature", "0.5", "temperature", 0.5),
    ("--beta", "0.3", "beta", 0.3), ("--critic-lr", "0.01", "critic_lr", 0.01),
    ("--ppo-epochs", "3", "ppo_epochs", 3), ("--save-every", "0", "save_every", 0),
])
def test_each_flag(flag, value, key, expected):
    assert getattr(config_from_args(parse([flag, value])), key) == expected


def test_flag_errors_name_the_flag():
    with pytest.raises(ConfigError, match=r"^--steps: must be >= 1, got 0$"):
        config_from_args(parse(["--steps", "0"]))
    with pytest.raises(ConfigError, match=r"^--data: must not be empty"):
        config_from_args(parse(["--data", " "]))
    with pytest.raises(ConfigError, match=r"^--set kl_coef: must be >= 0, got -1$"):
        config_from_args(parse(["--set", "kl_coef=-1"]))


def test_set_any_key(tmp_path):
    cfg = config_from_args(parse(["--set", "adapter.rank=16", "--set", "whiten_rewards=true",
                                  "--set", "data.system_prompt=Be brief: one line", "--set", "kl_coef=0.5"]))
    assert cfg.adapter.rank == 16 and cfg.whiten_rewards is True and cfg.beta == 0.5
    assert cfg.data.system_prompt == "Be brief: one line"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config_from_args(parse(["--set", "rank"]))
    with pytest.raises(ConfigError, match="did you mean 'seed'"):
        config_from_args(parse(["--set", "sede=1"]))


# ----------------------------------------------------------------------------- save + round trips

def test_save_config_round_trips(tmp_path):
    cfg = Config(model="a/b", adapter=AdapterConfig(type="full", keys=["mlp.up_proj"], scale=1.5),
                 data=DataConfig(path="d.parquet", system_prompt="Line one\nline 'two': yes", shuffle=False),
                 mode="pairwise", num_samples=2, actor_lr=1e-6, kl_target=6.0, missing_eos_penalty=1.0,
                 judges=[JudgeSpec("llama", 0.7, {"system": "null", "nested": {"a": [1, 2]}}), JudgeSpec("human")])
    path = tmp_path / "sub" / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert config_to_dict(load_config(path)) == config_to_dict(cfg)
    assert not [p for p in path.parent.iterdir() if p.name != "config.yaml"]  # no temp file left


def test_save_config_replaces_atomically(tmp_path):
    path = tmp_path / "config.yaml"
    save_config(Config(steps=3), path)
    save_config(Config(steps=4), path)
    assert load_config(path).steps == 4


def test_every_key_has_help():
    for f in dataclasses.fields(Config):
        assert FIELD_HELP.get(f.name), f.name
    for sec, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert FIELD_HELP.get(f"{sec}.{f.name}"), f"{sec}.{f.name}"


def test_commented_yaml_loads_to_defaults_and_comments_every_key(tmp_path):
    text = commented_yaml()
    path = write(tmp_path, text)
    assert load_config(path) == Config()
    lines = text.splitlines()
    keys = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "-")) and ":" in stripped and not line.startswith("    "):
            keys += 1
            assert lines[i - 1].strip().startswith("# "), f"no comment above {line!r}"
    expected = len(dataclasses.fields(Config)) + sum(len(dataclasses.fields(c)) for c in SECTIONS.values())
    assert keys == expected


def test_init_writes_default_config(tmp_path, capsys):
    path = tmp_path / "conf" / "tui.yaml"
    assert cli.main(["init", str(path)]) == 0
    assert load_config(path) == Config()
    assert "# " in path.read_text()
    assert str(path) in capsys.readouterr().out


def test_init_refuses_to_overwrite(tmp_path, capsys):
    path = write(tmp_path, "steps: 3\n")
    assert cli.main(["init", str(path)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and err.count("\n") == 1
    assert path.read_text() == "steps: 3\n"  # untouched
    assert cli.main(["init", str(path), "--force"]) == 0
    assert load_config(path) == Config()


def test_init_default_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init"]) == 0
    assert load_config(tmp_path / "tui-trainer.yaml") == Config()


def test_target_kl_is_the_early_stop_not_the_controller_target(tmp_path):
    """Bug: target_kl was an alias of kl_target (the adaptive controller); in SB3 and TRL <= 0.11 it
    is the approx_kl early stop. TRL's controller target was `target`, which stays an alias."""
    cfg = load_config(write(tmp_path, "target_kl: 0.02\n"))
    assert cfg.target_kl == 0.02 and cfg.kl_target is None
    cfg = load_config(write(tmp_path, "target: 6.0\n"))
    assert cfg.kl_target == 6.0 and cfg.target_kl is None
    with pytest.raises(ConfigError, match="target_kl"):
        load_config(write(tmp_path, "target_kl: -1\n"))


def test_pairwise_defaults_to_two_samples(tmp_path):
    assert load_config(write(tmp_path, "mode: pairwise\n")).num_samples == 2
    assert load_config(write(tmp_path, "mode: grpo\n")).num_samples == Config().num_samples == 4
    with pytest.raises(ConfigError, match="num_samples = 2"):
        load_config(write(tmp_path, "mode: pairwise\nnum_samples: 4\n"))
