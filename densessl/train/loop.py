"""The pretraining loop: one explicit, top-to-bottom function that runs on a CPU, one GPU or under ``torchrun``.

Run directory::

    config.yaml            the resolved config
    metrics.jsonl          one JSON object per logged step (iteration, epoch, loss terms, lr, images/s)
    train.log              the log
    checkpoints/last.pt    model, heads, optimizer, scaler, schedule and data position, RNG states (atomic)
    checkpoints/epoch_*.pt periodic copies (``train.keep_every_epochs``)
    backbone.pt            at the end: the backbone alone as a timm state_dict

Exact resume: ``train(cfg, run_dir, resume=True)`` continues from ``checkpoints/last.pt`` and ends with the same
weights as an uninterrupted run (bit-identical on the CPU) because data order, augmentations and RNG states are all
restored. SIGTERM/SIGINT save a checkpoint at the end of the current step and stop; a non-finite loss stops the run
before the optimizer step, leaving the last good checkpoint untouched.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from densessl.backbones import DenseBackbone, encode_views
from densessl.config import Config
from densessl.config_io import save_config, to_dict
from densessl.data.collate import Views, collate_views
from densessl.data.datasets import ImageFolder, PretrainDataset, ResumableSampler, SyntheticImages
from densessl.data.transforms import MultiCrop, MultiCropConfig
from densessl.diagnostics import collapse_summary, match_precision_over_dataset
from densessl.objectives import OBJECTIVES
from densessl.objectives.momentum import ema_update, frozen_copy
from densessl.train.checkpoint import atomic_save, capture_rng, last_checkpoint_path, load_checkpoint, restore_rng
from densessl.train.dist import all_reduce_mean
from densessl.train.optim import build_optimizer, lr_at

__all__ = ["NonFiniteLossError", "Pretrainer", "TrainResult", "train", "export_backbone"]

logger = logging.getLogger("densessl")

# Testing aid: SIGKILL this process right after the given iteration finishes (used by the resume tests).
KILL_ENV = "DENSESSL_KILL_AFTER_ITER"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Pretrainer(nn.Module):
    """Backbone + objective (+ EMA teacher backbone) in one module, so DDP wraps a single forward.

    Objectives with ``uses_teacher = True`` receive the teacher backbone's features, computed by the same
    ``encode_views`` as the student's under ``no_grad``; ``update_teacher`` moves the teacher backbone and the
    objective's ``ema_pairs()`` heads by EMA after each optimizer step.
    """

    def __init__(self, backbone: DenseBackbone, objective: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.objective = objective
        self.channels_last = channels_last
        self.teacher_backbone = frozen_copy(backbone) if getattr(objective, "uses_teacher", False) else None

    def forward(self, views: Views) -> dict[str, Tensor]:
        features = encode_views(self.backbone, views, self.channels_last)
        teacher_features = None
        if self.teacher_backbone is not None:
            with torch.no_grad():
                teacher_features = encode_views(self.teacher_backbone, views, self.channels_last)
        return self.objective(features, views, teacher_features)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA step of every (student, teacher) pair."""
        if self.teacher_backbone is None:
            return
        ema_update(self.teacher_backbone, self.backbone, momentum)
        for student, teacher in self.objective.ema_pairs():
            ema_update(teacher, student, momentum)


@dataclass
class TrainResult:
    """What a finished (or interrupted) run produced."""

    run_dir: Path
    iteration: int
    total_iterations: int
    last_loss: float
    backbone_path: Path | None
    interrupted: bool


@dataclass
class _DistEnv:
    rank: int
    world_size: int
    local_rank: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_name: str) -> _DistEnv:
    """Initialize the process group from torchrun's environment variables (no-op for a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_name != "cpu"
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return _DistEnv(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device=cuda but no CUDA device is available; use train.device=cpu")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


def _resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or ``None`` for fp32. CPU always runs fp32."""
    if device.type != "cuda" or name == "fp32":
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _build_dataset(cfg: Config) -> PretrainDataset:
    if cfg.data.source == "synthetic":
        images = SyntheticImages(cfg.data.synthetic_images, cfg.data.synthetic_size, seed=cfg.train.seed)
    else:
        images = ImageFolder(cfg.data.root)  # type: ignore[arg-type]
    return PretrainDataset(images, MultiCrop(cfg.data.multicrop), seed=cfg.train.seed, strict=cfg.data.strict)


@torch.no_grad()
def dense_diagnostics(backbone: DenseBackbone, images: list, crop_size: int, device: torch.device,
                      seed: int = 0) -> dict[str, float]:
    """Label-free health of the dense features, for logging during pretraining.

    ``match_precision``: fraction of learned (feature nearest-neighbour) matches between two geometry-only views of
    each image that land within one cell of the true location (``densessl.diagnostics``); ``rankme_*`` and ``std_*``:
    effective rank and mean per-dimension std of the backbone's pooled and dense representations of the first views.

    Args:
        backbone: The (unwrapped) backbone; its train/eval mode is restored afterwards.
        images: PIL images, always the same ones so the numbers are comparable over training.
        crop_size: Size of the two views.
        device: Where the backbone lives.
        seed: Crop seed (fixed: the same views at every call).
    """
    multicrop = MultiCrop(MultiCropConfig(global_size=crop_size, n_local=0, global_scale=(0.3, 1.0), flip_p=0.5,
                                          jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0)))
    was_training = backbone.training
    backbone.eval()
    try:
        precision = match_precision_over_dataset(backbone, images, multicrop, radius_cells=1.0, seed=seed)
        views = collate_views([multicrop(img, torch.Generator().manual_seed(seed + i)) for i, img in enumerate(images)])
        feats = backbone(views.view(0).to(device))
        summary = collapse_summary(feats.pooled.float().cpu(), feats.maps[-1].float().cpu())
    finally:
        backbone.train(was_training)
    return {"match_precision": precision.precision, "match_chance": precision.chance, **summary}


def export_backbone(backbone: DenseBackbone, path: Path) -> None:
    """Save the backbone alone as a timm state_dict (load with ``timm.create_model(arch, num_classes=0)``)."""
    atomic_save({k: v.detach().cpu() for k, v in backbone.model.state_dict().items()}, path)


def _unwrap(model: nn.Module) -> Pretrainer:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # type: ignore[return-value]


class _StopFlag:
    """Records SIGTERM/SIGINT so the loop can checkpoint at a step boundary instead of dying mid-step."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received signal %d: saving a checkpoint at the end of this step, then stopping", signum)


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be logged again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["iteration"] <= iteration]
    path.write_text("".join(line + "\n" for line in kept))


def train(cfg: Config, run_dir: str | os.PathLike, resume: bool = False) -> TrainResult:
    """Pretrain a backbone with ``cfg.method`` and export it.

    Args:
        cfg: A validated config (``densessl.config.load_config``).
        run_dir: Output folder (created; must not hold another run unless ``resume``).
        resume: Continue from ``run_dir/checkpoints/last.pt``.

    Returns:
        A ``TrainResult``; ``interrupted`` is set when a signal stopped the run (after saving a checkpoint).

    Raises:
        NonFiniteLossError: The loss became NaN/inf.
        FileExistsError: ``run_dir`` already holds a run and ``resume`` is False.
    """
    env = _setup_distributed(cfg.train.device)
    device = _resolve_device(cfg.train.device, env.local_rank)
    amp_dtype = _resolve_precision(cfg.train.precision, device)
    run_dir = Path(run_dir)
    last_path = last_checkpoint_path(run_dir, resume)
    log_handler = None
    if env.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        log_handler = logging.FileHandler(run_dir / "train.log")
        log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(log_handler)

    # ---- batch geometry: batch_size is global; each process runs micro-batches of this size
    per_step = env.world_size * cfg.optim.accumulate
    if cfg.data.batch_size % per_step:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} must be divisible by world_size x optim.accumulate "
                         f"= {env.world_size} x {cfg.optim.accumulate}")
    micro_batch = cfg.data.batch_size // per_step
    if micro_batch < 2 and not env.distributed:
        raise ValueError(f"each forward pass needs >= 2 images for the variance term; got {micro_batch}")

    # ---- model (same init on every rank: seed before building; DDP also broadcasts from rank 0)
    torch.manual_seed(cfg.train.seed)
    backbone = DenseBackbone(cfg.model.arch, levels=cfg.model.levels, weights=cfg.model.weights,
                             model_kwargs=cfg.model.model_kwargs)
    method_cls, _ = OBJECTIVES[cfg.method]
    objective = method_cls.from_backbone(backbone, cfg.objective)
    model: nn.Module = Pretrainer(backbone, objective, cfg.train.channels_last)
    if env.distributed and cfg.train.sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:  # torch's SyncBatchNorm has no CPU kernel
            logger.warning("train.sync_bn ignored on %s: BatchNorm statistics stay per process", device.type)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer([model], cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if env.distributed:
        # Map-only objectives leave the backbone's pooling head (e.g. ConvNeXt's head norm) without gradients.
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                    find_unused_parameters=not objective.uses_pooled)
    pretrainer = _unwrap(model)  # the module itself, for state dicts, EMA and export

    # ---- data
    dataset = _build_dataset(cfg)
    sampler = ResumableSampler(len(dataset), env.world_size, env.rank, seed=cfg.train.seed)
    steps_per_epoch = sampler.per_rank // (micro_batch * cfg.optim.accumulate)
    if steps_per_epoch < 1:
        raise ValueError(f"{len(dataset)} images are too few for one step of batch {cfg.data.batch_size}")
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_iters is not None:
        total_steps = min(total_steps, cfg.train.max_iters)
    warmup_steps = min(int(round(cfg.optim.warmup_epochs * steps_per_epoch)), total_steps)
    loader_generator = torch.Generator()  # keeps DataLoader seeding off the global RNG (exact resume)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=micro_batch, sampler=sampler, num_workers=cfg.data.num_workers,
        collate_fn=collate_views, drop_last=True, pin_memory=device.type == "cuda",
        generator=loader_generator, persistent_workers=False,
    )

    # ---- resume
    step = 0
    if resume:
        state = load_checkpoint(last_path)
        pretrainer.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["iteration"])
        restore_rng(state["rng"])
        loader_generator.set_state(state["loader_generator"])
        if env.main:
            _truncate_metrics(run_dir / "metrics.jsonl", step)
            logger.info("resumed from %s at iteration %d", last_path, step)

    def save(path: Path) -> None:
        if env.main:
            atomic_save({"iteration": step, "epoch": step // steps_per_epoch, "model": pretrainer.state_dict(),
                         "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": capture_rng(),
                         "loader_generator": loader_generator.get_state(), "config": to_dict(cfg),
                         "arch": cfg.model.arch, "densessl_version": 1}, path)

    writer = None
    if env.main and cfg.train.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            logger.info("tensorboard not installed: logging to metrics.jsonl only")
    stop = _StopFlag()
    stop.install()
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    progress = tqdm(total=total_steps, initial=step, disable=not (env.main and cfg.train.progress),
                    dynamic_ncols=True, desc=f"{cfg.method}/{cfg.model.arch}")
    metrics_file = (run_dir / "metrics.jsonl").open("a") if env.main else None
    diagnostic_images = []
    if env.main and cfg.train.diagnostics_every:
        count = min(cfg.train.diagnostics_images, len(dataset))
        diagnostic_images = [dataset.images[i] for i in range(count)]

    def log_diagnostics() -> None:
        record = {"iteration": step, "epoch": step / steps_per_epoch,
                  **dense_diagnostics(pretrainer.backbone, diagnostic_images, cfg.train.diagnostics_size,
                                      device, seed=cfg.train.seed)}
        metrics_file.write(json.dumps(record) + "\n")  # type: ignore[union-attr]
        metrics_file.flush()  # type: ignore[union-attr]
        logger.info("iteration %d: match precision %.3f (chance %.3f), RankMe global %.1f local %.1f", step,
                    record["match_precision"], record["match_chance"], record["rankme_global"], record["rankme_local"])
        if writer is not None:
            for key, value in record.items():
                writer.add_scalar(f"diagnostics/{key}", value, step)

    window: dict[str, float] = {}
    window_steps, window_images, window_start = 0, 0, time.perf_counter()
    skipped_total = 0
    last_loss = math.nan
    interrupted = False
    backbone_path = None
    logger.info("training %s on %s: %d steps (%d per epoch), global batch %d, micro-batch %d x %d processes x %d "
                "accumulation, device %s, precision %s", cfg.method, cfg.model.arch, total_steps, steps_per_epoch,
                cfg.data.batch_size, micro_batch, env.world_size, cfg.optim.accumulate, device,
                amp_dtype or "fp32")
    model.train()
    try:
        if diagnostic_images and step == 0:
            log_diagnostics()
        while step < total_steps:
            epoch, step_in_epoch = divmod(step, steps_per_epoch)
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch, start=step_in_epoch * micro_batch * cfg.optim.accumulate)
            batches = iter(loader)
            for _ in range(step_in_epoch, steps_per_epoch):
                if step >= total_steps:
                    break
                lr = lr_at(step, total_steps, warmup_steps, cfg.optim, cfg.data.batch_size)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                terms_sum: dict[str, Tensor] = {}
                for micro in range(cfg.optim.accumulate):
                    views = next(batches)
                    skipped_total += int(views.extras.pop("skipped").sum())
                    views = views.to(device, non_blocking=True)
                    sync = not env.distributed or micro == cfg.optim.accumulate - 1
                    with (nullcontext() if sync else model.no_sync()):  # type: ignore[operator]
                        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                            out = model(views)
                        loss = out["loss"]
                        finite = torch.isfinite(loss.detach()).float()
                        if env.distributed:  # every rank must agree, or the others would hang in the next collective
                            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
                        if not bool(finite):
                            values = {k: float(v.detach()) for k, v in out.items()}
                            raise NonFiniteLossError(
                                f"non-finite loss at iteration {step} (epoch {epoch}): {values}. The last good "
                                f"checkpoint is {last_path} (if any). Lower optim.base_lr, set optim.clip_grad, or "
                                f"use train.precision=fp32/bf16 instead of fp16."
                            )
                        scaler.scale(loss / cfg.optim.accumulate).backward()
                    for key, value in out.items():
                        terms_sum[key] = terms_sum.get(key, 0.0) + value.detach().float() / cfg.optim.accumulate
                if cfg.optim.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if pretrainer.teacher_backbone is not None:
                    pretrainer.update_teacher(pretrainer.objective.momentum_at(step, total_steps))
                step += 1
                window_steps += 1
                window_images += cfg.data.batch_size
                for key, value in terms_sum.items():
                    window[key] = window.get(key, 0.0) + value
                last_loss = float(terms_sum["loss"])
                progress.update(1)

                if step % cfg.train.log_every == 0 or step == total_steps:
                    elapsed = time.perf_counter() - window_start
                    averaged = {k: float(all_reduce_mean(torch.as_tensor(v)) / window_steps) for k, v in window.items()}
                    record = {"iteration": step, "epoch": step / steps_per_epoch, **averaged, "lr": lr,
                              "images_per_s": window_images / max(elapsed, 1e-9), "skipped_images": skipped_total}
                    if env.main:
                        metrics_file.write(json.dumps(record) + "\n")  # type: ignore[union-attr]
                        metrics_file.flush()  # type: ignore[union-attr]
                        progress.set_postfix(loss=f"{averaged['loss']:.3f}", img_s=f"{record['images_per_s']:.1f}")
                        if writer is not None:
                            for key, value in record.items():
                                writer.add_scalar(f"train/{key}", value, step)
                    window, window_steps, window_images, window_start = {}, 0, 0, time.perf_counter()

                if diagnostic_images and (step % cfg.train.diagnostics_every == 0 or step == total_steps):
                    log_diagnostics()

                epoch_done = step % steps_per_epoch == 0
                if (
                    step == total_steps
                    or (cfg.train.checkpoint_every_iters and step % cfg.train.checkpoint_every_iters == 0)
                    or (epoch_done and (step // steps_per_epoch) % cfg.train.checkpoint_every_epochs == 0)
                ):
                    save(last_path)
                if epoch_done and cfg.train.keep_every_epochs and (step // steps_per_epoch) % cfg.train.keep_every_epochs == 0:
                    save(run_dir / "checkpoints" / f"epoch_{step // steps_per_epoch:04d}.pt")
                if kill_after and step == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                signum = stop.signum
                if env.distributed:
                    flag = torch.tensor(float(signum), device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    signum = int(flag)
                if signum:
                    save(last_path)
                    interrupted = True
                    logger.warning("stopped by signal %d at iteration %d; resume with --resume", signum, step)
                    break
            del batches
            if interrupted:
                break
        if skipped_total:
            logger.warning("skipped %d unreadable images (data.strict=true makes them fatal)", skipped_total)
        if not interrupted and env.main:
            backbone_path = run_dir / "backbone.pt"
            export_backbone(pretrainer.backbone, backbone_path)
            logger.info("done: %d iterations, last loss %.4f, backbone saved to %s", step, last_loss, backbone_path)
    finally:
        if log_handler is not None:
            logger.removeHandler(log_handler)
            log_handler.close()
        stop.restore()
        progress.close()
        if metrics_file is not None:
            metrics_file.close()
        if writer is not None:
            writer.close()
    return TrainResult(run_dir, step, total_steps, last_loss, backbone_path, interrupted)
