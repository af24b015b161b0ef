"""`tui-trainer export RUN_DIR|CHECKPOINT --to gguf-lora|gguf|mlx -o OUT`: the trained model for llama.cpp,
Ollama and mlx-lm (see tui_trainer/engine/export.py)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="RUN_DIR|CHECKPOINT", help="a run directory (its latest checkpoint) or a checkpoint")
    p.add_argument("--to", required=True, choices=["gguf-lora", "gguf", "mlx"], dest="fmt",
                   help="gguf-lora: a llama.cpp LoRA adapter file; gguf: the merged model (a folder with "
                        "model.gguf and an Ollama Modelfile); mlx: a fused mlx-lm model folder")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the file (gguf-lora) or folder to write")
    p.add_argument("--outtype", default=None, metavar="TYPE",
                   help="tensor type: f32, f16, bf16, q8_0 (all formats); q5_1, q5_0, q4_1, q4_0, or base (each "
                        "tensor in the base GGUF's own type where it can be written) for gguf. Default: f32 for "
                        "gguf-lora, f16 for gguf and mlx")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tui_trainer.engine.export import export

    console = Console(stderr=True)
    live = console.is_terminal
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=True)
    task = bar.add_task("export", total=None)
    shown = {"phase": None}

    def progress(phase: str, done: int, total: int) -> None:
        if live:
            bar.update(task, description=phase, total=max(total, 1), completed=done)
        elif phase != shown["phase"]:  # not a terminal: one line per phase
            shown["phase"] = phase
            console.print(f"{phase} ...", markup=False, highlight=False)

    if live:
        bar.start()
    try:
        out = export(args.path, args.fmt, args.output, outtype=args.outtype, force=args.force, progress=progress)
    finally:
        if live:
            bar.stop()
    print(f"exported {args.fmt} to {out}")
    return 0
