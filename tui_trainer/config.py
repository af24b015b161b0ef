"""Run configuration: dataclasses, loaded from YAML, overridden from the command line.

Precedence: explicit command-line flag > YAML file > default.

``load_config(path, overrides)`` reads a YAML file with ``yaml.safe_load``, maps the
names users bring from other tools (TRL, mlx-lm, autotrain, MLX-LoRA-Studio) onto ours
(see ``ALIASES``), checks every key, type and range, and returns a ``Config``. Every
problem is a ``ConfigError`` whose text is one line, naming the file, the line
and the key. Keys of those tools that PPO has no use for (mlx-lm's ``val_batches``,
TRL's ``report_to``, ...: ``IGNORED_KEYS``) are accepted with one warning line each, kept
in ``Config.load_warnings`` and logged by the trainer when the run starts; what we cannot
do yet (``REFUSED_KEYS``) is an error; a reward-model path becomes the ``reward`` judge. An mlx-lm ``lora_config.yaml``
loads as it is.

LoRA scale: mlx-lm multiplies the adapter output by ``scale``; PEFT and TRL
multiply it by ``lora_alpha / r``. A config that gives ``alpha`` (or
``lora_alpha``) therefore gets ``adapter.scale = alpha / rank``, which trains
the same adapter as PEFT would.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from tui_trainer.errors import ConfigError
from tui_trainer.fileio import atomic_write_text
from tui_trainer.values import WrongValue, convert, short


# ----------------------------------------------------------------------------- vocabulary

MODES = ("ppo", "pairwise", "rloo", "grpo")
PAIRWISE_OBJECTIVES = ("ppo", "studio", "studio_sigmoid")
ADAPTER_TYPES = ("lora", "dora", "full")
SCHEDULERS = ("constant", "linear", "cosine")
KL_ESTIMATORS = ("k1", "k3")
JUDGE_FAILURES = ("drop", "retry", "stop")


# ----------------------------------------------------------------------------- one declaration per key
#
# Every key is declared once, below, with key(default, help, aliases=, section_aliases=, check=, flag=):
# `init`'s comments, argparse's help and flags, the alias table, did-you-mean and the range checks
# are all generated from these declarations.

Check = Callable[[Any], "str | None"]  # value -> the problem (one line), or None


def key(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
        aliases: tuple[str, ...] = (), section_aliases: tuple[str, ...] = (), check: Check | None = None,
        flag: str | None = None) -> Any:
    """A config key: its default, one line of help, the names other tools give it (``aliases`` at
    the top level, ``section_aliases`` inside its section), its range check and its CLI flag."""
    meta = {"help": help, "aliases": aliases, "section_aliases": section_aliases, "check": check, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low:g}, got {v:g}"


def above(low: float) -> Check:
    return lambda v: None if v > low else f"must be > {low:g}, got {v:g}"


def within(low: float, high: float, ends: str) -> Check:
    """``ends``: "[]", "[)", "(]" or "()": which ends belong to the range."""
    def check(v):
        ok = (v >= low if ends[0] == "[" else v > low) and (v <= high if ends[1] == "]" else v < high)
        return None if ok else f"must be in {ends[0]}{low:g}, {high:g}{ends[1]}, got {v:g}"
    return check


def one_of(choices: tuple[str, ...]) -> Check:
    return lambda v: None if v in choices else \
        f"must be one of {', '.join(choices)}, got {v!r}{_did_you_mean(str(v), choices)}"


def not_empty(message: str = "must not be empty") -> Check:
    return lambda v: None if str(v).strip() != "" else message


def optional(check: Check) -> Check:
    """``check``, with null allowed."""
    return lambda v: None if v is None else check(v)


def _all_or_positive(v: int) -> str | None:
    return None if v == -1 or v >= 1 else f"must be -1 (all) or >= 1, got {v}"


TRACKERS = ("csv", "tensorboard", "wandb")
# the Python module each tracker needs, and the extra that installs it
TRACKER_PACKAGES = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}


def _trackers(v: list[str]) -> str | None:
    bad = [t for t in v if t not in TRACKERS]
    return None if not bad else \
        f"unknown tracker {bad[0]!r}: choose from {', '.join(TRACKERS)}{_did_you_mean(bad[0], TRACKERS)}"


def tracker_names(value: Any) -> list[str]:
    """``report_to`` as a list of tracker names: TRL's one string, mlx-lm's ``"wandb,swanlab"``, a list;
    ``none`` / null: none; ``all``: csv and every tracker whose package is installed."""
    import importlib.util

    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise WrongValue(f"expected a list of tracker names or one name, got {type(value).__name__} {short(value)}")
    out: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if name in ("", "none"):
            continue
        if name == "all":
            found = ["csv"] + [t for t, (module, _) in TRACKER_PACKAGES.items() if importlib.util.find_spec(module)]
            out += [t for t in found if t not in out]
        elif name not in out:
            out.append(name)
    return out


def _module_names(v: list[str] | None) -> str | None:
    ok = v is None or (len(v) > 0 and all(k.strip() for k in v))
    return None if ok else "must be null or a non-empty list of module names"


@dataclass
class JudgeSpec:
    name: str = "rules"
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AdapterConfig:
    type: str = key('lora', 'lora | dora | full (full trains every weight)', aliases=('fine_tune_type',), section_aliases=('fine_tune_type',), check=one_of(ADAPTER_TYPES))
    rank: int = key(8, 'adapter rank (alias lora_rank, r)', aliases=('lora_rank', 'rank', 'lora_r'), section_aliases=('r', 'lora_rank'), check=at_least(1))
    scale: float = key(20.0, 'mlx-lm scale multiplying the adapter output; giving alpha instead sets scale = alpha / rank', check=above(0))
    dropout: float = key(0.0, 'adapter dropout, 0 <= dropout < 1', aliases=('lora_dropout',), section_aliases=('lora_dropout',), check=within(0, 1, "[)"))
    layers: int = key(16, 'number of last transformer blocks that get adapters; -1 = all', aliases=('lora_layers', 'num_layers'), section_aliases=('num_layers',), check=_all_or_positive)
    keys: list[str] | None = key(None, 'module names inside a block to adapt, e.g. [self_attn.q_proj, self_attn.v_proj] (PEFT short names such as q_proj work too); null = mlx-lm defaults', aliases=('lora_target_modules', 'target_modules'), section_aliases=('target_modules',), check=_module_names)


@dataclass
class DataConfig:
    path: str | None = key(None, 'JSONL / JSON / parquet / CSV / TXT file, a saved datasets directory, or a Hugging Face hub dataset id (downloaded once, then read from the cache); null = embedded prompts', aliases=('dataset_name',), section_aliases=('dataset_name',), check=optional(not_empty("must not be empty (null = embedded prompts)")), flag='--data')
    subset: str | None = key(None, "the dataset's subset (datasets' config name), e.g. main for gsm8k; null = its default", aliases=('dataset_config',), section_aliases=('name', 'config_name', 'dataset_config'), check=optional(not_empty("must not be empty (null = the default subset)")))
    prompt_field: str = key('prompt', 'field holding the prompt text (a chat `messages` list is used when the row has one)', section_aliases=('prompt_key',), check=not_empty())
    split: str = key('train', "split, with datasets' slicing: train, train[:500], test[10%:]; a single file is the split train", check=not_empty())
    chat_template: bool = key(True, "wrap prompts in the tokenizer's chat template (false = plain text)", section_aliases=('use_chat_template',))
    system_prompt: str | None = key(None, "system message added to prompts that have none; null = the template's default", section_aliases=('system',))
    shuffle: bool = key(True, 'shuffle the prompts each epoch (deterministic from seed)')
    drop_long: bool = key(False, 'drop prompts longer than the context instead of stopping with an error')


@dataclass
class RewardTrainConfig:
    """`tui-trainer reward train`: a Bradley-Terry reward model (its own flags, not a run-config section)."""

    model: str | None = key(None, 'base model: mlx-lm model directory, Hugging Face repo id or .gguf file; null = embedded SmolLM2-135M-Instruct', check=optional(not_empty()), flag='--model')
    adapter_type: str = key('lora', 'lora | dora | full (full trains every weight)', check=one_of(ADAPTER_TYPES), flag='--adapter')
    rank: int = key(8, 'adapter rank', check=at_least(1), flag='--rank')
    scale: float = key(20.0, 'mlx-lm scale multiplying the adapter output', check=above(0), flag='--scale')
    layers: int = key(16, 'number of last transformer blocks that get adapters; -1 = all', check=_all_or_positive, flag='--layers')
    epochs: int = key(2, 'passes over the training pairs', check=at_least(1), flag='--epochs')
    batch_size: int = key(8, 'pairs per optimizer step', check=at_least(1), flag='--batch-size')
    learning_rate: float = key(5e-05, 'Adam learning rate (adapter and head)', check=above(0), flag='--lr')
    margin: float = key(0.0, 'Bradley-Terry margin m in -log sigmoid(r_c - r_r - m)', check=at_least(0), flag='--margin')
    center_coef: float = key(0.0, 'coefficient of the centring term (r_c + r_r)^2; 0 = off (TRL: 0.01)', check=at_least(0), flag='--center-coef')
    eval_fraction: float = key(0.1, 'share of the pairs held out for evaluation (at least one pair when > 0)', check=within(0, 1, "[)"), flag='--eval-fraction')
    eval_every: int = key(0, 'evaluate on the held-out pairs every N steps too; 0 = at the end of each epoch only', check=at_least(0), flag='--eval-every')
    max_length: int = key(1024, 'longest input in tokens; longer ones lose their start', check=at_least(2), flag='--max-length')
    chat_template: bool = key(True, "format [prompt, completion] with the tokenizer's chat template (false = plain text)", flag='--chat-template')
    max_grad_norm: float = key(1.0, 'gradient clipping norm', check=above(0), flag='--max-grad-norm')
    save_every: int = key(0, 'checkpoint (to resume from) every N steps too; 0 = at the end of each epoch only', check=at_least(0), flag='--save-every')
    seed: int = key(0, 'random seed (head initialisation, split, order)', check=at_least(0), flag='--seed')


def dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """A flag for each key of ``cls`` that declares one (default None: the declared default applies)."""
    for f in dataclasses.fields(cls):
        flag = f.metadata.get("flag")
        if flag:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(),
                                help=f"{f.metadata.get('help', '')} (default: {f.default})")


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """``cls`` with the flags given in ``args`` (checked, converted with values.convert); ConfigError."""
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        flag = f.metadata.get("flag")
        raw = getattr(args, f.name, None) if flag else None
        if raw is None:
            continue
        try:
            value = convert(raw, hints[f.name], text=True)
        except WrongValue as exc:
            raise ConfigError(f"{flag}: {exc}") from None
        problem = f.metadata.get("check") and f.metadata["check"](value)
        if problem:
            raise ConfigError(f"{flag}: {problem}")
        values[f.name] = value
    return cls(**values)


@dataclass
class Config:
    model: str | None = key(None, 'policy: mlx-lm model directory, Hugging Face repo id or .gguf file; null = embedded SmolLM2-135M-Instruct', aliases=('model_name_or_path',), check=optional(not_empty("must not be empty (null = embedded model)")), flag='--model')
    reference_model: str | None = key(None, 'KL reference: null = the policy with its adapter switched off (no second model in memory)', aliases=('ref_model',))
    quantized_base: bool | None = key(None, 'keep a quantized base quantized (QLoRA style); null = yes on GPU, dequantize to f32 on CPU')
    init_adapter: str | None = key(None, "start the policy from an mlx-lm adapter (SFT -> PPO): its folder (adapters.safetensors + adapter_config.json) or the .safetensors file; it must fit adapter:; the reference stays the base model (alias resume_adapter_file)", aliases=('resume_adapter_file',), check=optional(not_empty("must not be empty (null = a fresh adapter)")), flag='--init-adapter')
    adapter: AdapterConfig = key(help='what is trained (aliases: lora_rank/rank, lora_alpha/alpha, lora_dropout, num_layers, lora_parameters:)', factory=AdapterConfig)
    data: DataConfig = key(help='prompts to train on', factory=DataConfig)
    mode: str = key('ppo', 'ppo | pairwise | rloo | grpo (rloo and grpo use a group baseline, no value head)', check=one_of(MODES), flag='--mode')
    pairwise_objective: str = key('ppo', "pairwise mode: ppo (verdicts become rewards) | studio (MLX-LoRA-Studio objective, as documented) | studio_sigmoid (its variant that keeps the verdict's sign)", check=one_of(PAIRWISE_OBJECTIVES))
    batch_size: int = key(4, 'prompts per step (alias per_device_train_batch_size)', aliases=('per_device_train_batch_size',), check=at_least(1), flag='--batch-size')
    num_samples: int = key(4, 'completions per prompt; pairwise needs 2 and gets it by default (alias num_generations)', aliases=('num_generations',), check=at_least(1), flag='--num-samples')
    max_new_tokens: int = key(48, 'longest completion in tokens (aliases max_completion_length, response_length, rl_max_new_tokens)', aliases=('rl_max_new_tokens', 'max_completion_length', 'response_length'), check=at_least(1), flag='--max-new-tokens')
    max_prompt_tokens: int | None = key(None, 'longest prompt in tokens (alias max_prompt_length); null = what fits in max_seq_length', aliases=('max_prompt_length',), check=optional(at_least(1)))
    max_seq_length: int | None = key(None, "longest prompt + completion in tokens; null = the model's context, at most 4096", check=optional(at_least(2)))
    temperature: float = key(1.0, 'sampling temperature; 0 = greedy (alias rl_temperature)', aliases=('rl_temperature',), check=at_least(0), flag='--temperature')
    top_p: float = key(1.0, 'nucleus sampling, 0 < top_p <= 1 (1 = off) (alias rl_top_p)', aliases=('rl_top_p',), check=within(0, 1, "(]"))
    top_k: int = key(0, 'sample among the k likeliest tokens; 0 = off (alias rl_top_k)', aliases=('rl_top_k',), check=at_least(0))
    beta: float = key(0.05, 'KL penalty coefficient (aliases kl_coef, init_kl_coef, rl_kl_coef)', aliases=('kl_coef', 'rl_kl_coef', 'init_kl_coef'), check=at_least(0), flag='--beta')
    kl_target: float | None = key(None, 'adaptive KL controller target; null = fixed beta (alias target)', aliases=('target',), check=optional(above(0)))
    kl_horizon: int = key(10000, 'adaptive KL controller horizon in samples (alias horizon)', aliases=('horizon',), check=at_least(1))
    target_kl: float | None = key(None, "early stop: the rest of a step's minibatches are skipped once one has approx_kl > 1.5 x target_kl (SB3 / TRL <= 0.11); null = never", check=optional(above(0)))
    kl_estimator: str = key('k1', 'k1 | k3: the KL estimator reported and penalised', check=one_of(KL_ESTIMATORS))
    epsilon: float = key(0.2, 'policy ratio clip range (aliases clip_range, cliprange, rl_clip_range)', aliases=('clip_range', 'rl_clip_range', 'cliprange'), check=above(0))
    value_clip: float = key(0.2, 'value clip range (aliases cliprange_value, clip_range_value, rl_value_clip_range)', aliases=('cliprange_value', 'clip_range_value', 'rl_value_clip_range'), check=above(0))
    vf_coef: float = key(0.1, 'value loss coefficient (alias rl_value_loss_coef)', aliases=('rl_value_loss_coef',), check=at_least(0))
    entropy_coef: float = key(0.0, 'entropy bonus coefficient; 0 = off', check=at_least(0))
    gamma: float = key(1.0, 'discount, 0 < gamma <= 1 (alias rl_gamma)', aliases=('rl_gamma',), check=within(0, 1, "(]"))
    lam: float = key(0.95, 'GAE lambda, 0 <= lam <= 1 (aliases gae_lambda, rl_gae_lambda)', aliases=('rl_gae_lambda', 'gae_lambda'), check=within(0, 1, "[]"))
    ppo_epochs: int = key(2, 'passes over each batch of rollouts (aliases num_ppo_epochs, rl_num_ppo_epochs, num_iterations)', aliases=('rl_num_ppo_epochs', 'num_ppo_epochs', 'num_iterations'), check=at_least(1), flag='--ppo-epochs')
    minibatch_size: int = key(4, 'sequences per minibatch, at most batch_size * num_samples (aliases mini_batch_size, rl_mini_batch_size; num_mini_batches: N sets it to batch_size * num_samples / N)', aliases=('mini_batch_size', 'rl_mini_batch_size'), check=at_least(1))
    grad_accum: int = key(1, 'minibatches whose gradients are summed before an optimizer step (aliases gradient_accumulation_steps, grad_accumulation_steps)', aliases=('gradient_accumulation_steps', 'grad_accumulation_steps'), check=at_least(1))
    actor_lr: float = key(2e-05, 'policy (adapter) learning rate (alias learning_rate)', aliases=('learning_rate',), check=above(0), flag='--actor-lr')
    critic_lr: float = key(0.0001, 'value head learning rate', check=at_least(0), flag='--critic-lr')
    scheduler: str = key('constant', 'learning-rate schedule: constant | linear | cosine', aliases=('lr_scheduler_type',), check=one_of(SCHEDULERS))
    warmup_steps: int = key(0, 'optimizer updates of linear learning-rate warm-up; > 0 wins over warmup_ratio', check=at_least(0))
    warmup_ratio: float | None = key(0.2, 'warm-up as a fraction of all optimizer updates, 0 <= ratio < 1 (TRL); 0 turns the warm-up off', check=optional(within(0, 1, "[)")))
    max_grad_norm: float = key(1.0, 'gradient clipping norm', check=above(0))
    whiten_rewards: bool = key(False, 'whiten rewards over the batch before GAE')
    score_scale: float = key(1.0, 'multiply judge scores by this before they become rewards', check=above(0))
    score_clip: float | None = key(None, 'clip scaled scores to [-score_clip, score_clip]; null = no clipping', check=optional(above(0)))
    missing_eos_penalty: float | None = key(None, 'subtracted from the score of a completion that never emits EOS; null = off', check=optional(at_least(0)))
    seed: int = key(0, 'random seed (sampling, data order, initialisation)', check=at_least(0), flag='--seed')
    steps: int = key(20, 'PPO steps to run (aliases max_steps, iters)', aliases=('max_steps', 'iters'), check=at_least(1), flag='--steps')
    epochs: float | None = key(None, 'passes over the prompts instead of steps: steps = ceil(epochs * prompts / batch_size); steps wins when both are given (alias num_train_epochs)', aliases=('num_train_epochs',), check=optional(above(0)))
    save_every: int = key(10, 'checkpoint every N steps (and always on stop); 0 = only on stop', aliases=('save_steps',), check=at_least(0), flag='--save-every')
    eval_every: int = key(0, 'every N steps, score the policy on a fixed set of prompts (the first eval_prompts of the data, one sample each, the same sampling randomness every time) with the judges: eval_score in the metrics, a measure of the policy that does not move with the prompts a step draws; 0 = off', check=at_least(0), flag='--eval-every')
    eval_prompts: int = key(16, 'prompts in the fixed evaluation set of eval_every (the first of the data, in file order)', check=at_least(1))
    run_dir: str = key('runs/default', 'where config.yaml, metrics.jsonl, samples.jsonl and checkpoints/ go; each checkpoints/<step>/ is an mlx-lm adapter path (aliases output_dir, adapter_path)', aliases=('output_dir', 'adapter_path'), check=not_empty(), flag='--run-dir')
    report_to: list[str] = key(help="experiment trackers, each fed every step's metrics: any of csv (metrics.csv), tensorboard (tensorboard/ in the run directory; the tensorboard extra), wandb (the wandb extra); a list, or one name / a comma-separated string as TRL and mlx-lm write it; all = csv + the installed ones; none / null = none", factory=list, check=lambda v: _trackers(v), flag='--report-to')
    judges: list[JudgeSpec] = key(help='reward judges, weighted sum of their scores: a list of {name, weight, options}', factory=lambda: [JudgeSpec()])
    judge_failure: str = key('drop', 'when a judge fails: drop (the sample) | retry | stop (the run)', check=one_of(JUDGE_FAILURES))
    judge_retries: int = key(2, 'retries before a failing judge counts as failed', check=at_least(0))
    judge_timeout: float = key(120.0, 'seconds a judge may take for one call', check=above(0))
    rank_timeout: float = key(600.0, 'several ranks (train --launch / --hosts): seconds a rank waits for the others in one collective before it stops the job (a rank that died or hangs); longer than the slowest rank may lag (an evaluation on rank 0, a slow judge); a person answering is not timed; 0 = no limit', check=at_least(0))

    def __post_init__(self) -> None:
        # not a key: one line per thing the loader accepted but will not use (an SFT-only key of
        # mlx-lm, a TRL logging option, ...); the trainer logs them as warnings when the run starts
        self.load_warnings: list[str] = []


SECTIONS = {"adapter": AdapterConfig, "data": DataConfig}


def _declared() -> dict[str, dataclasses.Field]:
    """Every key as ``{dotted name: its declaration}`` (sections' keys as "section.key")."""
    out: dict[str, dataclasses.Field] = {}
    for f in dataclasses.fields(Config):
        out[f.name] = f
        if f.name in SECTIONS:
            out.update({f"{f.name}.{g.name}": g for g in dataclasses.fields(SECTIONS[f.name])})
    return out


DECLARED = _declared()
# ``alpha`` is not a key of its own: PEFT's lora_alpha, turned into adapter.scale = alpha / rank
_ALPHA_NAMES = ("lora_alpha", "alpha")
# Names from other tools -> our key ("section.key" for keys inside a section).
ALIASES: dict[str, str] = {a: k for k, f in DECLARED.items() for a in f.metadata.get("aliases", ())}
ALIASES.update({a: "adapter.alpha" for a in _ALPHA_NAMES})
# mlx-lm's adapter section name
SECTION_ALIASES = {"lora_parameters": "adapter"}
# Spellings inside a section.
SECTION_KEY_ALIASES: dict[str, dict[str, str]] = {
    sec: {a: f.name for f in dataclasses.fields(cls) for a in f.metadata.get("section_aliases", ())}
    for sec, cls in SECTIONS.items()}
SECTION_KEY_ALIASES["adapter"]["lora_alpha"] = "alpha"
# Keys of other tools that PPO has no use for: accepted, each with one warning line (why it is ignored).
_SFT = "an SFT option of mlx-lm; PPO has no "
_ADAM = "PPO uses Adam (eps 1e-5, no weight decay) for the adapter and the value head"
_LOGS = "metrics go to metrics.jsonl in the run directory every step (and to the trackers of report_to:)"
IGNORED_KEYS: dict[str, str] = {
    "train": "tui-trainer always trains", "test": _SFT + "test set", "test_batches": _SFT + "test set",
    "val_batches": _SFT + "validation set", "steps_per_eval": _SFT + "validation set",
    "steps_per_report": "metrics are reported every step", "mask_prompt": "PPO trains on completions only",
    "training_mode": "the algorithm is mode: (ppo, pairwise, rloo, grpo)",
    "optimizer": _ADAM, "optimizer_config": _ADAM, "weight_decay": _ADAM, "adam_epsilon": _ADAM,
    "lr_schedule": "the schedule is scheduler: (constant, linear, cosine) with warmup_steps:",
    "grad_checkpoint": "not available; memory follows minibatch_size", "gradient_checkpointing":
        "not available; memory follows minibatch_size", "clear_cache_threshold": "an mlx-lm memory option",
    "trust_remote_code": "models load without remote code",
    "project_name": _LOGS, "run_name": _LOGS, "logging_steps": _LOGS, "logging_dir": _LOGS,
    "eval_strategy": _SFT + "evaluation", "eval_steps": _SFT + "evaluation",
    "num_sample_generations": "samples.jsonl holds every step's completions",
    "bf16": "training runs in float32 (bf16 has no BLAS path on CPU)",
    "fp16": "training runs in float32 (bf16 has no BLAS path on CPU)",
    "push_to_hub": "nothing is uploaded; checkpoints stay in the run directory",
    "save_total_limit": "every checkpoint is kept",
    "dataset_test_split": _SFT + "test set", "local_rollout_forward_batch_size": "the rollout is one batched pass",
    "stop_token": "completions stop at the tokenizer's EOS tokens", "exp_name": _LOGS, "dataset_num_proc": "prompts "
    "are read in one process",
}
# Keys of other tools for what tui-trainer cannot do yet: one line, exit 2.
REFUSED_KEYS: dict[str, str] = {
    "hf_dataset": "not read; give the dataset as data: {path: NAME or folder, split: train, prompt_field: prompt} "
                  "(a datasets dataset already in the local cache)",
}
# autotrain's / Tunix's reward-model path: the run's judge becomes the reward model in that directory
# (judges: [{name: reward, options: {path: ...}}]); given with judges: too, it is "given twice"
REWARD_MODEL_KEYS = ("rl_reward_model_path", "reward_model_path")
# TRL's num_mini_batches: not a key of its own, it sets minibatch_size = batch_size * num_samples / N
NUM_MINI_BATCHES = "num_mini_batches"
# TRL's total_episodes (prompts to train on): not a key of its own, it sets steps = ceil(N / batch_size)
TOTAL_EPISODES = "total_episodes"

# ``judge_system: TEXT`` becomes ``options.system`` of the llama judge(s).
JUDGE_SYSTEM_KEY = "judge_system"
# PEFT's spellings of adapter.keys, which may be one string ("all-linear")
_PEFT_MODULES = ("lora_target_modules", "target_modules")
# names that are not keys but set keys (in _build)
_DERIVED = (JUDGE_SYSTEM_KEY, NUM_MINI_BATCHES, TOTAL_EPISODES)
LLAMA_JUDGE = "llama"
# One line of help per key: `tui-trainer init` writes it above the key, argparse shows it.
FIELD_HELP: dict[str, str] = {k: f.metadata["help"] for k, f in DECLARED.items()}

# Why the learning defaults are what they are (`tui-trainer init` writes it into the config).
DEFAULTS_REASON = ("Defaults from a measured sweep (bench/learning.py, bench/RESULTS.md): actor_lr 2e-5 with 4 "
                   "samples per prompt keeps approx_kl near 0.01 and clip fraction under 0.1 per step (5e-5 left "
                   "the trust region: approx_kl 0.06-0.2, KL > 5 nats by step 8); warmup_ratio 0.2 ramps the "
                   "first fifth of the updates so the score rises after a steady start instead of jumping.")

_SECTION_ORDER_HEADERS = {"model": "model", "mode": "algorithm", "seed": "run"}

_MISSING = object()


# ----------------------------------------------------------------------------- loading


@dataclass
class _Value:
    value: Any
    where: str  # "file.yaml line 7", "--steps", "overrides"
    key: str  # the key as the user spelled it


class _Source:
    """One layer of settings (a YAML file, overrides, command-line flags)."""

    def __init__(self, name: str, lines: dict[str, int] | None = None, labels: dict[str, str] | None = None):
        self.name = name
        self.lines = lines or {}
        self.labels = labels or {}

    def where(self, raw_path: str) -> str:
        if raw_path in self.labels:
            return self.labels[raw_path]
        line = self.lines.get(raw_path)
        return f"{self.name} line {line}" if line else self.name


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _fail(where: str, key: str, message: str) -> ConfigError:
    spelled = key.split(" (= ")[0]
    if where.endswith(f" {spelled}") or CLI_FLAGS.get(where, ("",))[0] == spelled:
        key = ""  # "--steps" and "--set adapter.rank" already name the key
    text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
    return ConfigError(" ".join(text.split()))


def _flatten(raw: dict, source: _Source, warnings: list[str] | None = None) -> dict[str, _Value]:
    """Map one source's keys (aliases, sections, dotted keys) onto canonical dotted keys; keys that
    PPO ignores (IGNORED_KEYS) add a line to ``warnings``."""
    top = _fields(Config)
    out: dict[str, _Value] = {}

    def put(target: str, value: Any, raw_key: str, raw_path: str) -> None:
        where = source.where(raw_path)
        same = raw_key.split(".")[-1] == target.split(".")[-1]
        shown = raw_key if same or target in _DERIVED else f"{raw_key} (= {target})"
        if target in out and out[target].value != value:
            first = out[target].key.split(" (= ")[0]
            raise _fail(where, "", f"{target} is given twice, as {first} and {raw_key}, with different values")
        if raw_key.split(".")[-1] in _PEFT_MODULES and isinstance(value, str):
            value = [value]  # PEFT's target_modules: "all-linear" (or one module name)
        # alpha and scale say the same thing two ways
        twin = {"adapter.alpha": "adapter.scale", "adapter.scale": "adapter.alpha"}.get(target)
        if twin in out:
            raise _fail(where, raw_key, f"give adapter.scale or alpha, not both (scale = alpha / rank); {out[twin].key} is also set")
        out[target] = _Value(value, where, shown)

    def section(sec: str, body: Any, raw_key: str) -> None:
        if body is None:
            return
        if sec == "data" and isinstance(body, str):
            put("data.path", body, raw_key, raw_key)  # `data: prompts.jsonl` shorthand
            return
        if not isinstance(body, dict):
            raise _fail(source.where(raw_key), raw_key, f"expected a mapping of {sec} settings, got {type(body).__name__} {short(body)}")
        known = set(_fields(SECTIONS[sec])) | ({"alpha"} if sec == "adapter" else set())
        aliases = SECTION_KEY_ALIASES.get(sec, {})
        for sub, value in body.items():
            raw_path = f"{raw_key}.{sub}"
            sub_s = str(sub)
            name = aliases.get(sub_s, sub_s)
            if name not in known:
                raise _fail(source.where(raw_path), raw_path,
                            f"unknown key in {sec}{_did_you_mean(sub_s, sorted(known | set(aliases)))}")
            put(f"{sec}.{name}", value, raw_path, raw_path)

    for key, value in raw.items():
        key_s = str(key)
        if not isinstance(key, str):
            raise _fail(source.where(key_s), key_s, "keys must be text")
        if key_s in SECTIONS or key_s in SECTION_ALIASES:
            section(SECTION_ALIASES.get(key_s, key_s), value, key_s)
        elif "." in key_s and key_s.split(".", 1)[0] in SECTIONS:
            sec, sub = key_s.split(".", 1)
            section(sec, {sub: value}, sec)
        elif key_s in _DERIVED:
            put(key_s, value, key_s, key_s)
        elif key_s in IGNORED_KEYS:
            if warnings is not None:
                warnings.append(f"{source.where(key_s)}: {key_s}: ignored by PPO ({IGNORED_KEYS[key_s]})")
        elif key_s in REFUSED_KEYS:
            raise _fail(source.where(key_s), key_s, REFUSED_KEYS[key_s])
        elif key_s in REWARD_MODEL_KEYS:
            if not isinstance(value, str) or not value.strip():
                raise _fail(source.where(key_s), key_s, f"expected a reward-model directory, got {short(value)}")
            put("judges", [{"name": "reward", "options": {"path": value}}], key_s, key_s)
        elif key_s in top:
            put(key_s, value, key_s, key_s)
        elif key_s in ALIASES:
            put(ALIASES[key_s], value, key_s, key_s)
        else:
            choices = set(top) | set(ALIASES) | set(IGNORED_KEYS) | set(_DERIVED) | set(REWARD_MODEL_KEYS) | {
                f"{s}.{f}" for s, cls in SECTIONS.items() for f in _fields(cls)}
            raise _fail(source.where(key_s), key_s, f"unknown key{_did_you_mean(key_s, sorted(choices))}")
    return out


def _merge(layers: list[dict[str, _Value]]) -> dict[str, _Value]:
    merged: dict[str, _Value] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "adapter.alpha":
                merged.pop("adapter.scale", None)
            elif key == "adapter.scale":
                merged.pop("adapter.alpha", None)
            merged[key] = value
    return merged


# ----------------------------------------------------------------------------- types

def _coerce(value: Any, tp: Any, v: _Value) -> Any:
    """``value`` checked against the annotation ``tp`` by the one coercer (tui_trainer.values)."""
    try:
        return convert(value, tp)
    except WrongValue as e:
        raise _fail(v.where, v.key, str(e)) from None


def judge_specs(value: Any, where: str = "judge list") -> list[JudgeSpec]:
    """``value`` (a list of {name, weight, options} mappings, judge names or JudgeSpecs) as checked
    JudgeSpecs, or a ConfigError (one line). The one check of judge entries: config files and
    ``build_judge_set`` both come through here."""
    if isinstance(value, JudgeSpec):
        value = [value]
    if isinstance(value, list):
        value = [dataclasses.asdict(x) if isinstance(x, JudgeSpec) else x for x in value]
    return _judges(value, _Value(value, where, "judges"))


def _judges(value: Any, v: _Value) -> list[JudgeSpec]:
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise _fail(v.where, v.key, f"expected a list of {{name, weight, options}}, got {type(value).__name__} {short(value)}")
    if not value:
        raise _fail(v.where, v.key, "no judges: list at least one {name, weight, options}")
    known = _fields(JudgeSpec)
    hints = _hints(JudgeSpec)
    specs = []
    for i, item in enumerate(value):
        label = _Value(item, v.where, f"{v.key}[{i}]")
        if isinstance(item, str):  # `judges: [rules, llama]` shorthand
            item = {"name": item}
        if not isinstance(item, dict):
            raise _fail(v.where, label.key, f"expected a mapping {{name, weight, options}} or a judge name, got {type(item).__name__} {short(item)}")
        kwargs = {}
        for key, sub in item.items():
            if key == "options" and sub is None:
                sub = {}
            if key not in known:
                raise _fail(v.where, f"{label.key}.{key}", f"unknown judge key{_did_you_mean(str(key), known)}")
            kwargs[key] = _coerce(sub, hints[key], _Value(sub, v.where, f"{label.key}.{key}"))
        if "name" not in kwargs:
            raise _fail(v.where, label.key, "a judge needs a name")
        if not kwargs["name"].strip():
            raise _fail(v.where, f"{label.key}.name", "must not be empty")
        specs.append(JudgeSpec(**kwargs))
    return specs


# ----------------------------------------------------------------------------- build + validate

def _build(merged: dict[str, _Value], warnings: list[str] | None = None) -> Config:
    cfg = Config()
    cfg.load_warnings = warnings if warnings is not None else []
    top_hints = _hints(Config)
    for key, v in merged.items():
        if key in (*_DERIVED, "adapter.alpha"):
            continue
        if key == "judges":
            cfg.judges = _judges(v.value, v)
        elif key == "report_to":
            try:
                cfg.report_to = tracker_names(v.value)
            except WrongValue as e:
                raise _fail(v.where, v.key, str(e)) from None
        elif "." in key:
            sec, sub = key.split(".", 1)
            setattr(getattr(cfg, sec), sub, _coerce(v.value, _hints(SECTIONS[sec])[sub], v))
        else:
            setattr(cfg, key, _coerce(v.value, top_hints[key], v))

    alpha = merged.get("adapter.alpha")
    if alpha is not None:
        a = _coerce(alpha.value, float, alpha)
        if a <= 0:
            raise _fail(alpha.where, alpha.key, f"must be > 0, got {a:g}")
        if cfg.adapter.rank < 1:
            rank = merged.get("adapter.rank") or alpha
            raise _fail(rank.where, rank.key, f"adapter rank must be >= 1, got {cfg.adapter.rank}")
        cfg.adapter.scale = a / cfg.adapter.rank

    system = merged.get(JUDGE_SYSTEM_KEY)
    if system is not None:
        text = _coerce(system.value, str, system)
        llamas = [j for j in cfg.judges if j.name == LLAMA_JUDGE]
        if not llamas:
            spec = JudgeSpec(name=LLAMA_JUDGE, weight=1.0)
            # the default judge list gives way; a list the user wrote gains a llama judge
            cfg.judges = [spec] if "judges" not in merged else [*cfg.judges, spec]
            llamas = [spec]
        for judge in llamas:
            judge.options.setdefault("system", text)

    # pairwise compares two completions of a prompt: its default is 2 samples, not 4
    if "num_samples" not in merged and cfg.mode == "pairwise":
        cfg.num_samples = 2
    # TRL's spellings that are computed from other keys: the explicit key wins, as in TRL
    episodes = merged.get(TOTAL_EPISODES)
    if episodes is not None:
        n = _coerce(episodes.value, int, episodes)
        if n < 1:
            raise _fail(episodes.where, episodes.key, f"must be >= 1, got {n}")
        if "steps" in merged:
            cfg.load_warnings.append(f"{episodes.where}: {episodes.key}: ignored "
                                     f"({merged['steps'].key} is given and wins)")
        else:
            cfg.steps = -(-n // cfg.batch_size)
            if cfg.epochs is not None and "epochs" in merged:
                v = merged["epochs"]
                cfg.load_warnings.append(f"{v.where}: {v.key}: ignored ({episodes.key} is given and wins)")
                cfg.epochs = None
    if "steps" in merged and "epochs" in merged and cfg.epochs is not None:
        v = merged["epochs"]
        cfg.load_warnings.append(f"{v.where}: {v.key}: ignored ({merged['steps'].key} is given and wins)")
        cfg.epochs = None
    # as in transformers' TrainingArguments: warmup_steps > 0 wins over warmup_ratio, 0 leaves the ratio
    if cfg.warmup_steps > 0 and cfg.warmup_ratio is not None:
        if "warmup_ratio" in merged:
            v = merged["warmup_ratio"]
            cfg.load_warnings.append(f"{v.where}: {v.key}: ignored ({merged['warmup_steps'].key} is given and wins)")
        cfg.warmup_ratio = None
    n_mb = merged.get(NUM_MINI_BATCHES)
    if n_mb is not None:
        n = _coerce(n_mb.value, int, n_mb)
        rollouts = cfg.batch_size * cfg.num_samples
        if "minibatch_size" in merged:
            raise _fail(n_mb.where, n_mb.key, f"give minibatch_size or num_mini_batches, not both; "
                                              f"{merged['minibatch_size'].key} is also set")
        if n < 1 or rollouts % n:
            raise _fail(n_mb.where, n_mb.key, f"must divide batch_size * num_samples = {rollouts} into equal "
                                              f"minibatches, got {n}")
        cfg.minibatch_size = rollouts // n
    # the default minibatch follows a smaller batch instead of failing on it
    if "minibatch_size" not in merged:
        cfg.minibatch_size = max(1, min(cfg.minibatch_size, cfg.batch_size * cfg.num_samples))

    _validate(cfg, merged)
    return cfg


def _validate(cfg: Config, merged: dict[str, _Value]) -> None:
    def check(key: str, ok: bool, message: str) -> None:
        if ok:
            return
        v = merged.get(key)
        if v is None and key == "adapter.scale":
            v = merged.get("adapter.alpha")
        where, shown = (v.where, v.key) if v is not None else ("default", key)
        raise _fail(where, shown, message)

    for dotted, decl in DECLARED.items():  # each key's own range, as declared
        rule = decl.metadata.get("check")
        if rule is not None:
            sec, _, name = dotted.rpartition(".")
            problem = rule(getattr(getattr(cfg, sec) if sec else cfg, name))
            check(dotted, problem is None, problem or "")
    # checks across keys
    if cfg.mode == "pairwise":
        check("num_samples", cfg.num_samples == 2, f"pairwise mode needs num_samples = 2, got {cfg.num_samples}")
    if cfg.mode in ("rloo", "grpo"):
        check("num_samples", cfg.num_samples >= 2,
              f"{cfg.mode} mode needs num_samples >= 2 (its baseline is the other samples of a prompt), got {cfg.num_samples}")
    rollouts = cfg.batch_size * cfg.num_samples
    check("minibatch_size", cfg.minibatch_size <= rollouts,
          f"{cfg.minibatch_size} is larger than batch_size * num_samples = {rollouts}")
    if cfg.max_seq_length is not None:
        check("max_seq_length", cfg.max_seq_length > cfg.max_new_tokens,
              f"{cfg.max_seq_length} leaves no room for a prompt before max_new_tokens = {cfg.max_new_tokens}")


# ----------------------------------------------------------------------------- YAML files

def _read_yaml(path: str | os.PathLike) -> tuple[dict, _Source]:
    p = Path(path).expanduser()
    name = str(path)
    if p.is_dir():
        raise ConfigError(f"{name}: is a directory, not a config file")
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{name}: {size / 2**20:.1f} MiB is not a config file (a config is a few KiB; "
                              f"the limit is {MAX_CONFIG_BYTES // 2**20} MiB)")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such config file (write one with: tui-trainer init {name})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not a text file (expected UTF-8 YAML)") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read ({exc.strerror or type(exc).__name__})") from None
    try:
        node, raw = _parse_yaml(text, name)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "malformed YAML"
        raise ConfigError(" ".join(f"{name}{at}: invalid YAML: {problem}".split())) from None
    except yaml.YAMLError as exc:
        raise ConfigError(" ".join(f"{name}: invalid YAML: {exc}".split())) from None
    if raw is None:
        return {}, _Source(name)
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping of keys to values at the top level, got {type(raw).__name__}")
    lines: dict[str, int] = {}
    _key_lines(node, "", lines, name)
    return raw, _Source(name, lines)


MAX_CONFIG_BYTES = 1 << 20
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when the wheel has it


def _parse_yaml(text: str, name: str) -> tuple[yaml.Node | None, Any]:
    """One parse: the node tree (for key lines) and the Python value built from it.

    Aliases (``*name``) are refused: nine nested ones expand to 9^9 values when the config is
    written back (a "billion laughs"), and a config has no need for them. A node reached twice
    in the tree is an alias, so the check stops at the first one, before any expansion.
    """
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        seen: set[int] = set()
        todo = [node]
        while todo:
            n = todo.pop()
            if id(n) in seen:
                line = n.start_mark.line + 1 if n.start_mark is not None else 0
                raise ConfigError(f"{name} line {line}: YAML anchors and aliases (&name, *name) are "
                                  "not supported in a config; write the values out")
            seen.add(id(n))
            if isinstance(n, yaml.MappingNode):
                for k, v in n.value:
                    todo += [k, v]
            elif isinstance(n, yaml.SequenceNode):
                todo += n.value
        return node, loader.construct_document(node)
    finally:
        loader.dispose()


def _key_lines(node: yaml.Node, prefix: str, lines: dict[str, int], name: str) -> None:
    """Record the line of every mapping key (dotted path); reject a key given twice in one mapping."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[str] = set()
    for knode, vnode in node.value:
        key = str(knode.value)
        path = f"{prefix}{key}"
        line = knode.start_mark.line + 1
        if key in seen:
            raise ConfigError(f"{name} line {line}: {path}: key given twice in the same mapping")
        seen.add(key)
        lines[path] = line
        if not prefix and isinstance(vnode, yaml.MappingNode):
            _key_lines(vnode, f"{path}.", lines, name)


def _load(path: str | os.PathLike | None, layers: list[tuple[dict, _Source]]) -> Config:
    flat = []
    warnings: list[str] = []
    if path is not None:
        raw, source = _read_yaml(path)
        flat.append(_flatten(raw, source, warnings))
    for raw, source in layers:
        if raw:
            if not isinstance(raw, dict):
                raise ConfigError(f"{source.name}: expected a mapping of keys to values, got {type(raw).__name__}")
            flat.append(_flatten(raw, source, warnings))
    return _build(_merge(flat), warnings)


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Config:
    """Defaults < the YAML file at ``path`` < ``overrides`` (keys as in YAML; "adapter.rank" works too)."""
    return _load(path, [(overrides or {}, _Source("overrides"))])


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML (temp file + rename); ``load_config(path)`` gives it back."""
    text = "# tui-trainer config, as resolved for this run\n" + yaml.safe_dump(
        config_to_dict(cfg), sort_keys=False, allow_unicode=True, width=100)
    atomic_write_text(path, text)


def _scalar(value: Any) -> str:
    if isinstance(value, str) and ("\n" in value or not value.isprintable()):
        text = yaml.safe_dump(value, default_style='"', width=float("inf"), allow_unicode=True)
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True)
    text = text.strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    if text.endswith("..."):
        text = text[:-3].rstrip()
    return text


def commented_yaml(cfg: Config | None = None) -> str:
    """``cfg`` (default: the defaults) as YAML with a one-line comment above every key."""
    cfg = cfg or Config()
    out = [
        "# tui-trainer configuration (written by `tui-trainer init`).",
        "# Precedence: command-line flag > this file > built-in default. Unknown keys are errors.",
        "# Names from other tools work as aliases: kl_coef -> beta, clip_range -> epsilon,",
        "# gae_lambda -> lam, learning_rate -> actor_lr, lora_alpha -> adapter.scale = alpha / rank, ...",
        "# An mlx-lm lora_config.yaml loads as it is (iters -> steps, lora_parameters -> adapter,",
        "# resume_adapter_file -> init_adapter, ...); its SFT-only keys are ignored with a warning.",
        "# judge_system: TEXT sets the system prompt of the llama judge.",
        f"# {DEFAULTS_REASON}",
    ]
    for f in dataclasses.fields(Config):
        if f.name in _SECTION_ORDER_HEADERS:
            out += ["", f"# ---- {_SECTION_ORDER_HEADERS[f.name]} ----"]
        value = getattr(cfg, f.name)
        out.append(f"# {FIELD_HELP[f.name]}")
        if f.name in SECTIONS:
            out.append(f"{f.name}:")
            for sf in dataclasses.fields(SECTIONS[f.name]):
                out.append(f"  # {FIELD_HELP[f'{f.name}.{sf.name}']}")
                out.append(f"  {sf.name}: {_scalar(getattr(value, sf.name))}")
        elif f.name == "judges":
            out.append("judges:")
            for j in value:
                out += [f"  - name: {_scalar(j.name)}", f"    weight: {_scalar(j.weight)}",
                        f"    options: {_scalar(j.options)}"]
            out.append("  # e.g. - {name: llama, weight: 1.0, options: {system: \"You grade answers.\"}}")
        else:
            out.append(f"{f.name}: {_scalar(value)}")
    return "\n".join(out) + "\n"


def write_commented_config(path: str | os.PathLike, cfg: Config | None = None) -> None:
    atomic_write_text(path, commented_yaml(cfg))


# ----------------------------------------------------------------------------- command line

# flag -> (key, type); every flag defaults to None so that "not given" is visible.
_FLAG_TYPES = {"int": int, "float": float, "str": str, "str | None": str, "list[str]": str}
CLI_FLAGS: dict[str, tuple[str, Any]] = {f.metadata["flag"]: (k, _FLAG_TYPES[f.type]) for k, f in DECLARED.items()
                                         if f.metadata.get("flag")}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config FILE, a flag for each main key, --judge NAME (repeatable), --set KEY=VALUE."""
    group = parser.add_argument_group("configuration (flag > --config file > default)")
    group.add_argument("--config", metavar="FILE", default=None, help="YAML config file (write one with `tui-trainer init`)")
    for flag, (key, tp) in CLI_FLAGS.items():
        help_text = re.sub(r" \(alias(es)? [^)]*\)", "", FIELD_HELP[key])  # aliases are YAML names
        kwargs: dict[str, Any] = {"dest": key.replace(".", "_"), "type": tp, "default": None,
                                  "metavar": flag[2:].replace("-", "_").upper(), "help": help_text}
        if key == "mode":
            kwargs["choices"] = MODES
            del kwargs["metavar"]
        group.add_argument(flag, **kwargs)
    group.add_argument("--judge", dest="judge", action="append", default=None, metavar="NAME",
                       help="judge by name (repeatable; replaces the config's judges)")
    group.add_argument("--set", dest="set", action="append", default=None, metavar="KEY=VALUE",
                       help="any config key, e.g. --set adapter.rank=16 (repeatable; VALUE is read as YAML)")


def config_from_args(args: argparse.Namespace, base: str | os.PathLike | None = None) -> Config:
    """Defaults < ``base`` (a resumed run's config.yaml) < ``--config`` file < ``--set`` < the named flags."""
    layers: list[tuple[dict, _Source]] = []
    if base is not None:
        layers.append(_read_yaml(base))
    sets = getattr(args, "set", None) or []
    set_raw: dict[str, Any] = {}
    set_labels: dict[str, str] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = _parse_yaml(text, f"--set {key}")[1] if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if isinstance(value, (dict, list)) and not text.lstrip().startswith(("{", "[")):
            value = text  # "Be brief: one line" is text, not a mapping
        set_raw[key] = value
        set_labels[key] = f"--set {key}"
    layers.append((set_raw, _Source("--set", labels=set_labels)))

    flag_raw: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for flag, (key, _tp) in CLI_FLAGS.items():
        value = getattr(args, key.replace(".", "_"), None)
        if value is not None:
            flag_raw[key] = value
            labels[key] = flag
    judges = getattr(args, "judge", None)
    if judges:
        flag_raw["judges"] = [{"name": n} for n in judges]
        labels["judges"] = "--judge"
    layers.append((flag_raw, _Source("command line", labels=labels)))
    config_file = getattr(args, "config", None)
    if base is not None and config_file is not None:  # the run's own config first, then the file given
        layers.insert(1, _read_yaml(config_file))
        config_file = None
    return _load(config_file, layers)


# keys that decide which model and adapter a checkpoint holds: a resume may not change them
FROZEN_ON_RESUME = ("model", "reference_model", "quantized_base", "init_adapter", "adapter.")


def _dotted(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and k in SECTIONS:
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """What a resume changes: (changes refused because they alter the model or adapter,
    changes allowed), each as ``key: old -> new``."""
    a, b = _dotted(config_to_dict(old)), _dotted(config_to_dict(new))
    refused, allowed = [], []
    for key in b:
        if key == "run_dir" or a.get(key) == b[key]:
            continue
        line = f"{key}: {short(a.get(key))} -> {short(b[key])}"
        (refused if key.startswith(FROZEN_ON_RESUME) else allowed).append(line)
    return refused, allowed
