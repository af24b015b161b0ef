"""Run configuration: dataclasses, loaded from YAML, overridden from the command line.

Precedence: explicit command-line flag > YAML file > default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class JudgeSpec:
    name: str = "rules"
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AdapterConfig:
    type: str = "lora"  # lora | dora | full
    rank: int = 8
    scale: float = 20.0  # mlx-lm's "scale" (alpha / rank); alias: alpha
    dropout: float = 0.0
    layers: int = 16  # last N transformer blocks get adapters; -1 = all
    keys: list[str] | None = None  # module names inside a block; None = mlx-lm defaults


@dataclass
class DataConfig:
    path: str | None = None  # JSONL/JSON/parquet/CSV file or a datasets name; None = embedded prompts
    prompt_field: str = "prompt"
    split: str = "train"
    chat_template: bool = True
    system_prompt: str | None = None
    shuffle: bool = True


@dataclass
class Config:
    # model
    model: str | None = None  # None = embedded SmolLM2-135M-Instruct GGUF
    reference_model: str | None = None  # None = the policy with its adapter switched off
    quantized_base: bool | None = None  # None = keep quantized on GPU, f32 on CPU
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # algorithm
    mode: str = "ppo"  # ppo | pairwise | rloo | grpo
    pairwise_objective: str = "ppo"  # ppo | studio (MLX-LoRA-Studio objective)
    batch_size: int = 4  # prompts per step
    num_samples: int = 2  # completions per prompt
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    beta: float = 0.05  # KL coefficient
    kl_target: float | None = None  # adaptive KL controller off when None
    kl_horizon: int = 10000
    kl_estimator: str = "k1"  # k1 | k3 (which estimator the reported/penalised KL uses)
    epsilon: float = 0.2  # policy clip range
    value_clip: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    ppo_epochs: int = 2
    minibatch_size: int = 4  # sequences per minibatch
    grad_accum: int = 1
    actor_lr: float = 1e-5
    critic_lr: float = 1e-4
    scheduler: str = "constant"  # constant | linear | cosine
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    whiten_rewards: bool = False
    score_scale: float = 1.0
    score_clip: float | None = None
    missing_eos_penalty: float | None = None
    # run
    seed: int = 0
    steps: int = 20
    save_every: int = 10
    run_dir: str = "runs/default"
    judges: list[JudgeSpec] = field(default_factory=lambda: [JudgeSpec()])
    judge_failure: str = "drop"  # drop | retry | stop
    judge_retries: int = 2
    judge_timeout: float = 120.0
