"""The PPO loop (see DESIGN.md, "PPO"). Formulas live in ppo.py; this file orders them.

One step:
 1. rollout: ``batch_size`` prompts x ``num_samples`` completions, batched + KV-cached;
    the sampling-time log-probs are pi_old;
 2. reference log-probs: the same weights with the adapter off (or ``reference_model``);
 3. values from the value head (PPO; the group-baseline modes have no critic);
 4. scores from the judges on the last token, per-token KL penalty, optional
    missing-EOS penalty, score scaling/clipping, reward whitening, adaptive KL;
 5. GAE, returns, advantage whitening (or group baselines for rloo / grpo);
 6. ``ppo_epochs`` x shuffled minibatches: clipped surrogate + clipped value loss
    (+ entropy bonus), gradient clipping, separate actor / critic optimizers;
 7. metrics to the observers and metrics.jsonl, samples to samples.jsonl.

All MLX work runs on the thread that calls ``run()``. ``pause``/``resume``/
``request_checkpoint``/``stop`` are safe from any thread and act between steps;
``abort`` abandons the step in flight within a token, a judge poll or a minibatch.

Data-parallel (``mlx.launch``, engine/distributed.py): each rank runs this loop on its share of
the step's global batch; the statistics, the minibatch losses' normalisers and the gradients are
summed over the ranks, so every rank applies the one-process update; rank 0 alone writes the run
directory and reports.

Progress inside a step goes out as ``events.Progress`` (phase, counts, rate, ETA).
A checkpoint only ever holds the state at the end of a completed step: the trainer
keeps that state (``_completed``: references to immutable MLX arrays, no copies) and
goes back to it when a step is abandoned or fails.
"""

from __future__ import annotations

import dataclasses
import math
import random
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from tui_trainer import events as ev
from tui_trainer.config import Config, config_changes, config_to_dict, load_config, save_config
from tui_trainer.data import PromptSet, require_columns
from tui_trainer.engine import ppo
from tui_trainer.engine.adapters import adapter_files, load_init_adapter
from tui_trainer.engine.checkpoints import adapter_config as checkpoint_adapter_config
from tui_trainer.engine.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from tui_trainer.engine.distributed import Ranks, world
from tui_trainer.engine.lanes import Lanes
from tui_trainer.errors import ConfigError, StepInterrupted, TrainerError
from tui_trainer.engine.models import base_fingerprint, load_policy, locate_model, model_reference
from tui_trainer.engine.objectives import Batch, Targets, objective_for
from tui_trainer.engine.policy import FrozenPrefix, Policy, adapter_fused, evaluate, reference_logprobs
from tui_trainer.engine.rollout import Rollout, sample
from tui_trainer.tracking import Trackers, check_trackers
from tui_trainer.engine.runfiles import RunFiles, RunLock, check_run_dir, cut_to_step


def _peak_memory_mb() -> float:
    peak = 0.0
    try:
        peak = mx.get_peak_memory() / 2**20
    except AttributeError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / 2**20 if sys.platform == "darwin" else rss / 1024
    return float(max(peak, rss_mb))


def make_schedule(cfg: Config, lr: float, total_updates: int):
    """constant / linear decay to 0 / cosine decay, after ``warmup_steps`` optimizer updates
    (or ``warmup_ratio`` of ``total_updates``, rounded up as TRL does)."""
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 or not cfg.warmup_ratio \
        else math.ceil(cfg.warmup_ratio * total_updates)
    decay_steps = max(total_updates - warmup, 1)
    if cfg.scheduler == "linear":
        main = optim.linear_schedule(lr, 0.0, decay_steps)
    elif cfg.scheduler == "cosine":
        main = optim.cosine_decay(lr, decay_steps)
    else:
        main = lr
    if warmup > 0:
        warm = optim.linear_schedule(1e-8, lr, warmup)
        main = main if callable(main) else (lambda _s, _lr=lr: _lr)
        return optim.join_schedules([warm, main], [warmup])
    return main


class Trainer:
    def __init__(self, config: Config, observer: ev.Observer | None = None, resume: bool = False, *,
                 judges: Callable[[Callable[[str], None]], Any], prompts: Callable[[], Any],
                 ranks: Ranks | None = None):
        """``judges(log)`` builds the run's JudgeSet, ``prompts()`` reads its prompt rows; both are
        called in ``setup`` (``tui_trainer.run.build_run`` makes them from the config). ``ranks``:
        the data-parallel job this process is a rank of (default: ``distributed.world()``)."""
        self.cfg = config
        self.dist = ranks if ranks is not None else world()
        self._user_observer = observer
        self._observer = observer  # + the run files once setup has opened them
        self._make_judges, self._read_prompts = judges, prompts
        self.judges: Any = None  # built in setup, closed when the run ends
        self.files: RunFiles | None = None
        self.trackers: Trackers | None = None
        self._lock: RunLock | None = None
        self.resume_requested = resume
        self.run_dir = Path(config.run_dir)
        self._pause = threading.Event()
        self._stop = threading.Event()
        self._ckpt = threading.Event()
        self._abort = threading.Event()
        self._completed: dict | None = None  # the state at the end of the last completed step
        self._phase_times: dict[str, float] = {}  # the last completed step's seconds per phase
        self._phase_now: dict[str, float] = {}
        self._progress_t = 0.0
        self.step = 0
        self.beta = config.beta
        self.objective = objective_for(config)  # what the mode fits (engine/objectives.py)
        self._nonfinite_run = 0  # steps in a row whose update was skipped (non-finite loss / gradient)
        self.skipped_updates = 0
        self.state = ev.RunState("starting", 0, config.steps, str(self.run_dir))
        self.last_metrics: dict[str, float] = {}

    # ----------------------------------------------------------------- controls (any thread)
    def pause(self) -> None:
        self._pause.set()

    def resume(self) -> None:
        self._pause.clear()

    def request_checkpoint(self) -> None:
        self._ckpt.set()

    def stop(self) -> None:
        """Stop after the step in flight (it completes and is checkpointed)."""
        self._stop.set()
        self._pause.clear()

    def abort(self) -> None:
        """Stop now: abandon the step in flight; the last completed step is what is kept."""
        self._abort.set()
        self.stop()

    @property
    def paused(self) -> bool:
        return self._pause.is_set()

    # ----------------------------------------------------------------- events
    def emit(self, event: Any) -> None:
        if self._observer is not None:
            self._observer(event)

    def log(self, message: str, level: str = "info") -> None:
        self.emit(ev.LogMessage(level, message))

    def _set_state(self, status: str, message: str = "") -> None:
        self.state = ev.RunState(status, self.step, self.cfg.steps, str(self.run_dir), message)
        self.emit(self.state)

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        """Check what can be checked without the model, take the run directory, then load.

        Order matters for bad input: the data, the judges and the run directory are checked
        before anything is written and before the model loads (10-20 s), so a typo costs a
        second and leaves nothing behind.

        Several ranks (engine/distributed.py): rank 0 alone takes the run directory and reads a
        checkpoint; every rank then learns whether any rank failed (one line on all of them),
        checks that all ranks have the same config, model and data, and takes rank 0's state.
        """
        error: BaseException | None = None
        try:
            self._setup_local()
        except Exception as exc:  # every rank hears of it before raising: no rank waits for a dead one
            error = exc
        self.dist.raise_if_any(error)
        if self.dist.active:
            cfg = self.cfg
            same = {k: v for k, v in config_to_dict(cfg).items() if k not in ("run_dir", "load_warnings")}
            self.dist.check_same("config, model or data", {"config": same, "model": self._base[1],
                                                            "prompts": self.prompts.fingerprint()})
            self._take_rank0_state()
        resumed = f" (resumed at step {self.step})" if self.resume_requested else ""  # (else _take_run_dir stopped)
        self.log(f"run directory: {self.run_dir}{resumed}")

    def _setup_local(self) -> None:
        cfg = self.cfg
        main = self.dist.is_main
        t_load = time.perf_counter()

        def loaded(done: int, detail: str) -> None:  # start-up, before step 1: the "loading" phase
            self.emit(ev.Progress(0, "loading", done, 4, "parts", detail=detail,
                                  elapsed=time.perf_counter() - t_load))

        for line in cfg.load_warnings:  # keys the config loader accepted but PPO ignores
            self.log(line, "warning")
        loaded(0, "reading the prompts")
        check_trackers(cfg.report_to)  # a tracker's missing package: one line, before anything is written
        if main:
            check_run_dir(self.run_dir)
        for ref in (cfg.model, cfg.reference_model) if cfg.reference_model else (cfg.model,):
            locate_model(ref)
        if cfg.init_adapter and not self.resume_requested:
            adapter_files(cfg.init_adapter)  # there, before anything is written (its fit is checked on load)
        self._table = self._read_prompts()
        if cfg.epochs is not None:  # TRL's num_train_epochs: steps from the number of prompts
            n_rows = len(self._table.rows)
            steps = max(1, math.ceil(cfg.epochs * n_rows / cfg.batch_size))
            self.log(f"num_train_epochs {cfg.epochs:g} over {n_rows} prompts, {cfg.batch_size} a step: {steps} steps")
            self.cfg = cfg = dataclasses.replace(cfg, steps=steps, epochs=None)
            self._set_state("starting", "reading the prompts")
        self.dist.share(cfg.batch_size)  # batch_size is global: it must split evenly over the ranks
        loaded(1, "starting the judges")
        self.judges = self._make_judges(lambda m: self.log(m, "warning"))
        asking = [m.key for m in self.judges.members if getattr(m.judge, "interactive", False)]
        if cfg.eval_every and asking:
            raise ConfigError(f"eval_every: judge {', '.join(asking)} asks a person, and the evaluation set is "
                              "scored without one; use judges that score on their own, or eval_every: 0")
        learning = [m.key for m in self.judges.members if getattr(m.judge, "online", None) is not None]
        if self.dist.active and learning:  # a person is asked on rank 0 (JudgeSet.ranks); an online RM is not shared
            raise ConfigError(f"judge {', '.join(learning)} learns a reward model from a person (learn_from: human), "
                              f"which a run over {self.dist.size} ranks cannot do yet; use one process")
        # a judge that needs a column (the answer judge's `answer`) finds it in every row, or the run stops here
        require_columns(self._table, cfg.data.prompt_field, self.judges.required_columns())
        ckpt = None
        if main:  # rank 0 alone writes the run directory
            ckpt = self._take_run_dir()
            self.files = RunFiles(self.run_dir)
            self.trackers = Trackers(cfg.report_to, self.run_dir, config_to_dict(cfg),
                                     log=lambda m: self.log(m, "warning"), start_step=int(ckpt.name) if ckpt else 0)
            self._observer = ev.fan_out(self.files, self.trackers, self._user_observer)
        self._set_state("starting", "loading model")
        if main:
            save_config(cfg, self.run_dir / "config.yaml")

        loaded(2, "reading the model")
        mx.random.seed(cfg.seed)
        model, self.tokenizer = load_policy(cfg.model, quantized=cfg.quantized_base)
        # the checkpoints name the base (mlx_lm --adapter-path, export) and fingerprint it (export refuses a changed one)
        self._base = (model_reference(cfg.model), base_fingerprint(cfg.model))
        loaded(3, "adding the adapter")
        self.policy = Policy(model, cfg.adapter)
        if cfg.init_adapter and ckpt is None and not self.resume_requested:
            # SFT -> PPO; a resume takes the checkpoint's adapter instead
            n = load_init_adapter(self.policy, cfg.init_adapter, gguf_policy=locate_model(cfg.model)[0] == "gguf",
                                  log=self.log)
            self.log(f"adapter initialised from {cfg.init_adapter} ({n} tensors); the reference is the base model")
        self.judges.share_policy(self.policy, self.tokenizer)  # a reward adapter on this base scores on it
        self.reference = None
        if cfg.reference_model:
            self.reference, _ = load_policy(cfg.reference_model, quantized=cfg.quantized_base)
            self.reference.freeze()
        n_params = sum(v.size for _, v in tree_flatten(self.policy.trainable_parameters()))
        self.log(f"model loaded: {cfg.model or 'embedded SmolLM2-135M-Instruct'}; "
                 f"{cfg.adapter.type} adapter, {n_params / 1e6:.2f}M trainable parameters")
        if cfg.mode == "pairwise" and not self.judges.can_compare:
            self.log("pairwise mode with pointwise judges: the higher-scored completion of each pair wins")
        if cfg.max_seq_length is not None:  # checked > max_new_tokens by the config
            max_prompt = cfg.max_seq_length - cfg.max_new_tokens
        else:
            context = getattr(getattr(model, "args", None), "max_position_embeddings", None) or 2048
            max_prompt = max(16, min(context, 4096) - cfg.max_new_tokens)
        if cfg.max_prompt_tokens is not None:
            max_prompt = min(max_prompt, cfg.max_prompt_tokens)
        self.prompts = PromptSet.load(cfg.data, self.tokenizer, max_prompt_tokens=max_prompt,
                                      seed=cfg.seed, table=self._table)
        loaded(4, "ready")

        rows = cfg.batch_size * cfg.num_samples
        n_mb = math.ceil(rows / cfg.minibatch_size)
        total_updates = max(1, cfg.steps * cfg.ppo_epochs * math.ceil(n_mb / cfg.grad_accum))
        self.actor_opt = optim.Adam(learning_rate=make_schedule(cfg, cfg.actor_lr, total_updates), eps=1e-5)
        self.critic_opt = optim.Adam(learning_rate=make_schedule(cfg, cfg.critic_lr, total_updates), eps=1e-5)
        self._loss_and_grad = nn.value_and_grad(self.policy, self._loss)
        self.lanes = Lanes(ranks=self.dist.size if self.dist.active else 1)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.eos_ids = set(self.tokenizer.eos_token_ids)

        if ckpt is not None:
            self._restore(ckpt)

    def _take_rank0_state(self) -> None:
        """Every rank continues from rank 0's state: its checkpoint on a resume (only rank 0 reads the
        run directory, which need not be shared), the same initial adapter otherwise."""
        main = self.dist.is_main
        snap = self._snapshot() if main else None
        head = self.dist.broadcast_json(
            {"step": snap["step"], "beta": snap["beta"], "data": snap["data"],
             "initialized": {k: v[0] for k, v in snap["optimizers"].items()}} if main else None)
        arrays: dict[str, mx.array] = {}
        if main:
            arrays.update({f"adapters\t{k}": v for k, v in snap["adapters"].items()})
            arrays.update({f"value_head\t{k}": v for k, v in snap["value_head"].items()})
            for name, (_, state) in snap["optimizers"].items():
                arrays.update({f"opt.{name}\t{k}": v for k, v in tree_flatten(state)})
        got = self.dist.broadcast_arrays(arrays)
        if main:
            return
        parts: dict[str, dict[str, mx.array]] = {}
        for key, value in got.items():
            part, name = key.split("\t", 1)
            parts.setdefault(part, {})[name] = value
        self._load_trainable({
            "adapters": parts.get("adapters", {}), "value_head": parts.get("value_head", {}),
            "optimizers": {name: (head["initialized"][name], tree_unflatten(list(parts.get(f"opt.{name}", {}).items()))
                                  if parts.get(f"opt.{name}") else {})
                           for name in ("actor", "critic")},
        })
        self.step, self.beta = int(head["step"]), float(head["beta"])
        self.prompts.set_state(head["data"])
        mx.eval(self.policy.parameters())

    def _take_run_dir(self) -> Path | None:
        """Create and lock the run directory; check a resume; cut the jsonl files back to the
        checkpoint the run starts from (every step appears once). Returns that checkpoint."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrainerError(f"run_dir {self.run_dir}: cannot create it ({exc.strerror or exc})") from None
        self._lock = RunLock(self.run_dir).acquire()
        ckpt = latest_checkpoint(self.run_dir) if self.resume_requested else None
        if self.resume_requested and ckpt is None:
            raise TrainerError(f"{self.run_dir}: nothing to resume (no checkpoints/)")
        if not self.resume_requested and latest_checkpoint(self.run_dir) is not None:
            raise TrainerError(f"{self.run_dir} already holds a run: pass --resume to continue it, "
                               "or choose another --run-dir")
        saved = self.run_dir / "config.yaml"
        if ckpt is not None and saved.is_file():
            try:
                before = load_config(saved)
            except ConfigError as exc:
                self.log(f"the run's config.yaml is unreadable ({exc}); not compared", "warning")
            else:
                refused, allowed = config_changes(before, self.cfg)
                if refused:
                    raise TrainerError("--resume cannot change " + "; ".join(refused) + " (the checkpoint "
                                       "holds that model and adapter); start a new run with another --run-dir")
                if allowed:
                    self.log("resumed with changes: " + "; ".join(allowed))
        start = int(ckpt.name) if ckpt is not None else 0
        removed = cut_to_step(self.run_dir, start)
        if removed:
            what = ", ".join(f"{n} row(s) of {f}" for f, n in removed.items())
            side = f" (later labels kept in labels.after-{start}.jsonl)" if "labels.jsonl" in removed else ""
            self.log(f"starting from step {start}: removed {what} written after it{side}", "warning")
        return ckpt

    def _restore(self, path: Path) -> None:
        data = load_checkpoint(path)
        self.policy.model.load_weights(list(data["adapters"].items()), strict=False)
        self.policy.value_head.load_weights(list(data["value_head"].items()))
        for name, opt in (("actor", self.actor_opt), ("critic", self.critic_opt)):
            if name in data["optimizers"]:
                opt.init(self._trainable(name))
                opt.state = tree_map(lambda x: x, data["optimizers"][name])
        st = data["state"]
        self.step = int(st["step"])
        self.beta = float(st["beta"])
        self.prompts.set_state(st["data"])
        mx.eval(self.policy.parameters())

    def _trainable(self, which: str) -> dict:
        params = self.policy.trainable_parameters()
        if which == "critic":
            return {"value_head": params["value_head"]}
        return {k: v for k, v in params.items() if k != "value_head"}

    # ----------------------------------------------------------------- checkpoints
    def save(self) -> Path | None:
        """Checkpoint the trainable state (rank 0; the other ranks write nothing: None)."""
        if not self.dist.is_main:
            return None
        cfg = self.cfg
        adapter_config = checkpoint_adapter_config(self.policy, self._base, step=self.step, mode=cfg.mode)
        state = {"step": self.step, "beta": self.beta, "data": self.prompts.state(), "seed": cfg.seed,
                 "rng": {"mlx_seed_rule": "seed * 1000003 + step", "sample_rule": "rollout.row_keys(mlx seed, row)",
                         "shuffle_seed_rule": "seed * 7919 + step"}}
        path = save_checkpoint(self.run_dir, self.step, adapter_weights=self.policy.adapter_weights(),
                               adapter_config=adapter_config, value_head=self.policy.value_head_weights(),
                               optimizers={"actor": self.actor_opt, "critic": self.critic_opt}, state=state)
        self.emit(ev.CheckpointSaved(self.step, str(path)))
        self.log(f"checkpoint saved: {path}")
        return path

    # ----------------------------------------------------------------- the loop
    def run(self) -> ev.RunState:
        try:
            self.setup()
            self.dist.watch(self.cfg.rank_timeout)  # several ranks: a collective waiting past it ends the job
            self.judges.interrupt = self._abort
            self.judges.ranks = self.dist  # a person is asked on rank 0 for every rank's samples
            self.judges.progress = self._judge_progress
            self._completed = self._snapshot()
            self._set_state("running")
            while self.step < self.cfg.steps:
                stop, pause = self._controls()
                if stop:
                    break
                if pause:
                    if self.state.status != "paused":
                        self._set_state("paused")
                    self._stop.wait(0.05)
                    if self._ckpt.is_set():
                        self._ckpt.clear()
                        self.save()
                    continue
                self.train_step()
                self._completed = self._snapshot()
                if self._ckpt.is_set() or (self.cfg.save_every > 0 and self.step % self.cfg.save_every == 0):
                    self._ckpt.clear()
                    self.save()
                self._set_state("paused" if self._pause.is_set() else "running")
            self._save_if_missing()  # the run always ends on a checkpoint of its last step
            self._set_state("stopped" if self._stop.is_set() and self.step < self.cfg.steps else "finished")
        except StepInterrupted:
            self._back_to_completed()
            self.log(f"step {self.step + 1} abandoned; the run stops at step {self.step}", "warning")
            self._set_state("stopped", f"interrupted: step {self.step + 1} abandoned")
        except KeyboardInterrupt:
            self._back_to_completed()
            self._set_state("stopped", "interrupted")
            raise
        except TrainerError as exc:
            self._back_to_completed()
            if self._completed is not None and self.step == 0:  # training began, no step completed
                exc = type(exc)(f"{exc}; nothing trained yet, so no checkpoint was written")
                self._set_state("failed", str(exc))
                raise exc from None
            self._set_state("failed", str(exc))
            raise
        finally:
            for part in (self.judges, self.files, self.trackers):
                if part is not None:
                    part.close()
            if self._lock is not None:
                self._lock.release()
        return self.state

    def _controls(self) -> tuple[bool, bool]:
        """(stop, pause) between steps; over several ranks, either on any rank holds for all
        (each rank then takes the same branch, so the collectives stay in step)."""
        if not self.dist.active:
            return self._stop.is_set(), self._pause.is_set()
        stop, pause = self.dist.sum_floats([self._stop.is_set(), self._pause.is_set()])
        if stop > 0:
            self._stop.set()
        return stop > 0, pause > 0

    def _snapshot(self) -> dict:
        """The trainable state now (references: MLX arrays are immutable, updates replace them)."""
        return {
            "step": self.step, "beta": self.beta, "data": self.prompts.state(),
            "adapters": self.policy.adapter_weights(), "value_head": self.policy.value_head_weights(),
            "optimizers": {name: (opt._initialized, tree_map(lambda x: x, opt.state))
                           for name, opt in (("actor", self.actor_opt), ("critic", self.critic_opt))},
        }

    def _back_to_completed(self) -> None:
        """Undo a step that did not complete, then make sure its predecessor is checkpointed.

        A step abandoned or failed half-way may have drawn prompts and updated the adapter and
        the optimizers; none of that may reach a checkpoint. An existing checkpoint of the last
        completed step is the same state and is kept as it is.
        """
        snap = self._completed
        if snap is None:
            return
        try:
            self._load_trainable(snap)
            self.step, self.beta = snap["step"], snap["beta"]
            self.prompts.set_state(snap["data"])
            self._save_if_missing()
        except Exception as exc:  # never hide the original error
            self.log(f"could not save a checkpoint: {exc}", "error")

    def _load_trainable(self, snap: dict) -> None:
        """Adapter, value head and both optimizers as they were in ``snap``."""
        self.policy.model.load_weights(list(snap["adapters"].items()), strict=False)
        self.policy.value_head.load_weights(list(snap["value_head"].items()))
        for name, opt in (("actor", self.actor_opt), ("critic", self.critic_opt)):
            initialized, state = snap["optimizers"][name]
            opt.state = tree_map(lambda x: x, state)
            opt._initialized = initialized

    def _save_if_missing(self) -> None:
        if not self.dist.is_main:
            return
        last = latest_checkpoint(self.run_dir)
        if self.step > 0 and (last is None or int(last.name) != self.step):
            self.save()

    # ----------------------------------------------------------------- progress
    def _check_abort(self) -> None:
        if self._abort.is_set():
            raise StepInterrupted("step interrupted")

    def _begin_phase(self, phase: str) -> None:
        self._phase_start = time.perf_counter()
        self._phase_now[phase] = 0.0

    def _end_phase(self, phase: str) -> None:
        self._phase_now[phase] = time.perf_counter() - self._phase_start

    def _progress(self, phase: str, done: int, total: int, unit: str, rate: float | None = None,
                  detail: str = "") -> None:
        """Emit ``events.Progress``: per minibatch and judge call; rollout tokens at most ~10 a second."""
        now = time.perf_counter()
        if phase == "rollout" and 0 < done < total and now - self._progress_t < 0.1:
            return
        self._progress_t = now
        eta = None
        if self._phase_times:  # the rest of this phase by its pace, the later phases as last step
            spent = now - self._phase_start
            frac = done / total if total else 0.0
            rest = spent * (1 - frac) / frac if frac > 0 else max(self._phase_times.get(phase, 0.0) - spent, 0.0)
            later = ev.PHASES[ev.PHASES.index(phase) + 1:]
            eta = rest + sum(self._phase_times.get(p, 0.0) for p in later)
        self.emit(ev.Progress(self.step + 1, phase, done, total, unit, rate, detail, now - self._step_t0, eta))

    def _judge_progress(self, judge: str, done: int, total: int) -> None:
        self._progress("judging", done, total, "samples", detail=judge)

    # ----------------------------------------------------------------- one step
    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        step = self.step + 1
        sample_seed = cfg.seed * 1000003 + step  # each row's draw: (this, its index in the step's batch)
        mx.random.seed(sample_seed)
        shuffle = random.Random(cfg.seed * 7919 + step)
        t0 = self._step_t0 = time.perf_counter()
        waited0 = self.dist.waited
        self._phase_now = {}

        self._begin_phase("rollout")
        # the data position is global: every rank draws the step's global batch and rolls out its share
        batch = self.prompts.next_batch(cfg.batch_size)
        share = self.dist.share(len(batch))
        batch = batch[share]
        n_rows = len(batch) * cfg.num_samples
        expected = n_rows * cfg.max_new_tokens

        def on_token(t: int) -> None:
            spent = time.perf_counter() - t0
            self._progress("rollout", t * n_rows, expected, "tokens", rate=t * n_rows / max(spent, 1e-9))

        self._progress("rollout", 0, expected, "tokens")
        with adapter_fused(self.policy) as model:  # one matmul a LoRA layer while decoding
            roll = sample(model, [p.ids for p in batch], num_samples=cfg.num_samples,
                          max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k, eos_ids=self.eos_ids, pad_id=self.pad_id, seed=sample_seed,
                          row_offset=share.start * cfg.num_samples, on_token=on_token,
                          should_stop=self._abort.is_set,
                          value_head=self.policy.value_head if self.objective.critic else None)
        texts = [batch[i].text for i in roll.prompt_index]
        columns = [batch[i].columns for i in roll.prompt_index]  # each sample's dataset row, for the judges
        completions = self._texts(roll)
        t1 = time.perf_counter()
        n_tok = roll.num_tokens
        self._progress("rollout", expected, expected, "tokens", rate=n_tok / max(t1 - t0, 1e-9))
        self._end_phase("rollout")

        self._begin_phase("judging")
        scores, per_judge = self._judge(texts, completions, step, columns)
        self._check_abort()
        self._end_phase("judging")
        t2 = time.perf_counter()

        try:
            stats = self._update(roll, scores, shuffle)
            self._nonfinite_run = 0
            stats["skipped_update"] = 0.0
        except _NonFinite as exc:
            # a NaN / inf loss or gradient: nothing of this step's update is kept
            self._load_trainable(self._completed)
            self._nonfinite_run += 1
            self.skipped_updates += 1
            if self._nonfinite_run >= MAX_NONFINITE_IN_A_ROW:
                raise TrainerError(f"{self._nonfinite_run} steps in a row had a non-finite loss or gradient "
                                   f"(last: step {step}, {exc.where}); stopping. Lower actor_lr, or bound the "
                                   "scores with score_clip") from None
            self.log(f"step {step}: non-finite loss or gradient ({exc.where}); the update was not applied, "
                     f"adapter and optimizers are as after step {step - 1} ({self._nonfinite_run} in a row)",
                     "warning")
            stats = {**exc.stats, "skipped_update": 1.0}
        t3 = time.perf_counter()
        busy = (t3 - t0) - (self.dist.waited - waited0)  # this rank's work: the step less its waits for the others
        eval_score = None
        if cfg.eval_every and step % cfg.eval_every == 0 and self.dist.is_main:  # rank 0 alone evaluates
            eval_score = self.evaluate(step)

        self.step = step
        self._phase_times = dict(self._phase_now)
        # every rank's samples, in global row order (rank 0 reports and writes them all)
        shares = self.dist.gather_json({"texts": texts, "completions": completions, "scores": scores,
                                        "per_judge": per_judge, "finished": roll.finished, "lengths": roll.lengths,
                                        "peak_memory_mb": _peak_memory_mb(),
                                        "times": {"busy": busy, "rollout": t1 - t0, "judge": t2 - t1}})
        texts, completions, scores, finished, lengths = ([x for part in shares for x in part[key]] for key in
                                                         ("texts", "completions", "scores", "finished", "lengths"))
        per_judge = {name: [x for part in shares for x in part["per_judge"][name]] for name in shares[0]["per_judge"]}
        n_tok = sum(lengths)
        valid = [s for s in scores if s is not None]
        metrics = {
            "step": step,
            "score_mean": float(sum(valid) / len(valid)) if valid else float("nan"),
            "score_std": float(_std(valid)),
            **stats,
            "response_length": float(sum(lengths) / len(lengths)),
            "eos_rate": float(sum(finished) / len(finished)),
            "beta": float(self.beta),
            "actor_lr": float(self.actor_opt.learning_rate.item()),
            "critic_lr": float(self.critic_opt.learning_rate.item()),
            "time_rollout": t1 - t0,
            "time_judge": t2 - t1,
            "time_reference": self._phase_now.get("reference", 0.0),
            "time_update": t3 - t2,
            "time_step": t3 - t0,
            # generation speed: tokens sampled per second of the rollout phase (all ranks)
            "generation_tokens_per_second": n_tok / max(t1 - t0, 1e-9),
            "decode_threads": float(roll.decode_threads),  # BLAS threads the decode timed fastest
            "update_lanes": float(self.lanes.n),  # CPU streams the update's minibatches ran on (engine/lanes.py)
            # whole-step throughput: completions per second, steps per minute
            "samples_per_second": len(lengths) / max(t3 - t0, 1e-9),
            "steps_per_minute": 60.0 / max(t3 - t0, 1e-9),
            "peak_memory_mb": max(part["peak_memory_mb"] for part in shares),  # the fullest rank
            "dropped_samples": float(sum(s is None for s in scores)),
        }
        if self.dist.active:
            metrics["ranks"] = self.dist.size
            metrics.update(rank_times([part["times"] for part in shares]))
        for name, vals in per_judge.items():
            v = [x for x in vals if x is not None]
            metrics[f"score/{name}"] = float(sum(v) / len(v)) if v else float("nan")
        if eval_score is not None:
            metrics["eval_score"] = eval_score
            metrics["time_evaluation"] = self._phase_now["evaluation"]
        metrics.update(self.judges.metrics())  # e.g. reward/labels, reward/agreement (a reward model learning online)
        if cfg.kl_target:
            self.beta = ppo.adaptive_kl_beta(self.beta, stats["kl"], cfg.kl_target,
                                             cfg.batch_size * cfg.num_samples, cfg.kl_horizon)
        self.last_metrics = metrics
        self.emit(ev.StepMetrics(step, metrics))
        self.emit([ev.Sample(step, p, c, s, {k: v[i] for k, v in per_judge.items()}, f)
                   for i, (p, c, s, f) in enumerate(zip(texts, completions, scores, finished))])
        return metrics

    def _texts(self, roll: Rollout) -> list[str]:
        """Each completion of ``roll`` as text, its EOS tokens left out."""
        return [self.tokenizer.decode([t for t in r if t not in self.eos_ids], skip_special_tokens=True)
                for r in roll.responses]

    def evaluate(self, step: int) -> float:
        """The judges' mean score of the policy on the fixed evaluation set (``eval_every``).

        The set is the first ``eval_prompts`` prompts of the data (file order), one sample each,
        drawn with the same random seed every time; so two evaluations differ only by what the
        policy learned, never by which prompts a step happened to draw. The judges score it
        pointwise (a person is never asked). Training randomness is untouched: every step
        reseeds from (seed, step) when it starts. NaN when every sample was dropped."""
        cfg = self.cfg
        prompts = self.prompts.prompts[:cfg.eval_prompts]
        self._begin_phase("evaluation")
        t0 = time.perf_counter()
        expected = len(prompts) * cfg.max_new_tokens

        def on_token(t: int) -> None:
            self._progress("evaluation", t * len(prompts), expected, "tokens",
                           rate=t * len(prompts) / max(time.perf_counter() - t0, 1e-9))

        with adapter_fused(self.policy) as model:
            roll = sample(model, [p.ids for p in prompts], num_samples=1,
                          max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k, eos_ids=self.eos_ids, pad_id=self.pad_id,
                          seed=cfg.seed * 1000003 + 999_999_937,  # the same draw at every evaluation
                          on_token=on_token, should_stop=self._abort.is_set)
        self._check_abort()
        completions = self._texts(roll)
        self._progress("evaluation", expected, expected, "tokens")
        shown, self.judges.progress = self.judges.progress, (
            lambda judge, done, total: self._progress("evaluation", done, total, "samples", detail=judge))
        try:
            res = self.judges.score([p.text for p in prompts], completions, step=step,
                                    columns=[p.columns for p in prompts])
        finally:
            self.judges.progress = shown
        self._check_abort()
        self._end_phase("evaluation")
        valid = [s for s in res.scores if s is not None]
        return float(sum(valid) / len(valid)) if valid else float("nan")

    def _judge(self, texts: list[str], completions: list[str], step: int, columns: list[dict] | None = None):
        cfg = self.cfg
        if cfg.mode != "pairwise":
            res = self.judges.score(texts, completions, step=step, columns=columns)
            return list(res.scores), dict(res.per_judge)
        scores: list[float | None] = []
        choices = []
        pointwise: dict[str, list[float | None]] = {}
        if self.judges.can_compare:
            def after(done: int, total: int) -> None:
                if done:
                    self._check_abort()
                self._progress("judging", 2 * done, 2 * total, "samples", detail="pairs")

            verdicts = self.judges.compare_pairs(texts[0::2], completions[0::2], completions[1::2], step=step,
                                                 after=after)
            choices = [v.choice for v in verdicts]
        else:  # pointwise judges decide each pair by score; a dropped score skips the pair
            res = self.judges.score(texts, completions, step=step, columns=columns)
            pointwise = dict(res.per_judge)  # reported too: score/<judge> is what the verdicts hide
            for a, b in zip(res.scores[0::2], res.scores[1::2]):
                choices.append("skip" if a is None or b is None else "a" if a > b else "b" if b > a else "tie")
        for pair in ppo.verdict_rewards(choices):
            scores.extend(pair if pair is not None else (None, None))
        return scores, {"verdict": scores, **pointwise}

    def _shape_scores(self, roll: Rollout, scores: list[float | None]) -> tuple[mx.array, mx.array]:
        """Scores as an array (0 where dropped) and a row-keep mask; EOS penalty, scale, clip applied."""
        cfg = self.cfg
        keep = mx.array([0.0 if s is None else 1.0 for s in scores])
        vals = []
        for s, fin in zip(scores, roll.finished):
            s = 0.0 if s is None else float(s)
            if cfg.missing_eos_penalty is not None and not fin:
                s -= cfg.missing_eos_penalty
            s *= cfg.score_scale
            if cfg.score_clip is not None:
                s = max(-cfg.score_clip, min(cfg.score_clip, s))
            vals.append(s)
        return mx.array(vals, dtype=mx.float32), keep

    def _update(self, roll: Rollout, raw_scores: list[float | None], shuffle: random.Random) -> dict[str, float]:
        """Reference pass -> the objective's targets -> ``ppo_epochs`` of minibatch updates."""
        obj = self.objective
        scores, keep = self._shape_scores(roll, raw_scores)
        keep = obj.rows(raw_scores, keep)
        mask = roll.response_mask * keep[:, None]
        # the reference pass (no gradient) in groups of 4 rows a lane (at least a minibatch): fewer,
        # larger matmuls (16 rows on 2 lanes: 3.7-4.0 s in groups of 8 vs 4.5-4.7 s in groups of 4)
        chunks = minibatches(list(range(mask.shape[0])), max(self.cfg.minibatch_size, 4 * self.lanes.n))

        self._begin_phase("reference")
        self._progress("reference", 0, len(chunks), "row groups")
        prefix = self.policy.frozen_prefix
        with self.lanes.blas():
            prefix.fill(self.policy.model, roll, chunks, self.lanes)
            logp_ref = self._reference_pass(roll, chunks, prefix)
        values_old = roll.values
        kl_seq, stats = self._kl_stats(roll.logprobs, logp_ref, mask, keep)
        targets = obj.targets(Batch(scores, raw_scores, keep, mask, roll.response_mask, roll.logprobs, logp_ref,
                                    kl_seq, self.beta, values_old * mask if obj.critic else None,
                                    allsum=self.dist.sum))
        stats.update(targets.stats)
        mx.eval(targets.advantages, logp_ref, *([targets.returns, targets.values_old] if obj.critic else []))
        self._end_phase("reference")

        self._begin_phase("update")
        # the kept rows of the global batch (rank r holds rows offset .. offset + n - 1 of it)
        keep_all = self.dist.gather(keep).tolist()
        rows = [i for i in range(len(keep_all)) if keep_all[i] > 0]
        try:
            with self.lanes.blas():
                stats.update(self._fit(roll, rows, mask, logp_ref, targets, prefix, shuffle, stats))
        finally:
            prefix.clear()
        self._end_phase("update")
        stats["entropy"] = float(ppo.masked_mean(roll.entropy, mask, allsum=self.dist.sum).item())
        if obj.critic:
            stats["explained_variance"] = float(ppo.explained_variance(targets.values_old, targets.returns,
                                                                       mask, allsum=self.dist.sum).item())
        return stats

    def _reference_pass(self, roll: Rollout, chunks, prefix: FrozenPrefix) -> mx.array:
        """Reference log-probs (adapter off), no gradient. (A critic's V(s_t) before the update
        come with the rollout: ``Rollout.values``, the decode's own hidden states.)"""
        R = roll.response_mask.shape[1]
        ref_parts = []
        for c, idx in enumerate(chunks):
            self._check_abort()
            lanes = []
            for stream, part in self.lanes.split(idx):  # the chunk's rows over the lanes, in parallel
                with mx.stream(stream):
                    tok, lp, p_w, r_w = trim_rows(roll, part)
                    ref = reference_logprobs(self.policy, tok, lp, p_w, self.cfg.temperature, self.reference,
                                             None if self.reference else prefix.rows(part))
                    lanes.append(mx.pad(ref, [(0, 0), (0, R - r_w)]))
            ref_parts.append(mx.concatenate(lanes))
            mx.eval(ref_parts[-1])
            self._progress("reference", c + 1, len(chunks), "row groups")
        return mx.concatenate(ref_parts) * roll.response_mask

    def _kl_stats(self, logp_old, logp_ref, mask, keep) -> tuple[mx.array, dict[str, float]]:
        """KL to the reference per row (the configured estimator: penalised, fed to the adaptive
        controller) and the reported kl / kl_k1 / kl_k3: summed over a row, averaged over rows."""
        kl1 = ppo.kl_k1(logp_old, logp_ref) * mask
        kl3 = ppo.kl_k3(logp_old, logp_ref) * mask
        kl_seq = (kl3 if self.cfg.kl_estimator == "k3" else kl1).sum(axis=1)
        n_kept, kl, k1, k3 = self.dist.sum(mx.stack([keep.sum(), kl_seq.sum(), kl1.sum(), kl3.sum()])).tolist()
        n_kept = max(n_kept, 1.0)  # over every rank's rows: the controller sees the global batch
        return kl_seq, {"kl": float(kl / n_kept), "kl_k1": float(k1 / n_kept), "kl_k3": float(k3 / n_kept)}

    def _fit(self, roll: Rollout, rows: list[int], mask, logp_ref, t: Targets, prefix, shuffle: random.Random,
             stats: dict[str, float]) -> dict[str, float]:
        """``ppo_epochs`` passes of shuffled minibatches over ``rows``; the means of their statistics.

        ``target_kl`` stops early (SB3): a minibatch with approx_kl > 1.5 x target_kl is not applied
        and the rest of the step's update is skipped.

        Several ranks: ``rows`` are the kept rows of the step's global batch. Every rank shuffles
        them alike and cuts the same minibatches of ``minibatch_size`` global rows, then works on
        the rows it holds (rank r holds global rows r x n .. r x n + n - 1, n rows each). A
        minibatch's loss is divided by its global token count and the ranks' gradients are summed
        (``average_gradients`` x ranks), so every optimizer step, gradient clipping included, is
        the one-process step on that minibatch; the statistics are summed likewise.
        """
        cfg = self.cfg
        n_local = mask.shape[0]
        offset = self.dist.rank * n_local
        acc: dict[str, list[float]] = {}
        total = math.ceil(len(rows) / cfg.minibatch_size) * cfg.ppo_epochs
        ran, early_stop = 0, False
        aux_keys = ["policy_loss", "clip_fraction", "approx_kl", "ratio"]
        if t.values_old is not None:
            aux_keys += ["value_loss", "value_clip_fraction"]
        self._progress("update", 0, total, "minibatches", detail=f"epoch 1/{cfg.ppo_epochs}")
        for epoch in range(cfg.ppo_epochs):
            order = list(rows)
            if not (epoch == 0 and cfg.ppo_epochs == 1):
                shuffle.shuffle(order)
            mbs = [[g - offset for g in mb if offset <= g < offset + n_local]
                   for mb in minibatches(order, cfg.minibatch_size)]
            # each minibatch's token count over all ranks: its loss's normaliser
            counts = self.dist.sum(mx.stack([mask[mx.array(mb)].sum() if mb else mx.array(0.0)
                                             for mb in mbs])) if mbs else None
            grads_sum, n_acc = None, 0
            for j, mb in enumerate(mbs):
                self._check_abort()
                if mb:
                    loss, aux, grads = self._minibatch_grads(roll, mb, counts[j], mask, logp_ref, t, prefix)
                else:  # none of this minibatch's rows is on this rank: it adds nothing
                    loss, aux = mx.array(0.0), {k: mx.array(0.0) for k in aux_keys}
                    grads = tree_map(mx.zeros_like, self.policy.trainable_parameters())
                if self.dist.active:
                    grads = tree_map(lambda g: g * self.dist.size, self.dist.average_gradients(grads))
                    summed = self.dist.sum(mx.stack([loss] + [aux[k] for k in aux_keys]))
                    loss, aux = summed[0], {k: summed[i + 1] for i, k in enumerate(aux_keys)}
                if not _all_finite(loss, grads):
                    raise _NonFinite(f"epoch {epoch + 1}, minibatch {j + 1}", stats)
                if epoch == 0 and j == 0:  # before any update of this step: ratio 1 at step 0
                    stats.update(first_ratio=float(aux["ratio"].item()),
                                 first_approx_kl=float(aux["approx_kl"].item()),
                                 first_clip_fraction=float(aux["clip_fraction"].item()))
                if cfg.target_kl is not None and aux["approx_kl"].item() > 1.5 * cfg.target_kl:
                    early_stop = True  # this minibatch already left the trust region: not applied
                    break
                grads_sum = grads if grads_sum is None else tree_map(mx.add, grads_sum, grads)
                n_acc += 1
                if n_acc == cfg.grad_accum or j == len(mbs) - 1:
                    aux["grad_norm"] = self._apply(tree_map(lambda g: g / n_acc, grads_sum) if n_acc > 1
                                                   else grads_sum)
                    grads_sum, n_acc = None, 0
                mx.eval(loss, aux, self.policy.trainable_parameters(), self.actor_opt.state, self.critic_opt.state)
                ran += 1
                acc.setdefault("loss", []).append(loss.item())
                for key, val in aux.items():
                    acc.setdefault(key, []).append(float(val.item()))
                self._progress("update", ran, total, "minibatches",
                               detail=f"epoch {epoch + 1}/{cfg.ppo_epochs}, minibatch {j + 1}/{len(mbs)}")
            if early_stop:
                if grads_sum is not None:  # accumulated before the stop: apply what was earned
                    self._apply(tree_map(lambda g: g / n_acc, grads_sum))
                    mx.eval(self.policy.trainable_parameters(), self.actor_opt.state, self.critic_opt.state)
                break
        self._progress("update", total, total, "minibatches", detail="done")
        out = {"minibatches": float(ran), "early_stopped": float(early_stop)}
        for key in ("policy_loss", "value_loss", "clip_fraction", "approx_kl", "value_clip_fraction",
                    "ratio", "grad_norm", "loss", "explained_variance"):
            vals = acc.get(key, [])
            out[key] = float(sum(vals) / len(vals)) if vals else 0.0
        return out

    def _minibatch_grads(self, roll: Rollout, mb: list[int], count: mx.array, mask, logp_ref, t: Targets, prefix):
        """(loss, statistics, gradients) of minibatch rows ``mb``: its rows split over the lanes
        (engine/lanes.py), each part's graph on its own stream, the parts' sums (every loss term
        is divided by the minibatch's token count ``count``, so the parts add up to the whole)."""
        out = []
        for stream, part in self.lanes.split(mb):
            with mx.stream(stream):
                ids = mx.array(part)
                tok, lp, p_w, r_w = trim_rows(roll, part)
                batch = {
                    "tokens": tok, "left_pad": lp, "mask": mask[ids, :r_w], "count": count,
                    "logp_old": roll.logprobs[ids, :r_w], "adv": t.advantages[ids, :r_w],
                    "logp_ref": logp_ref[ids, :r_w],
                    "values_old": t.values_old[ids, :r_w] if t.values_old is not None else None,
                    "returns": t.returns[ids, :r_w] if t.returns is not None else None,
                    "prefix": prefix.rows(part),
                }
                out.append(self._loss_and_grad(self.policy, batch, p_w))
        (loss, aux), grads = out[0]
        for (loss_k, aux_k), grads_k in out[1:]:
            loss = loss + loss_k
            aux = {k: aux[k] + aux_k[k] for k in aux}
            grads = tree_map(mx.add, grads, grads_k)
        return loss, aux, grads

    def _loss(self, policy: Policy, b: dict, prompt_width: int):
        """The loss of one minibatch; everything here is inside the differentiated function.

        clipped surrogate on the objective's advantages
        + vf_coef x clipped value loss       (objectives with a critic: ppo, pairwise-ppo)
        + beta x k3 KL to the reference      (objectives with the KL in the loss: grpo, studio)
        - entropy_coef x entropy             (when the bonus is on)
        """
        cfg = self.cfg
        mask = b["mask"]
        critic = b["values_old"] is not None
        bonus = cfg.entropy_coef > 0
        logp, values, entropy = evaluate(policy, b["tokens"], b["left_pad"], prompt_width, cfg.temperature,
                                         with_values=critic, with_entropy=bonus, entropy_grad=bonus,
                                         prefix=b["prefix"])
        aux = {}
        count = b["count"]  # the minibatch's tokens on every rank: the losses of the ranks add up
        pg_loss, st = ppo.policy_loss(logp, b["logp_old"], b["adv"], mask, cfg.epsilon, count)
        loss = pg_loss
        aux.update(st)
        aux["policy_loss"] = pg_loss
        if critic:
            vf_loss, vf_clip = ppo.value_loss(values, b["values_old"], b["returns"], mask, cfg.value_clip, count)
            loss = loss + cfg.vf_coef * vf_loss
            aux["value_loss"] = vf_loss
            aux["value_clip_fraction"] = vf_clip
        if self.objective.kl_in_loss and self.beta > 0:
            loss = loss + self.beta * ppo.masked_mean(ppo.kl_k3(logp, b["logp_ref"]), mask, count=count)
        if bonus:  # entropy bonus; the reported entropy comes from the rollout
            loss = loss - cfg.entropy_coef * ppo.masked_mean(entropy, mask, count=count)
        return loss, aux

    def _apply(self, grads: dict) -> mx.array:
        cfg = self.cfg
        if cfg.max_grad_norm and cfg.max_grad_norm > 0:
            grads, norm = optim.clip_grad_norm(grads, cfg.max_grad_norm)
        else:
            norm = mx.sqrt(sum((g * g).sum() for _, g in tree_flatten(grads)))
        critic = {"value_head": grads["value_head"]} if "value_head" in grads else None
        actor = {k: v for k, v in grads.items() if k != "value_head"}
        if actor:
            self.actor_opt.update(self.policy, actor)
        if critic and tree_flatten(critic):
            self.critic_opt.update(self.policy, critic)
        return norm


MAX_NONFINITE_IN_A_ROW = 3  # steps whose update is skipped for a NaN / inf before the run stops


class _NonFinite(Exception):
    """A minibatch's loss or gradient is not finite: the step's update is dropped as a whole."""

    def __init__(self, where: str, stats: dict[str, float]):
        super().__init__(where)
        self.where, self.stats = where, dict(stats)


def _all_finite(loss: mx.array, grads: dict) -> bool:
    """True when the loss and every gradient are finite (a sum of squares that overflows float32
    counts as not finite: such a gradient is no use either)."""
    sq = sum(((g.astype(mx.float32) ** 2).sum() for _, g in tree_flatten(grads)), mx.array(0.0))
    return bool((mx.isfinite(loss) & mx.isfinite(sq)).item())


def rank_times(times: list[dict[str, float]]) -> dict[str, float]:
    """Which rank is slow, from each rank's seconds of the step (``busy``: the step less the time it
    spent in collectives, i.e. waiting for the others; ``rollout``, ``judge``: its own phases).

    time_step_slowest_rank = argmax_r busy_r;  time_step_rank_spread = max_r busy_r / min_r busy_r;
    time_busy/r, time_rollout/r, time_judge/r: each rank's seconds."""
    busy = [t["busy"] for t in times]
    slowest = max(range(len(busy)), key=busy.__getitem__)
    out = {"time_step_slowest_rank": float(slowest), "time_step_rank_spread": busy[slowest] / max(min(busy), 1e-9)}
    for key in ("busy", "rollout", "judge"):
        out.update({f"time_{key}/{r}": float(t[key]) for r, t in enumerate(times)})
    return out


def minibatches(rows: list[int], size: int) -> list[list[int]]:
    """``rows`` in consecutive groups of ``size`` (the last may be shorter)."""
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def trim_rows(roll: Rollout, idx: list[int]) -> tuple[mx.array, mx.array, int, int]:
    """Rows ``idx`` of the batch without the columns that are padding in all of them.

    Dropping shared left padding shifts ``left_pad`` and the prompt width by the same
    amount, so positions and masks (hence log-probs) are unchanged. Returns
    (tokens, left_pad, prompt_width, response_width).
    """
    ids = mx.array(idx)
    lp = roll.left_pad[ids]
    cut = int(lp.min().item())
    r_w = max(1, max(roll.lengths[i] for i in idx))
    tokens = roll.tokens[ids, cut:roll.prompt_width + r_w]
    return tokens, lp - cut, roll.prompt_width - cut, r_w


def _std(vals: list[float]) -> float:
    if len(vals) < 2:
        return 0.0
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))
