"""A trained policy, back from its run directory: ``load_trained(RUN_DIR | CHECKPOINT)``.

``RUN_DIR`` means its latest ``checkpoints/<step>/``; a checkpoint folder is taken as it is. The
base model and the adapter's shape come from the run's ``config.yaml`` (model, quantized_base)
and the checkpoint's ``adapter_config.json`` (fine_tune_type, num_layers, lora_parameters), the
weights from ``adapters.safetensors``. The result is a :class:`~tui_trainer.engine.policy.Policy`:
the base model is its adapter switched off (``adapter_off``), with no second copy in memory.

Used by ``rollout --adapter``, ``chat`` and ``eval``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from tui_trainer.config import AdapterConfig, Config, load_config
from tui_trainer.engine.checkpoints import latest_checkpoint
from tui_trainer.errors import ConfigError, ModelError, one_line


@dataclass
class Trained:
    policy: Any  # engine.policy.Policy with the checkpoint's adapter loaded
    tokenizer: Any
    config: Config  # the run's config (defaults + the adapter_config.json when the run has none)
    checkpoint: Path
    run_dir: Path | None
    step: int | None


def locate_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint folder, run directory or None) for a run directory or a checkpoint folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{path}: no such run directory or checkpoint")
    if (p / "adapters.safetensors").is_file():
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else None
        return p, run_dir
    if p.is_dir():
        ckpt = latest_checkpoint(p)
        if ckpt is None:
            raise ConfigError(f"{path}: not a run directory with checkpoints/ nor a checkpoint folder "
                              "(adapters.safetensors)")
        return ckpt, p
    raise ConfigError(f"{path}: not a run directory nor a checkpoint folder")


def run_config(run_dir: Path | None) -> Config:
    """The run's config.yaml (defaults when there is none)."""
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        return load_config(run_dir / "config.yaml")
    return Config()


def load_trained(path: str | Path) -> Trained:
    from tui_trainer.engine.models import load_policy
    from tui_trainer.engine.policy import Policy

    ckpt, run_dir = locate_checkpoint(path)
    cfg = run_config(run_dir)
    try:
        saved = json.loads((ckpt / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{ckpt}: unreadable adapter_config.json ({one_line(exc)})") from None
    lora = saved.get("lora_parameters") or {}
    adapter = AdapterConfig(type=saved.get("fine_tune_type", cfg.adapter.type),
                            rank=int(lora.get("rank", cfg.adapter.rank)),
                            scale=float(lora.get("scale", cfg.adapter.scale)),
                            dropout=0.0, layers=int(saved.get("num_layers", cfg.adapter.layers)),
                            keys=lora.get("keys", cfg.adapter.keys))
    model_ref = saved["model"] if "model" in saved else cfg.model
    cfg.model, cfg.adapter = model_ref, adapter
    try:
        weights = mx.load(str(ckpt / "adapters.safetensors"))
    except Exception as exc:  # noqa: BLE001  mlx raises RuntimeError / ValueError for a broken file
        raise ModelError(f"{ckpt}: cannot read adapters.safetensors ({one_line(exc)})") from None
    model, tokenizer = load_policy(model_ref, quantized=cfg.quantized_base)
    policy = Policy(model, adapter)
    from mlx.utils import tree_flatten

    params = dict(tree_flatten(policy.model.trainable_parameters()))
    unknown = sorted(k for k in weights if k not in params)
    if unknown:
        raise ModelError(f"{ckpt}: {unknown[0]} is not a parameter of the adapter adapter_config.json describes "
                         f"(has the base model {model_ref or 'embedded SmolLM2'} changed?)")
    bad = [k for k in weights if tuple(weights[k].shape) != tuple(params[k].shape)]
    if bad:
        raise ModelError(f"{ckpt}: {bad[0]} has shape {tuple(weights[bad[0]].shape)}, the base model "
                         f"{model_ref or 'embedded SmolLM2'} needs {tuple(params[bad[0]].shape)} (has it changed?)")
    policy.model.load_weights([(k, v.astype(params[k].dtype)) for k, v in weights.items()], strict=False)
    mx.eval(policy.parameters())
    step = int(ckpt.name) if ckpt.name.isdigit() else None
    return Trained(policy, tokenizer, cfg, ckpt, run_dir, step)


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of ``messages`` through the tokenizer's chat template, ready for the reply."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return list(ids)


def generate(model, tokenizer, prompts_ids: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, seed: int = 0, on_token=None) -> list[str]:
    """One completion per prompt (batched, KV-cached: engine.rollout.sample), decoded without EOS."""
    from tui_trainer.engine.rollout import sample

    eos = set(tokenizer.eos_token_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    r = sample(model, prompts_ids, num_samples=1, max_new_tokens=max_new_tokens, temperature=temperature,
               top_p=top_p, top_k=top_k, eos_ids=eos, pad_id=pad, seed=seed, on_token=on_token)
    return [tokenizer.decode([t for t in resp if t not in eos], skip_special_tokens=True) for resp in r.responses]


def held_out_prompts(trained: Trained, data: str | None, n: int) -> tuple[list, str]:
    """Up to ``n`` prompts (data.Prompt: text, ids, columns) to evaluate on, and the rule that chose them.

    ``data`` (a file, saved dataset or hub name): its first ``n`` prompts. Else the run's own data:
    the prompts the run never drew (its data order continued from the checkpoint's position), and
    when every prompt was drawn at least once, the last ``n`` of the data (said so in the rule)."""
    import dataclasses

    from tui_trainer.data import PromptSet
    from tui_trainer.errors import DataError

    cfg = trained.config
    if data is not None:
        ps = PromptSet.load(dataclasses.replace(cfg.data, path=data, split="train", subset=None), trained.tokenizer)
        return ps.prompts[:n], f"the first {min(n, len(ps))} of {data}"
    ps = PromptSet.load(cfg.data, trained.tokenizer, seed=cfg.seed)
    source = cfg.data.path or "the embedded prompts"
    try:
        state = json.loads((trained.checkpoint / "state.json").read_text(encoding="utf-8"))
        ps.set_state(state["data"])
    except (OSError, ValueError, KeyError, TypeError, DataError):
        state = None
    if state is not None and ps.epoch == 0 and ps.position < len(ps):
        unseen = [ps.prompts[i] for i in ps._order[ps.position:]]
        return unseen[:n], (f"{min(n, len(unseen))} of the {len(unseen)} prompts of {source} the run never "
                            f"trained on")
    tail = ps.prompts[-n:]
    return tail, (f"the last {len(tail)} prompts of {source} (NOT held out: the run trained on every prompt; "
                  "pass --data HELD_OUT)")


def sample_both(trained: Trained, prompt_ids: list[list[int]], *, max_new_tokens: int, temperature: float,
                seed: int, batch_size: int = 8, progress=None) -> tuple[list[str], list[str]]:
    """(trained completions, base completions): the policy with its adapter on, then off (same seed),
    ``batch_size`` prompts per batch; ``progress(phase, done, total)`` after each batch."""
    from tui_trainer.engine.policy import adapter_off

    out: dict[str, list[str]] = {"trained": [], "base": []}
    total = len(prompt_ids)
    for phase in ("trained", "base"):
        for start in range(0, total, batch_size):
            chunk = prompt_ids[start:start + batch_size]
            kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + start)
            if phase == "trained":
                out[phase] += generate(trained.policy.model, trained.tokenizer, chunk, **kwargs)
            else:
                with adapter_off(trained.policy) as base:
                    out[phase] += generate(base, trained.tokenizer, chunk, **kwargs)
            if progress is not None:
                progress(f"sampling ({phase})", min(start + batch_size, total), total)
    return out["trained"], out["base"]


class ChatSession:
    """A conversation with a trained run (engine thread only): the turns so far, and the next reply."""

    def __init__(self, trained: Trained, *, max_new_tokens: int = 256, temperature: float = 0.7,
                 system: str | None = None, seed: int = 0):
        self.trained = trained
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []

    @classmethod
    def open(cls, path: str | Path, **kwargs) -> "ChatSession":
        return cls(load_trained(path), **kwargs)

    def reply(self, text: str, on_text=None) -> str:
        """The trained model's answer to ``text`` after the turns so far (both kept for the next turn).

        Generated by mlx-lm's ``stream_generate`` (KV cache, its sampler); ``on_text(segment)`` hears
        each piece as it is decoded. The answer returned is the tokens decoded at once without
        special tokens (as ``rollout`` prints them)."""
        from mlx_lm.generate import stream_generate
        from mlx_lm.sample_utils import make_sampler

        self.messages.append({"role": "user", "content": text})
        ids = chat_ids(self.trained.tokenizer, self.messages)
        self.seed += 1
        mx.random.seed(self.seed)
        tok = self.trained.tokenizer
        eos = set(tok.eos_token_ids)
        tokens: list[int] = []
        for resp in stream_generate(self.trained.policy.model, tok, ids, max_tokens=self.max_new_tokens,
                                    sampler=make_sampler(temp=self.temperature)):
            # every piece but the last carries a new token; the last repeats the token that ended the
            # loop: EOS (left out) or the max_tokens-th token (not yielded before)
            if resp.finish_reason is None or (resp.token not in eos and resp.generation_tokens > len(tokens)):
                tokens.append(int(resp.token))
            if on_text is not None and resp.text:
                on_text(resp.text)
        out = tok.decode([t for t in tokens if t not in eos], skip_special_tokens=True)
        self.messages.append({"role": "assistant", "content": out})
        return out
