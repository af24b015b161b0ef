"""TRL side of the PPO-step benchmark (run by bench/ppo_step.py in the bench venv).

Runs TRL's own PPOTrainer (``trl.experimental.ppo``, TRL 1.12.0: the last release
that ships PPO) on torch CPU, on the same SmolLM2-135M-Instruct GGUF weights that
tui-trainer uses (transformers dequantizes the GGUF to float32, as we do), for the
same prompt batches (token ids handed over by ppo_step.py), and reports per-step
times split like ours (rollout / judge / update) and peak memory.

What TRL's PPOTrainer needs and how it is met here:
- ``value_model`` and ``reward_model`` are models with a ``score`` head that TRL
  runs through their backbone. Both are a linear head on the *policy's own*
  backbone (``SharedBackboneHead``): no second copy of the weights, and the
  trainable set is the same as ours (LoRA + a value head). TRL still runs the
  value model as a separate forward pass; that is how its PPO is built.
- The reward: TRL's PPO takes a reward *model*, not a function, so the judge here
  is one forward pass of that head-on-backbone over prompt + response (ours is a
  rule judge on the text). Its time is reported apart as "judge".
- LoRA through peft (``peft_config``); the reference is the policy with the
  adapter off, as in ours.
- Responses: ``stop_token=None``, so every response is ``response_length`` tokens
  (ppo_step.py makes ours ignore EOS too).
- The pad token is ``<|endoftext|>`` (id 0): TRL finds padding by token id, and the
  GGUF's own pad token (``<|im_end|>``, id 2) occurs inside chat-template prompts.

Timing: TRL's ``train()`` is one loop, so the split comes from wrapping the module
functions it calls: ``batch_generation`` (rollout) and ``get_reward`` on the reward
model (judge); the rest of a step (reference and value forwards, log-probs, GAE,
the PPO epochs) is "update". A step ends at TRL's ``on_step_end`` callback.

Usage: python bench/trl_ppo_step.py INPUT.json OUTPUT.json
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from memory import peak_rss_mb, reset_peak_rss  # bench/memory.py: the script's own folder




def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    cfg = spec["config"]
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg["threads"]))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    import torch.nn as nn

    torch.set_num_threads(cfg["threads"])
    import datasets
    import peft
    import transformers
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_mod
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorWithPadding, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    gguf = Path(spec["gguf"])

    t_load = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    load_s = time.perf_counter() - t_load
    tok.pad_token = tok.convert_ids_to_tokens(0)
    tok.padding_side = "left"
    model.generation_config.pad_token_id = tok.pad_token_id

    # same weights as ours: last-position logits of a probe sequence, before any training
    model.eval()
    with torch.no_grad():
        probe = model(torch.tensor([spec["probe_ids"]])).logits[0, -1].float()

    hidden = model.config.hidden_size

    class SharedBackboneHead(nn.Module):
        """A value / reward model the way TRL's PPO calls one: ``getattr(m, m.base_model_prefix)``
        is the backbone and ``m.score`` the head; here the backbone is the policy's own."""

        base_model_prefix = "model"

        def __init__(self, backbone: nn.Module, seed: int, zero: bool):
            super().__init__()
            self.model = backbone
            self.score = nn.Linear(hidden, 1, bias=False)
            with torch.no_grad():
                if zero:
                    self.score.weight.zero_()
                else:
                    g = torch.Generator().manual_seed(seed)
                    self.score.weight.copy_(torch.randn(1, hidden, generator=g) / hidden**0.5)

    value_model = SharedBackboneHead(model.model, cfg["seed"], zero=True)  # zero-init, like our value head
    reward_model = SharedBackboneHead(model.model, cfg["seed"] + 1, zero=False)
    reward_model.score.weight.requires_grad_(False)

    batches = spec["batches"]  # one list of prompt-id rows per step, num_samples copies each, prompt-major
    rows_per_step = len(batches[0])
    ds = datasets.Dataset.from_dict({"input_ids": [row for b in batches for row in b]})
    out_dir = tempfile.mkdtemp(prefix="trl-ppo-bench-")
    args = PPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=rows_per_step,
        gradient_accumulation_steps=1,
        num_mini_batches=rows_per_step // cfg["minibatch_size"],
        local_rollout_forward_batch_size=rows_per_step,
        total_episodes=rows_per_step * len(batches),
        num_ppo_epochs=cfg["ppo_epochs"],
        response_length=cfg["max_new_tokens"],
        stop_token=None,
        temperature=cfg["temperature"],
        kl_coef=cfg["beta"],
        kl_estimator="k1",
        cliprange=cfg["epsilon"],
        cliprange_value=cfg["value_clip"],
        vf_coef=cfg["vf_coef"],
        gamma=cfg["gamma"],
        lam=cfg["lam"],
        learning_rate=cfg["lr"],
        seed=cfg["seed"],
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        num_sample_generations=0,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    lora = peft.LoraConfig(r=cfg["lora_rank"], lora_alpha=cfg["lora_alpha"], lora_dropout=0.0,
                           target_modules="all-linear", task_type="CAUSAL_LM")

    # -- timing hooks
    cur = {"rollout": 0.0, "judge": 0.0, "lengths": []}
    orig_generation, orig_reward = ppo_mod.batch_generation, ppo_mod.get_reward

    def timed_generation(*a, **k):
        t = time.perf_counter()
        query_responses, logits = orig_generation(*a, **k)
        cur["rollout"] += time.perf_counter() - t
        context = a[1].shape[1]
        resp = query_responses[:, context:]
        is_pad = resp == tok.pad_token_id
        first_pad = torch.where(is_pad.any(1), is_pad.int().argmax(1), torch.full_like(is_pad[:, 0], resp.shape[1],
                                                                                        dtype=torch.long))
        cur["lengths"].extend(first_pad.tolist())
        return query_responses, logits

    def timed_reward(m, *a, **k):
        t = time.perf_counter()
        out = orig_reward(m, *a, **k)
        if m is reward_model:
            cur["judge"] += time.perf_counter() - t
        return out

    ppo_mod.batch_generation = timed_generation
    ppo_mod.get_reward = timed_reward

    steps: list[dict] = []
    mark = {"t": 0.0, "cpu": 0.0}

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            mark["t"] = time.perf_counter()
            mark["cpu"] = time.process_time()

        def on_step_end(self, args, state, control, **kw):
            now, cpu = time.perf_counter(), time.process_time()
            total = now - mark["t"]
            lengths = cur["lengths"]
            steps.append({
                "time_step": total,
                "time_rollout": cur["rollout"],
                "time_judge": cur["judge"],
                "time_update": total - cur["rollout"] - cur["judge"],
                "response_length": sum(lengths) / max(len(lengths), 1),
                "tokens": sum(lengths),
                "cpu_seconds": cpu - mark["cpu"],
                "peak_rss_mb": peak_rss_mb(),
            })
            cur.update(rollout=0.0, judge=0.0, lengths=[])
            mark["t"], mark["cpu"] = time.perf_counter(), time.process_time()

    trainer = PPOTrainer(args=args, processing_class=tok, model=model, ref_model=None, reward_model=reward_model,
                         train_dataset=ds, value_model=value_model, peft_config=lora, callbacks=[StepClock()])
    # the same batches in the same order as ours (TRL's own loader shuffles)
    trainer.dataloader = trainer.accelerator.prepare(
        DataLoader(ds, batch_size=rows_per_step, shuffle=False, collate_fn=DataCollatorWithPadding(tok),
                   drop_last=True))
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    peak_reset = reset_peak_rss()
    trainer.train()

    result = {
        "steps": steps,
        "trainable_params": trainable,
        "load_seconds": load_s,
        "peak_rss_mb_steps": peak_rss_mb() if peak_reset else None,
        "max_rss_mb_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "probe_logits": probe.tolist(),
        "threads": torch.get_num_threads(),
        "versions": {"trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "python": platform.python_version()},
    }
    tmp = Path(argv[1]).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
