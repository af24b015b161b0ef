"""`tui-trainer rollout`: sample completions from a model (default: the embedded one) and print them.

``--adapter RUN_DIR_OR_CHECKPOINT``: the trained policy (the run's base model with the checkpoint's
adapter; a run directory means its latest checkpoint)."""

from __future__ import annotations

import argparse
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="mlx-lm model dir/repo or GGUF file (default: embedded SmolLM2)")
    p.add_argument("--adapter", default=None, metavar="RUN_DIR_OR_CHECKPOINT",
                   help="sample from a trained run: its base model with the adapter of its latest checkpoint "
                        "(or of the checkpoint folder given)")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable); default: a few built-in ones")
    p.add_argument("-n", "--num-samples", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)


DEMO_PROMPTS = [
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Give me one tip for learning to code.",
]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.text import Text

    from tui_trainer.engine.models import load_policy
    from tui_trainer.engine.rollout import sample
    from tui_trainer.text import printable

    console = Console()
    if args.adapter is not None:
        from tui_trainer.engine.trained import load_trained
        from tui_trainer.errors import ConfigError

        if args.model is not None:
            raise ConfigError("give --adapter or --model, not both (a run's base model comes with its adapter)")
        trained = load_trained(args.adapter)
        model, tok = trained.policy.model, trained.tokenizer
        console.print(f"[dim]adapter {trained.checkpoint} on {trained.config.model or 'embedded SmolLM2'}[/]")
    else:
        model, tok = load_policy(args.model)
    prompts = args.prompt or DEMO_PROMPTS
    ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]
    t0 = time.perf_counter()
    r = sample(model, ids, num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
               temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
               eos_ids=tok.eos_token_ids, pad_id=tok.pad_token_id or 0, seed=args.seed)
    dt = time.perf_counter() - t0
    for row, resp in enumerate(r.responses):
        title = Text(printable(prompts[r.prompt_index[row]]), style="bold")
        title.append(f" (sample {row % args.num_samples + 1})", style="")
        console.rule(title)
        console.print(printable(tok.decode(resp, skip_special_tokens=True)), markup=False)
    console.print(f"[dim]{r.num_tokens} tokens in {dt:.2f}s ({r.num_tokens / dt:.1f} tok/s), batch {len(r.lengths)}[/]")
    return 0
