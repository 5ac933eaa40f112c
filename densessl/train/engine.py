"""The training engine every densessl recipe runs on: plain functions and small dataclasses, not a framework.

A recipe (``densessl.train.pretrain``, ``densessl.det.finetune``) builds its model, optimizer and data, then
drives a loop of its own with these pieces::

    run = start_run(run_dir, config, recipe="pretrain", resume="auto", device="auto", precision="auto", ...)
    ...build model on run.device; if run.state: load model/optimizer/scaler from it...
    while iteration < total:
        set_lr(optimizer, lr)
        try:
            terms = optimizer_step(run, model, optimizer, scaler, micro_batches, forward, clip_grad=..., iteration=...)
        except NonFiniteLossError as error:  # the non-finite policy: put stable.pt back as last.pt
            raise fall_back_to_stable(run, error) from None
        iteration += 1
        log_step(run, iteration, total, terms, lr=lr, images=...)
        if ...: save_checkpoint(run, iteration, {"model": ..., "optimizer": ..., "scaler": ...})
        if stop_requested(run): save_checkpoint(...); break
    finish_run(run)

Run directory (one contract for every recipe)::

    config.yaml             the resolved config that produced the checkpoints (rewritten on resume, see resumes.jsonl)
    resumes.jsonl           one line per resume: iteration, config changes accepted, checkpoint used
    environment.jsonl       one line per start or resume: versions, device, git commit, command line, host
    metrics.jsonl           one JSON object per logged step (rank 0), with its wall-clock time
    train.log               the log, with a progress line every ``log_every`` steps (iteration, loss, lr, img/s, ETA)
    checkpoints/last.pt     the newest checkpoint; checkpoints/previous.pt the one before it (fallback when last.pt is
                            damaged; a recipe drops it when the run finishes, ``drop_fallback``); checkpoints/stable.pt
                            the newest one written while the loss was at its running level (a hard link). A loss that
                            jumps far above its running level is warned about; when a NaN/inf follows, last.pt is set
                            back to stable.pt (the later ones kept as diverged.pt), so resuming with a lower learning
                            rate starts from weights that were not yet diverging.
    tensorboard/            event files, when enabled and the tensorboard extra is installed
    wandb/, wandb_id        the W&B run (``wandb`` = a project name, the wandb extra): every metrics row is logged
                            at its iteration; ``wandb_id`` keeps the run id so a resume continues the same W&B run.
                            W&B's own settings apply (``WANDB_MODE=offline`` writes wandb/offline-run-*, synced
                            later with ``wandb sync``; ``WANDB_MODE=disabled`` turns it off)

Checkpoints hold only plain types (``torch.load(weights_only=True)`` reads them): ``format``, ``recipe``,
``iteration``, ``world_size``, ``accumulate``, ``config``, ``rng`` (every RNG state) and whatever the recipe adds
(model, optimizer, scaler, data position). They are written atomically (``densessl.atomic``) and verified on load
(the CRC of every member of torch's zip container), so flipped or zeroed bytes are an error naming the file, never
silently different weights.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import random
import secrets
import shutil
import signal
import statistics
import sys
import time
from collections import deque
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from densessl.atomic import atomic_torch_save, atomic_write_text, sweep_temporary_files
from densessl.config_io import flatten, save_config
from densessl.dist import resolve_device
from densessl.safe_load import load_plain, verify_torch_zip

__all__ = [
    "CHECKPOINT_FORMAT",
    "NonFiniteLossError",
    "ProgressBar",
    "ResumeError",
    "Run",
    "autocast",
    "capture_rng",
    "drop_fallback",
    "fall_back_to_stable",
    "finish_run",
    "load_checkpoint",
    "log_step",
    "optimizer_step",
    "resolve_resume",
    "restore_rng",
    "save_checkpoint",
    "set_lr",
    "start_run",
    "stop_requested",
]

logger = logging.getLogger("densessl")

CHECKPOINT_FORMAT = "densessl-checkpoint-v2"
# Newest first: ``last.pt.new`` only survives a kill between writing the new checkpoint and rotating it into place.
_CHECKPOINT_NAMES = ("last.pt.new", "last.pt", "previous.pt")
ResumeMode = Literal["no", "yes", "auto"]


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the optimizer step was not taken.

    ``optimizer_step`` raises it with the loss terms; the recipe hands it to :func:`fall_back_to_stable`, which puts
    the last stable checkpoint back and returns it with a sentence saying so (``checkpoints``).
    """

    def __init__(self, iteration: int, values: dict[str, float], checkpoints: str = "") -> None:
        super().__init__(f"non-finite loss at iteration {iteration}: {values}. No optimizer step was taken. "
                         f"{checkpoints}Lower the learning rate, set a gradient clip, or use fp32/bf16 instead of "
                         f"fp16, then resume")
        self.iteration, self.values, self.checkpoints = iteration, values, checkpoints


class ResumeError(ValueError):
    """Resuming is impossible as asked: no checkpoint, a damaged one, or a config change that breaks the run."""


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #


@dataclass
class RunFiles:
    """The files a run keeps open on rank 0; ``close()`` restores the logger."""

    metrics: Any = None
    writer: Any = None
    wandb: Any = None
    log_handler: logging.Handler | None = None
    previous_level: int = logging.NOTSET

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        if self.log_handler is not None:
            logger.setLevel(self.previous_level)
            logger.removeHandler(self.log_handler)
            self.log_handler.close()
            self.log_handler = None


@dataclass
class MetricsWindow:
    """The terms, steps and images summed since the last logged step, and when the loop started."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    start: float = field(default_factory=time.perf_counter)
    loop_start: tuple[float, int] | None = None  # (time, iteration before the first step of this process)

    def add(self, iteration: int, terms: dict[str, Tensor | float], images: int) -> None:
        if self.loop_start is None:
            self.loop_start = (time.perf_counter(), iteration - 1)
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.steps += 1
        self.images += images

    def take(self) -> tuple[dict[str, float], float]:
        """``(mean of each term, images/s)`` since the last call; the window starts again."""
        means = {k: v / self.steps for k, v in self.sums.items()}
        images_per_s = self.images / max(time.perf_counter() - self.start, 1e-9)
        self.sums, self.steps, self.images, self.start = {}, 0, 0, time.perf_counter()
        return means, images_per_s


# A loss this many times its running level (median |loss| over the last steps) is a jump: warn, the run may diverge.
JUMP_FACTOR = 10.0
# A checkpoint written while the loss is within this factor of its running level counts as stable.
STABLE_FACTOR = 3.0


@dataclass
class LossWatch:
    """The running loss level (median |loss| of the last 50 steps, a jump left out of it).

    ``stable``: the current weights look stable (a checkpoint written now becomes ``stable.pt``);
    ``stable_iteration``: the iteration ``stable.pt`` holds (``None``: there is none).
    """

    recent: deque = field(default_factory=lambda: deque(maxlen=50))
    stable: bool = True
    warned_at: int | None = None
    stable_iteration: int | None = None

    def observe(self, iteration: int, loss: float) -> tuple[float, float] | None:
        """Add one step's loss; ``(ratio, level)`` when it is a new jump to warn about, else ``None``."""
        jump = None
        if len(self.recent) >= 10:
            level = max(statistics.median(abs(v) for v in self.recent), 1e-6)
            ratio = abs(loss) / level
            self.stable = ratio <= STABLE_FACTOR
            if ratio > JUMP_FACTOR and self.warned_at is None:
                self.warned_at, jump = iteration, (ratio, level)
            elif ratio <= STABLE_FACTOR:
                self.warned_at = None
            if ratio > STABLE_FACTOR:
                return jump  # keep the running level free of the jump
        self.recent.append(loss)
        return jump


@dataclass
class StopSignal:
    """A SIGTERM/SIGINT received (``signum``, 0 for none) and the handlers ``start_run`` replaced."""

    signum: int = 0
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received signal %d: saving a checkpoint at the end of this step, then stopping", signum)


@dataclass
class Run:
    """Everything a recipe's loop needs about the current process and run directory.

    Attributes:
        run_dir: The run directory.
        recipe: ``"pretrain"``, ``"detection"``: stored in checkpoints, checked on resume.
        device: Where this process computes.
        amp_dtype: Autocast dtype (bf16/fp16 on CUDA) or ``None`` for fp32.
        rank, world_size, local_rank: The process within ``torchrun`` (0, 1, 0 for one process).
        state: The checkpoint being resumed from (``None`` for a fresh start); recipes load their parts from it.
        log_every: Steps between logged records and progress lines.
        files: The open log, metrics and TensorBoard files (rank 0).
        window: The terms summed since the last logged step.
        loss_watch: The running loss level: jump warnings and whether a checkpoint counts as stable.
        stop: A pending SIGTERM/SIGINT.
        owns_process_group: ``start_run`` joined the process group (``finish_run`` leaves it).
    """

    run_dir: Path
    recipe: str
    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int
    world_size: int
    local_rank: int
    state: dict[str, Any] | None
    log_every: int
    config: dict[str, Any] = field(repr=False, default_factory=dict)
    files: RunFiles = field(default_factory=lambda: RunFiles(), repr=False)
    window: MetricsWindow = field(default_factory=lambda: MetricsWindow(), repr=False)
    loss_watch: LossWatch = field(default_factory=lambda: LossWatch(), repr=False)
    stop: StopSignal = field(default_factory=lambda: StopSignal(), repr=False)
    owns_process_group: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def start_iteration(self) -> int:
        """The iteration this process starts at (0, or the resumed checkpoint's)."""
        return int(self.state["iteration"]) if self.state is not None else 0

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"


def _init_distributed(device_name: str) -> tuple[int, int, int]:
    """Join ``torchrun``'s process group (NCCL on GPUs, gloo on CPUs); ``(rank, world_size, local_rank)``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_name != "cpu"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return int(os.environ.get("RANK", "0")), world_size, local_rank


def _resolve_device(name: str, local_rank: int) -> torch.device:
    device = resolve_device(name, "train.device")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


def _environment() -> dict[str, Any]:
    """What produced this part of the run: versions, device, git commit of a densessl checkout, command line, host."""
    import platform
    import subprocess

    import timm
    import torchvision

    import densessl

    record: dict[str, Any] = {
        "time": datetime.datetime.now().isoformat(timespec="seconds"), "densessl": densessl.__version__,
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "host": platform.node(), "cpu": platform.processor() or platform.machine(),
    }
    try:  # the commit of the checkout densessl runs from, when it is one
        commit = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(densessl.__file__)), "rev-parse",
                                 "HEAD"], capture_output=True, text=True, timeout=5)
        record["git_commit"] = commit.stdout.strip() if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        record["git_commit"] = None
    record["command"] = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])
    return record


def _resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``auto | fp32 | bf16 | fp16``; ``None`` (fp32) on the CPU (a warning when asked for more)."""
    if device.type != "cuda" and name in ("bf16", "fp16"):
        logger.warning("train.precision=%s has no effect on %s: the engine trains in fp32 there (autocast is for "
                       "CUDA devices)", name, device.type)
    if device.type != "cuda" or name == "fp32":
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def resolve_resume(run_dir: str | os.PathLike, resume: ResumeMode | bool) -> bool:
    """Whether to resume, after checking the run directory agrees with the request.

    ``yes`` (``--resume``) needs a checkpoint; ``no`` refuses a directory that holds one (a finished or interrupted
    run is never overwritten); ``auto`` (``--resume auto``, for requeued jobs) resumes when there is one and starts
    otherwise.

    Raises:
        ResumeError: ``yes`` without a checkpoint.
        FileExistsError: ``no`` and the directory already holds a run.
    """
    mode = {True: "yes", False: "no"}.get(resume, resume)  # type: ignore[call-overload]
    if mode not in ("no", "yes", "auto"):
        raise ValueError(f"resume must be no, yes or auto, got {resume!r}")
    checkpoints = Path(run_dir) / "checkpoints"
    exists = any((checkpoints / name).is_file() for name in _CHECKPOINT_NAMES)
    if mode == "yes" and not exists:
        raise ResumeError(f"--resume: no checkpoint at {str(checkpoints / 'last.pt')!r}; start without --resume "
                          f"(or use --resume auto, which starts when there is none)")
    if mode == "no" and exists:
        raise FileExistsError(f"{str(run_dir)!r} already holds a run; pass --resume (or --resume auto) to continue "
                              f"it, or pick another output directory")
    return exists and mode != "no"


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> ``(old, new)`` for every leaf that differs between two plain config dicts."""
    flat_old, flat_new = flatten(old), flatten(new)
    return {key: (flat_old.get(key), flat_new.get(key)) for key in sorted(set(flat_old) | set(flat_new))
            if flat_old.get(key) != flat_new.get(key)}


def _check_resume_config(state: dict[str, Any], config: dict[str, Any], fixed_keys: Sequence[str],
                         world_size: int, accumulate: int, allow_changes: bool, path: Path) -> dict[str, Any]:
    """Compare the checkpoint's config with the requested one; refuse breaking changes unless allowed."""
    changes = config_changes(state.get("config") or {}, config)
    breaking = {k: v for k, v in changes.items() if any(k == f or k.startswith(f + ".") for f in fixed_keys)}
    saved_world, saved_accumulate = state.get("world_size"), state.get("accumulate")
    if saved_world is not None and saved_accumulate is not None and \
            saved_world * saved_accumulate != world_size * accumulate:
        breaking["processes x accumulation"] = (f"{saved_world} x {saved_accumulate}", f"{world_size} x {accumulate}")
    listing = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
    if breaking and not allow_changes:
        lines = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in breaking.items())
        raise ResumeError(
            f"cannot resume {str(path)!r} with this config: {lines}. These change what the saved iteration means "
            f"(or the model itself). Resume with the run's own config ({path.parent.parent / 'config.yaml'}), start "
            f"a new run in another directory, or pass --allow-config-change to resume anyway"
        )
    if changes:
        logger.warning("resuming with a changed config (%s); recorded in resumes.jsonl", listing)
    return {k: [old, new] for k, (old, new) in changes.items()}


def start_run(
    run_dir: str | os.PathLike,
    config: dict[str, Any],
    *,
    recipe: str,
    resume: ResumeMode | bool = "no",
    device: str = "auto",
    precision: str = "auto",
    log_every: int = 10,
    tensorboard: bool = False,
    wandb: str | None = None,
    fixed_keys: Sequence[str] = (),
    accumulate: int = 1,
    allow_config_change: bool = False,
    resolved_config: Any = None,
) -> Run:
    """Set up the process and the run directory; load the checkpoint to resume from, if any.

    Nothing in the run directory is written before every check passed (a refused resume changes nothing).

    Args:
        run_dir: Output folder.
        config: The requested config as a plain dict (stored in checkpoints, compared on resume).
        recipe: Name stored in checkpoints; a checkpoint of another recipe is refused.
        resume: ``"no"``, ``"yes"``, ``"auto"`` (see ``resolve_resume``); booleans mean no/yes.
        device: ``auto | cpu | cuda | cuda:N``.
        precision: ``auto | fp32 | bf16 | fp16`` (autocast on CUDA; the CPU runs fp32).
        log_every: Steps between metric records and progress lines.
        tensorboard: Also write TensorBoard event files (needs the ``tensorboard`` extra).
        wandb: Also log to this W&B project (needs the ``wandb`` extra; ``None``: off).
        fixed_keys: Dotted config keys (or prefixes) a resume must not change (the architecture, the batch size,
            the crop geometry, ...); ``processes x accumulation`` is always checked.
        accumulate: Gradient-accumulation steps of this run.
        allow_config_change: Resume despite changes of ``fixed_keys`` (recorded in ``resumes.jsonl``).
        resolved_config: The config object written as ``config.yaml`` (``config`` itself when ``None``).

    Raises:
        ResumeError, FileExistsError: See ``resolve_resume``; a damaged checkpoint; a breaking config change.
        ValueError: No CUDA device for ``device=cuda``.
    """
    owns_group = dist.is_available() and not dist.is_initialized()
    rank, world_size, local_rank = _init_distributed(device)
    owns_group = owns_group and dist.is_initialized()
    torch_device = _resolve_device(device, local_rank)
    amp_dtype = _resolve_precision(precision, torch_device)
    run_dir = Path(run_dir)
    resuming = resolve_resume(run_dir, resume)
    state, changes = None, {}
    if resuming:
        state = load_run_checkpoint(run_dir)
        if state.get("recipe") != recipe:
            raise ResumeError(f"{str(run_dir)!r} holds a {state.get('recipe', 'pre-v2')!r} run, not a {recipe!r} run; "
                              f"pick another output directory")
        changes = _check_resume_config(state, config, fixed_keys, world_size, accumulate, allow_config_change,
                                       run_dir / "checkpoints" / "last.pt")
    run = Run(run_dir=run_dir, recipe=recipe, device=torch_device, amp_dtype=amp_dtype, rank=rank,
              world_size=world_size, local_rank=local_rank, state=state, log_every=max(1, int(log_every)),
              config=config, owns_process_group=owns_group)
    if run.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        sweep_temporary_files(run_dir / "checkpoints")
        sweep_temporary_files(run_dir)
        save_config(resolved_config if resolved_config is not None else config, run_dir / "config.yaml")
        run.files.log_handler = logging.FileHandler(run_dir / "train.log")
        run.files.log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(run.files.log_handler)
        run.files.previous_level = logger.level
        stable = run_dir / "checkpoints" / "stable.pt"
        run.loss_watch.stable_iteration = _checkpoint_iteration(stable) if stable.is_file() else None
        if logger.getEffectiveLevel() > logging.INFO:  # train.log gets the progress lines even without logging set up
            logger.setLevel(logging.INFO)
        environment = _environment()
        with (run_dir / "environment.jsonl").open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(environment) + "\n")
        logger.info("environment: %s", ", ".join(f"{k} {v}" for k, v in environment.items() if k != "command"))
        logger.info("command: %s", environment["command"])
        metrics_path = run_dir / "metrics.jsonl"
        if state is not None:
            _truncate_metrics(metrics_path, run.start_iteration)
            with (run_dir / "resumes.jsonl").open("a", encoding="utf-8") as stream:
                stream.write(json.dumps({"time": datetime.datetime.now().isoformat(timespec="seconds"),
                                         "iteration": run.start_iteration, "checkpoint": state.get("_loaded_from"),
                                         "world_size": world_size, "accumulate": accumulate,
                                         "config_changes": changes}) + "\n")
            logger.info("resumed from %s at iteration %d", state.get("_loaded_from"), run.start_iteration)
        elif metrics_path.exists() and metrics_path.stat().st_size:
            logger.warning("%s held metrics of an earlier run that saved no checkpoint; starting it afresh",
                           metrics_path)
            atomic_write_text(metrics_path, "")
        run.files.metrics = metrics_path.open("a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                run.files.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                logger.warning("train.tensorboard=true but tensorboard is not installed (pip install "
                               "'densessl[tensorboard]'); logging to metrics.jsonl only")
        if wandb:
            run.files.wandb = _start_wandb(run_dir, wandb, recipe, config)
    run.stop.install()
    return run


def _start_wandb(run_dir: Path, project: str, recipe: str, config: dict[str, Any]) -> Any:
    """The W&B run of ``run_dir`` (a resume continues the id in ``run_dir/wandb_id``), or ``None`` with a warning when
    wandb is missing or cannot start (training goes on: metrics.jsonl has every row)."""
    try:
        import wandb
    except ImportError:
        logger.warning("train.wandb=%s but wandb is not installed (pip install 'densessl[wandb]'); logging to "
                       "metrics.jsonl only", project)
        return None
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else ""
    if not run_id:
        run_id = secrets.token_hex(4)  # W&B run ids: lowercase letters and digits
        atomic_write_text(id_file, run_id + "\n")
    try:
        handle = wandb.init(project=project, dir=str(run_dir), id=run_id, resume="allow", name=run_dir.name,
                            job_type=recipe, config=config)
    except Exception as error:  # noqa: BLE001 - a logging back end must not stop training (no network, bad key)
        logger.warning("W&B did not start (%s: %s); logging to metrics.jsonl only", type(error).__name__, error)
        return None
    if handle is not None:
        logger.info("W&B run %s (project %s, mode %s)", run_id, project, handle.settings.mode)
    return handle


def finish_run(run: Run) -> None:
    """Close the run's files, restore the signal handlers and leave the process group ``start_run`` joined.

    Call in a ``finally``. Destroying the gloo/NCCL group here, not at interpreter exit, matters: a process that
    exits with the group alive can abort in the C++ teardown ("terminate called without an active exception",
    SIGABRT; pytorch/pytorch#190489), and ``torchrun`` then kills its peers mid-save.
    """
    run.stop.restore()
    run.files.close()
    if run.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()
        run.owns_process_group = False


def wrap_distributed(run: Run, model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` under ``torchrun`` (the model itself for one process)."""
    if not run.distributed:
        return model
    device_ids = [run.device.index] if run.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                               find_unused_parameters=find_unused_parameters)


def make_scaler(run: Run) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for fp16 autocast."""
    return torch.amp.GradScaler(run.device.type, enabled=run.amp_dtype == torch.float16)


def autocast(run: Run) -> AbstractContextManager:
    """Autocast to the run's dtype (a no-op in fp32)."""
    if run.amp_dtype is None:
        return nullcontext()
    return torch.autocast(run.device.type, dtype=run.amp_dtype)


# --------------------------------------------------------------------------- #
# The step
# --------------------------------------------------------------------------- #


def micro_batch_size(run: Run, batch_size: int, accumulate: int, key: str = "batch_size") -> int:
    """Images per forward pass of this process: the global ``batch_size`` over processes x accumulation steps.

    Raises:
        ValueError: ``batch_size`` is not divisible (the message names the config ``key``).
    """
    per_step = run.world_size * accumulate
    if batch_size % per_step:
        raise ValueError(f"{key}={batch_size} must be divisible by processes x optim.accumulate = {run.world_size} x "
                         f"{accumulate}")
    return batch_size // per_step


def set_lr(optimizer: torch.optim.Optimizer, lr: float | Sequence[float]) -> None:
    """Set the learning rate of every parameter group (one value, or one per group)."""
    values = [float(lr)] * len(optimizer.param_groups) if isinstance(lr, (int, float)) else [float(v) for v in lr]
    for group, value in zip(optimizer.param_groups, values, strict=True):
        group["lr"] = value


def optimizer_step(
    run: Run,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    micro_batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], dict[str, Tensor]],
    *,
    iteration: int,
    clip_grad: float | None = None,
) -> dict[str, Tensor]:
    """One optimizer step over one or more micro-batches (gradient accumulation).

    Each micro-batch's ``forward(model, batch)`` returns ``{"loss": scalar, "<term>": scalar, ...}``; the gradient of
    the mean loss over the micro-batches is accumulated (DDP synchronizes only on the last one), checked for a finite
    loss on every rank *before* the optimizer step, optionally clipped, then applied.

    Returns:
        The mean of every term over the micro-batches (detached float tensors, this process only).

    Raises:
        NonFiniteLossError: A loss was NaN/inf on any rank; no parameter was changed.
    """
    batches = list(micro_batches)
    count = len(batches)
    sums: dict[str, Tensor] = {}
    for index, batch in enumerate(batches):
        sync = not run.distributed or index == count - 1
        no_sync = getattr(model, "no_sync", None)
        with nullcontext() if sync or no_sync is None else no_sync():
            with autocast(run):
                out = forward(model, batch)
            loss = out["loss"]
            finite = torch.isfinite(loss.detach()).float()
            if run.distributed:  # every rank must agree, or the others would hang in the next collective
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if not bool(finite):
                optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(iteration + 1, {k: float(v.detach()) for k, v in out.items()})
            scaler.scale(loss / count).backward()
        for key, value in out.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float() / count
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    jump = run.loss_watch.observe(iteration + 1, float(sums["loss"]))
    if jump is not None:
        stable = run.loss_watch.stable_iteration
        where = (f"{run.run_dir / 'checkpoints' / 'stable.pt'} (iteration {stable}) is the last checkpoint written "
                 "before it" if run.main and stable is not None else "no checkpoint was written before it")
        logger.warning("loss %.4g at iteration %d is %.3g times its running level %.4g: the run may be diverging; "
                       "%s", float(sums["loss"]), iteration + 1, jump[0], jump[1], where)
    return sums


def _checkpoint_iteration(path: Path) -> int | str:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["iteration"])
    except Exception:  # noqa: BLE001 (only for a message)
        return "?"


def fall_back_to_stable(run: Run, error: NonFiniteLossError) -> NonFiniteLossError:
    """The non-finite-loss policy of every recipe: put the last stable checkpoint back as ``last.pt`` when a later one
    was written since (that one is kept as ``diverged.pt``), so that ``--resume`` continues from weights that were not
    yet diverging; returns ``error`` with a sentence saying which checkpoint ``--resume`` will use."""
    checkpoints = run.run_dir / "checkpoints"
    last, stable = checkpoints / "last.pt", checkpoints / "stable.pt"
    if not run.main or not last.is_file():
        note = "No checkpoint was written yet. "
    elif not stable.is_file() or os.path.samefile(last, stable):
        note = f"The last good checkpoint is {str(last)!r}. "
    else:
        os.replace(last, checkpoints / "diverged.pt")
        shutil.copyfile(stable, last)
        note = (f"The checkpoints written after the loss left its running level were kept as diverged.pt; "
                f"{str(last)!r} now holds iteration {_checkpoint_iteration(last)} from before (stable.pt), so "
                f"--resume continues from there. ")
    return NonFiniteLossError(error.iteration, error.values, note)


class ProgressBar(tqdm):
    """The loop's progress bar: shown on rank 0 on a terminal only (a log file piped from stderr keeps no bar
    refreshes), and while it is open the console log lines go through ``tqdm.write`` so they do not garble it. The
    periodic progress lines of ``log_step`` stay in the log either way."""

    def __init__(self, run: Run, *, total: int, initial: int, desc: str, enabled: bool = True) -> None:
        shown = enabled and run.main and sys.stderr.isatty()
        super().__init__(total=total, initial=initial, desc=desc, disable=not shown, dynamic_ncols=True)
        self._redirect = logging_redirect_tqdm() if shown else None
        if self._redirect is not None:
            self._redirect.__enter__()

    def close(self) -> None:
        super().close()
        if getattr(self, "_redirect", None) is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None


def stop_requested(run: Run) -> int:
    """The signal number of a pending SIGTERM/SIGINT on any rank (0 if none); call once per step on every rank."""
    signum = run.stop.signum
    if run.distributed:
        flag = torch.tensor(float(signum), device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag)
    return signum


# --------------------------------------------------------------------------- #
# Logging
# --------------------------------------------------------------------------- #


def _format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _mean_over_ranks(run: Run, values: dict[str, float]) -> dict[str, float]:
    if not run.distributed or not values:
        return values
    stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=run.device)
    dist.all_reduce(stacked)
    return {k: float(v) / run.world_size for k, v in zip(values, stacked.tolist())}


def log_record(run: Run, record: dict[str, Any], tensorboard_prefix: str = "train") -> None:
    """Append ``record`` (must hold ``iteration``) to metrics.jsonl, TensorBoard and W&B (rank 0).

    TensorBoard and W&B get the numbers as ``<tensorboard_prefix>/<key>`` at step ``iteration``; nested records (an
    evaluation's ``{"eval": {...}}``) are flattened to ``<prefix>/eval.<metric>`` for W&B."""
    if not run.main or run.files.metrics is None:
        return
    record = {**record, "time": datetime.datetime.now().isoformat(timespec="seconds")}
    run.files.metrics.write(json.dumps(record) + "\n")
    run.files.metrics.flush()
    if run.files.writer is not None:
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "iteration":
                run.files.writer.add_scalar(f"{tensorboard_prefix}/{key}", value, record["iteration"])
    if run.files.wandb is not None:
        numbers = {f"{tensorboard_prefix}/{key}": value for key, value in flatten(record).items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "iteration"}
        run.files.wandb.log(numbers, step=int(record["iteration"]))


def log_step(
    run: Run,
    iteration: int,
    total: int,
    terms: dict[str, Tensor | float],
    *,
    lr: float,
    images: int,
    extra: dict[str, Any] | None = None,
    steps_per_epoch: int | None = None,
) -> dict[str, Any] | None:
    """Accumulate one step's terms; every ``log_every`` steps (and at the last) write a record and a progress line.

    Called on every rank (the averages are reduced over ranks). The progress line goes to the log and so to
    ``train.log``: ``iteration 120/496 (24%) | loss 12.345 | lr 1.2e-03 | 28.1 img/s | elapsed 0:01:02 | ETA 0:03:12``.

    Returns:
        The record written (``None`` when this step was not a logging step).
    """
    run.window.add(iteration, terms, images)
    if iteration % run.log_every and iteration != total:
        return None
    means, images_per_s = run.window.take()
    averaged = _mean_over_ranks(run, means)
    record: dict[str, Any] = {"iteration": iteration}
    if steps_per_epoch:
        record["epoch"] = iteration / steps_per_epoch
    record.update(averaged)
    record.update({"lr": lr, "images_per_s": images_per_s})
    record.update(extra or {})
    log_record(run, record)
    start_time, start_iteration = run.window.loop_start  # type: ignore[misc]  (set by add)
    run_elapsed = time.perf_counter() - start_time
    done = iteration - start_iteration
    eta = run_elapsed / max(done, 1) * (total - iteration)
    if run.main:
        logger.info("iteration %d/%d (%d%%) | loss %.4f | lr %.3g | %.1f img/s | elapsed %s | ETA %s", iteration,
                    total, 100 * iteration // max(total, 1), record.get("loss", math.nan), lr,
                    record["images_per_s"], _format_duration(run_elapsed), _format_duration(eta))
    return record


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Keep the metric lines up to ``iteration`` (later ones will be logged again); drop a partial last line."""
    if not path.exists():
        return
    kept, lines = [], path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                logger.warning("%s: dropped a partial last line (the run was killed while writing it)", path)
                continue
            raise ResumeError(f"{str(path)}:{number}: not a JSON line; fix or remove that line and resume again")
        if record.get("iteration", 0) <= iteration:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# --------------------------------------------------------------------------- #
# Checkpoints
# --------------------------------------------------------------------------- #


def capture_rng() -> dict[str, Any]:
    """Every RNG state a loop may use (torch CPU and CUDA, numpy, python), as plain types."""
    np_state = np.random.get_state()
    python_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run: Run, iteration: int, parts: dict[str, Any], path: str | os.PathLike | None = None,
                    accumulate: int = 1) -> Path:
    """Write a checkpoint (rank 0 only; other ranks return at once) and keep the previous one as a fallback.

    Args:
        run: The run.
        iteration: Optimizer steps done.
        parts: What the recipe needs to resume (model, optimizer, scaler, data position, ...), plain types only.
        path: ``None`` for ``checkpoints/last.pt`` (the old ``last.pt`` becomes ``previous.pt`` first); any other
            path (``epoch_0010.pt``) is written as is.
        accumulate: Gradient-accumulation steps (checked on resume together with the process count).

    Returns:
        The path written.

    Raises:
        densessl.atomic.DiskFullError: No space left (the previous checkpoints are intact).
    """
    target = Path(path) if path is not None else run.last_checkpoint
    if not run.main:
        return target
    state = {"format": CHECKPOINT_FORMAT, "recipe": run.recipe, "iteration": int(iteration),
             "world_size": run.world_size, "accumulate": int(accumulate), "config": run.config, "rng": capture_rng(),
             **parts}
    if path is None and target.is_file():
        # Write the new file first, then rotate: a crash at any point leaves at least one good checkpoint.
        tmp_target = target.with_name("last.pt.new")
        atomic_torch_save(state, tmp_target)
        os.replace(target, target.with_name("previous.pt"))
        os.replace(tmp_target, target)
    else:
        atomic_torch_save(state, target)
    if path is None and run.loss_watch.stable:
        _link_stable(target)
        run.loss_watch.stable_iteration = int(iteration)
    return target


def _link_stable(last: Path) -> None:
    """``stable.pt``: the newest checkpoint written while the loss was at its running level (a hard link: no copy)."""
    stable = last.with_name("stable.pt")
    tmp = last.with_name(".stable.pt.link.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(last, tmp)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(last, tmp)
    os.replace(tmp, stable)


def drop_fallback(run: Run) -> None:
    """At the end of a finished run, remove ``checkpoints/previous.pt`` (rank 0): ``last.pt`` is the final checkpoint
    and is verified first (the CRC of every member); a damaged ``last.pt`` keeps ``previous.pt`` and is warned about.
    ``stable.pt`` is a hard link, it costs no space."""
    previous = run.last_checkpoint.with_name("previous.pt")
    if not run.main or not previous.is_file():
        return
    try:
        verify_torch_zip(run.last_checkpoint, "checkpoint", "resume from checkpoints/previous.pt")
    except (OSError, ValueError) as error:
        logger.warning("kept %s: %s", previous, error)
        return
    previous.unlink()


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a densessl checkpoint on the CPU (``weights_only=True``) after verifying its integrity.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Damaged, truncated or not a densessl checkpoint (the message names the file and the cause).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    fix = "resume from another checkpoint (checkpoints/previous.pt is kept for this) or start a new run"
    verify_torch_zip(path, "checkpoint", fix)
    state = load_plain(path, "checkpoint", fix)
    if not isinstance(state, dict) or "iteration" not in state:
        raise ValueError(f"{str(path)!r} is not a densessl training checkpoint")
    state["_loaded_from"] = str(path)
    return state


def load_run_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``last.pt``, or ``previous.pt`` with a warning when ``last.pt`` is missing or damaged.

    Raises:
        ResumeError: Neither file is usable (both problems are named).
    """
    checkpoints = Path(run_dir) / "checkpoints"
    errors = []
    for name in _CHECKPOINT_NAMES:
        path = checkpoints / name
        if not path.is_file():
            continue
        try:
            state = load_checkpoint(path)
        except ValueError as error:
            errors.append(str(error))
            continue
        if errors:
            logger.warning("%s; resuming from the previous checkpoint %s (iteration %d) instead", errors[0], path,
                           int(state["iteration"]))
        elif name == "last.pt.new":
            logger.info("found %s (the run was killed while rotating checkpoints); resuming from it", path)
        return state
    raise ResumeError("; ".join(errors) + "; no usable checkpoint left: start a new run" if errors
                      else f"no checkpoint in {str(checkpoints)!r}")
