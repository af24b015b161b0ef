"""`tui-trainer train --launch N` / `--hosts FILE`: the same training command as a data-parallel
job, through MLX's own launcher.

It checks what it can in one line (the hostfile parses, the backend exists on this machine),
then replaces itself with::

    mlx.launch (-n N | --hostfile FILE) [--backend B] --python THIS_PYTHON -- \\
        -m tui_trainer train --headless <the other arguments>

so every rank runs this interpreter (the same path on every host) and sees the same command line.
mlx.launch itself always exits 0; the ranks write their exit codes into a directory named by
``TUI_TRAINER_EXIT_DIR`` and this command exits with rank 0's (2 for bad input, as one process).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tui_trainer.errors import ConfigError

LAUNCH_OPTIONS = ("--launch", "--hosts", "--backend")
EXIT_DIR = "TUI_TRAINER_EXIT_DIR"


def record_exit(code: int) -> None:
    """A rank of a job started by ``train --launch`` / ``--hosts``: leave its exit code for the launcher."""
    where = os.environ.get(EXIT_DIR)
    if where and Path(where).is_dir():
        try:
            (Path(where) / f"rank-{os.environ.get('MLX_RANK', 'unknown')}").write_text(str(code))
        except OSError:
            pass


def job_exit_code(where: Path, launcher_code: int) -> int:
    """Rank 0's exit code, else the largest a rank left, else mlx.launch's."""
    codes = {}
    for path in where.glob("rank-*"):
        try:
            codes[path.name[5:]] = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
    if "0" in codes:
        return codes["0"]
    return max(codes.values()) if codes else launcher_code


def rank_command(argv: list[str]) -> list[str]:
    """``argv`` (``train ...``) without the launch options, headless."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            skip = "=" not in arg
            continue
        out.append(arg)
    if "train" not in out:
        out.insert(0, "train")
    if "--headless" not in out:
        out.append("--headless")
    return out


def check_backend(backend: str | None) -> None:
    """A backend that cannot run here: one line."""
    if backend == "nccl":
        import mlx.core as mx

        if not mx.cuda.is_available():
            raise ConfigError("--backend nccl needs CUDA GPUs (mlx[cuda]); this MLX has no CUDA device")
    elif backend in ("jaccl", "jaccl-ring") and sys.platform != "darwin":
        raise ConfigError(f"--backend {backend} is RDMA over Thunderbolt 5 between Macs; use ring here")
    elif backend == "mpi" and shutil.which("mpirun") is None:
        raise ConfigError("--backend mpi needs mpirun on the PATH (Open MPI)")


def launcher() -> Path:
    path = Path(sys.executable).with_name("mlx.launch")
    if not path.is_file():
        raise ConfigError(f"mlx.launch is not next to {sys.executable}; reinstall mlx in this environment")
    return path


def launch_command(args: argparse.Namespace) -> list[str]:
    """The mlx.launch command line for ``args`` (ConfigError, one line, on bad input)."""
    if args.launch is not None and args.hosts is not None:
        raise ConfigError("--launch and --hosts: give one (N processes here, or one per host of FILE)")
    cmd = [str(launcher())]
    backend = args.backend
    if args.hosts is not None:
        from mlx._distributed_utils.common import Hostfile

        try:
            hostfile = Hostfile.from_file(args.hosts)
        except ValueError as exc:
            raise ConfigError(f"--hosts {args.hosts}: {' '.join(str(exc).split())}") from None
        if not hostfile.hosts:
            raise ConfigError(f"--hosts {args.hosts}: no hosts in it")
        backend = backend or hostfile.backend or None
        if (backend or "ring") == "ring" and any(not h.ips for h in hostfile.hosts):
            raise ConfigError(f"--hosts {args.hosts}: the ring backend needs \"ips\" for every host")
        cmd += ["--hostfile", str(args.hosts)]
    else:
        if args.launch < 1:
            raise ConfigError(f"--launch {args.launch}: the number of processes is at least 1")
        cmd += ["-n", str(args.launch)]
    check_backend(backend)
    ranks = args.launch if args.hosts is None else len(hostfile.hosts)
    if ranks > 1:  # batch_size is global: it splits evenly over the ranks (checked again by each rank)
        from tui_trainer.config import config_from_args

        saved = Path(config_from_args(args).run_dir) / "config.yaml"
        base = saved if args.resume and saved.is_file() else None
        batch_size = config_from_args(args, base=base).batch_size
        if batch_size % ranks:
            raise ConfigError(f"batch_size {batch_size} does not split over {ranks} ranks; "
                              f"use a multiple of {ranks}")
    if args.backend:
        cmd += ["--backend", args.backend]
    cmd += ["--python", sys.executable, "--", "-m", "tui_trainer",
            *rank_command(getattr(args, "argv", None) or sys.argv[1:])]
    return cmd


def launch(args: argparse.Namespace) -> int:
    """Run the job; its exit code (rank 0's). Ctrl-C reaches every local rank (the process group);
    mlx.launch stops the others when one ends with an error."""
    cmd = launch_command(args)
    with tempfile.TemporaryDirectory(prefix="tui-trainer-exit-") as where:
        cmd[1:1] = ["--env", f"{EXIT_DIR}={where}"]
        sys.stdout.flush()
        try:
            code = subprocess.call(cmd)
        except KeyboardInterrupt:
            code = 130
        return job_exit_code(Path(where), code)
