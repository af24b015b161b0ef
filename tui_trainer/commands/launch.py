"""`tui-trainer train --launch N` / `--hosts FILE`: the same training command as a data-parallel
job, through MLX's own launcher.

It checks what it can in one line (the hostfile parses, the backend exists on this machine),
then replaces itself with::

    mlx.launch (-n N | --hostfile FILE) [--backend B] --python THIS_PYTHON -- \\
        -m tui_trainer train --headless <the other arguments>

so every rank runs this interpreter (the same path on every host) and sees the same command line.
mlx.launch itself always exits 0; the ranks write their exit codes into a directory named by
``TUI_TRAINER_EXIT_DIR`` and this command exits with rank 0's (2 for bad input, as one process).

A rank that dies (a signal, ``os._exit``, a crash: it leaves no exit code of its own): mlx.launch
stops the others, whose collectives fail at once (``RankLost``) or, where nothing tells them, after
``rank_timeout`` (engine/distributed.py's watchdog). This command reads mlx.launch's reports of the
ranks' exits from its standard error, leaves out that noise (its warnings, the ring backend's socket
messages, the ranks' own "lost the other ranks" lines) and says it in one line::

    tui-trainer: error: rank 1 died (exit -9) at step 3; the job stopped; the last checkpoint
    (step 2) is valid; resume with --resume

exiting with the dead rank's status (128 + the signal for a signal). Should mlx.launch itself not end
within ``STOP_GRACE`` seconds of the first failed rank, it and its local ranks are killed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tui_trainer.errors import ConfigError

LAUNCH_OPTIONS = ("--launch", "--hosts", "--backend")
EXIT_DIR = "TUI_TRAINER_EXIT_DIR"
STOP_GRACE = 60.0  # seconds mlx.launch gets to stop the other ranks once one has failed
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NODE = re.compile(r"\[WARN\] Node with rank (\d+) (?:exited with code (-?\d+)|was killed)")
# lines the summary replaces: the ranks' own words about a lost rank, and the ring backend's socket errors
_LOST = re.compile(r"tui-trainer: error: (?:rank \d+: )?(?:lost the other ranks|waited more than rank_timeout)")
_NOISE = re.compile(r"\[ring\] (?:Socket \d+ was closed by the peer|Too many send/recv errors)")


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
    codes = recorded_exits(where)
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


def _hostfile(path: str):
    from mlx._distributed_utils.common import Hostfile

    try:
        return Hostfile.from_file(path)
    except ValueError as exc:
        raise ConfigError(f"--hosts {path}: {' '.join(str(exc).split())}") from None


def launch_command(args: argparse.Namespace) -> list[str]:
    """The mlx.launch command line for ``args`` (ConfigError, one line, on bad input)."""
    if args.launch is not None and args.hosts is not None:
        raise ConfigError("--launch and --hosts: give one (N processes here, or one per host of FILE)")
    cmd = [str(launcher())]
    backend = args.backend
    if args.hosts is not None:
        hostfile = _hostfile(args.hosts)
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
        if "TUI_TRAINER_LANES" not in os.environ:  # N ranks share this machine's cores (engine/lanes.py)
            from tui_trainer.engine.lanes import cpu_count

            cmd += ["--env", f"TUI_TRAINER_LANES={max(1, cpu_count() // args.launch)}"]
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
    """Run the job; its exit code (rank 0's, or a dead rank's). Ctrl-C reaches every local rank (the
    process group); mlx.launch stops the others when one ends with an error."""
    cmd = launch_command(args)
    from tui_trainer.config import config_from_args

    run_dir = Path(config_from_args(args).run_dir)
    with tempfile.TemporaryDirectory(prefix="tui-trainer-exit-") as where:
        cmd[1:1] = ["--env", f"{EXIT_DIR}={where}"]
        sys.stdout.flush()
        job = Job(cmd)
        try:
            code = job.wait()
        except KeyboardInterrupt:  # the ranks got the Ctrl-C too and stop on their last checkpoint
            job.proc.kill()
            job.proc.wait()
            code = 130
        code, line = job_outcome(job, code, Path(where), run_dir)
        if line:
            print(line, file=sys.stderr, flush=True)
        return code


def job_outcome(job: "Job", code: int, where: Path, run_dir: Path) -> tuple[int, str | None]:
    """The job's exit code and, when a rank died or a watchdog ended it, the one line that says so."""
    recorded = recorded_exits(where)
    dead = dead_rank(job.exits, recorded)
    if dead is None:
        if job.timed_out is not None:  # a watchdog ended the job: a rank hangs, or its host vanished
            return 1, (f"tui-trainer: error: rank {job.timed_out} waited more than rank_timeout for the other ranks "
                       f"at step {step_in_flight(run_dir)}; a rank hangs or its host is gone; the job stopped; "
                       f"{checkpoint_note(run_dir)}")
        return job_exit_code(where, code), None
    rank, status = dead
    return (128 - status if status < 0 else status or 1,
            f"tui-trainer: error: rank {rank} died (exit {status}) at step {step_in_flight(run_dir)}; the job "
            f"stopped; {checkpoint_note(run_dir)}")


class BackgroundJob:
    """``train --launch`` / ``--hosts`` for the app (follow mode): mlx.launch in its own process group,
    its output and the ranks' (and the one line about a rank that died) appended to ``log``, so
    nothing writes over the screen; its standard input a pipe nobody writes to (the keyboard is the
    app's). ``done`` is set once it has ended, with ``code`` and ``error`` (that line, or None)."""

    def __init__(self, cmd: list[str], run_dir: Path, log: Path, ranks: int | None = None,
                 exit_dir: tempfile.TemporaryDirectory | None = None):
        """``cmd``: the mlx.launch command line; ``ranks``: how many it starts; ``exit_dir``: where the
        ranks leave their exit codes (named in ``cmd``; removed once the job has ended)."""
        self.run_dir = Path(run_dir)
        self.ranks = ranks
        self._where = exit_dir
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log
        self._log = open(log, "ab")
        self.code: int | None = None
        self.error: str | None = None
        self.done = threading.Event()
        self.stopping = False  # stop() has been called
        self.job = Job(cmd, log=self._log)
        self._waiter = threading.Thread(target=self._wait, name="mlx.launch-wait", daemon=True)
        self._waiter.start()

    @classmethod
    def from_args(cls, args: argparse.Namespace, log: Path) -> "BackgroundJob":
        """The job ``train --launch`` / ``--hosts`` with ``args`` starts (ConfigError, one line, on bad input)."""
        cmd = launch_command(args)
        from tui_trainer.config import config_from_args

        ranks = args.launch if args.hosts is None else len(_hostfile(args.hosts).hosts)
        where = tempfile.TemporaryDirectory(prefix="tui-trainer-exit-")
        cmd[1:1] = ["--env", f"{EXIT_DIR}={where.name}"]
        return cls(cmd, Path(config_from_args(args).run_dir), log, ranks, exit_dir=where)

    def _wait(self) -> None:
        try:
            code = self.job.wait()
            where = Path(self._where.name) if self._where is not None else self.run_dir / "no-exit-codes"
            code, self.error = job_outcome(self.job, code, where, self.run_dir)
            self.code = 128 - code if code < 0 else code  # killed by a signal: 128 + its number
            if self.error:
                self._log.write((self.error + "\n").encode())
        finally:
            self._log.close()
            if self._where is not None:
                self._where.cleanup()
            self.done.set()

    def stop(self) -> None:
        """What Ctrl-C does to ``train --launch``: SIGINT to mlx.launch and its local ranks (the process
        group); each rank abandons the step in flight and ends on its last checkpoint. Should the job
        not end within ``STOP_GRACE`` seconds, it is killed (``Job.wait``). Once only: a second SIGINT
        would be a second Ctrl-C (a rank stops waiting for its step; mlx.launch leaves its ranks)."""
        if self.done.is_set() or self.stopping:
            return
        self.stopping = True
        if self.job.first_failure is None:
            self.job.first_failure = time.monotonic()
        try:
            os.killpg(self.job.proc.pid, signal.SIGINT)
        except OSError:
            pass

    def kill(self) -> None:
        """Stop now: SIGKILL to mlx.launch and its local ranks (its process group; ``Job.kill`` for what
        it started outside it); the last checkpoint stays valid."""
        if self.done.is_set():
            return
        try:
            os.killpg(self.job.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.job.kill()


class Job:
    """mlx.launch, with its standard error read line by line: the ranks' exits it reports are
    kept (``exits``: rank -> status, in the order reported), its noise about them left out."""

    def __init__(self, cmd: list[str], log=None):
        """``log``: a binary file for mlx.launch's output and the lines kept from its standard error
        (else they go to this process's); mlx.launch then runs in a process group of its own."""
        self._err = log
        if log is None:
            self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        else:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.PIPE,
                                         start_new_session=True)
        self.exits: dict[int, int | None] = {}  # None: killed by mlx.launch
        self.first_failure: float | None = None
        self.timed_out: int | None = None  # a rank whose watchdog ended it (rank_timeout)
        self._reader = threading.Thread(target=self._read, name="mlx.launch-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        from tui_trainer.engine.distributed import RANK_TIMEOUT_EXIT

        for raw in iter(self.proc.stderr.readline, b""):
            line = _ANSI.sub("", raw.decode(errors="replace")).strip()
            node = _NODE.search(line)
            if node:
                rank, status = int(node.group(1)), node.group(2)
                self.exits[rank] = None if status is None else int(status)
                if status is not None and int(status) != 0 and self.first_failure is None:
                    self.first_failure = time.monotonic()
                if status is not None and int(status) == RANK_TIMEOUT_EXIT and self.timed_out is None:
                    self.timed_out = rank
                continue
            if not line or _NOISE.match(line) or _LOST.match(line):  # blank: e.g. a colour reset left
                continue  # on its own line when mlx.launch's coloured warning was cut by a killed rank
            out = self._err if self._err is not None else sys.stderr.buffer
            try:
                out.write(raw)
                out.flush()
            except (OSError, ValueError):  # the log was closed
                pass

    def wait(self) -> int:
        """mlx.launch's exit code; it and its local ranks are killed if it has not ended
        ``STOP_GRACE`` seconds after a rank failed (a rank stuck where no signal reaches it)."""
        while True:
            try:
                code = self.proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if self.first_failure is not None and time.monotonic() - self.first_failure > STOP_GRACE:
                    self.kill()
        self._reader.join(5.0)
        return code

    def kill(self) -> None:
        """mlx.launch and the ranks it started on this machine (its children), at once."""
        try:
            children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        except OSError:
            children = ""
        for pid in [self.proc.pid, *map(int, children.split())]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.wait()


def dead_rank(exits: dict[int, int | None], recorded: dict[str, int]) -> tuple[int, int] | None:
    """(rank, status) of the rank that died: the first reported to fail that left no exit code of its
    own (killed by a signal, os._exit, a crash), or None when the first failure was a watchdog's
    (rank_timeout) or every failed rank left its code. mlx.launch reports the ranks' ends in the order
    its threads see them, so the others' ends can come first: a rank whose collective failed when its
    peer vanished exits 1 with its code left (RankLost), possibly before the dead peer is reported;
    the ranks mlx.launch stops after a failure end on SIGTERM (143, left) or, where that came before
    their handler, -15, which counts as a death only when no failed rank left a code."""
    from tui_trainer.engine.distributed import RANK_TIMEOUT_EXIT

    failed = [(rank, status) for rank, status in exits.items() if status not in (None, 0)]
    if not failed or failed[0][1] == RANK_TIMEOUT_EXIT:
        return None
    died = [(rank, status) for rank, status in failed
            if str(rank) not in recorded and status != RANK_TIMEOUT_EXIT]
    killed = [d for d in died if d[1] != -signal.SIGTERM]
    if killed:
        return killed[0]
    if died and not any(str(rank) in recorded for rank, _ in failed):
        return died[0]
    return None


def recorded_exits(where: Path) -> dict[str, int]:
    """rank -> the exit code it left (``record_exit``)."""
    codes = {}
    for path in where.glob("rank-*"):
        try:
            codes[path.name[5:]] = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
    return codes


def step_in_flight(run_dir: Path) -> int:
    """The step after the last one in ``metrics.jsonl`` (rank 0's run directory)."""
    import json

    last = 0
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        try:
            last = int(json.loads(line)["step"])
            break
        except (ValueError, KeyError, TypeError):
            continue
    return last + 1


def checkpoint_note(run_dir: Path) -> str:
    from tui_trainer.engine.checkpoints import latest_checkpoint

    if not run_dir.is_dir():
        return f"the last checkpoint is in {run_dir} on rank 0's host; resume with --resume"
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return "no step completed, so there is no checkpoint; start again"
    return f"the last checkpoint (step {int(ckpt.name)}) is valid; resume with --resume"
