"""The detection fine-tuning recipe: Faster / Mask R-CNN on a densessl backbone, COCO-style AP, on the shared engine.

``finetune(cfg, run_dir, resume)`` trains a torchvision detector (``densessl.det.model.build_detector``) as
``cfg`` says and evaluates it (``densessl.det.coco``). It runs on a CPU, one GPU, or under ``torchrun``
(``train.batch_size`` is global: each process gets ``batch_size / N`` images per step, in ``optim.accumulate``
micro-batches; ``model.norm=sync_bn`` then synchronizes BatchNorm over the GPUs). Run directory: the engine's
(``densessl.train.engine``) plus ``results.json``, the final evaluation (box_AP, box_AP50, box_AP75, ..., mask_* for
Mask R-CNN, per_class_AP50) and the settings.

Training follows detectron2's recipe: SGD with momentum, linear warm-up from ``warmup_factor`` over
``warmup_iters``, then multi-step (``gamma`` at ``steps``) or cosine decay (``densessl.train.optim.detectron2_lr_factor``);
normalization layers get ``weight_decay_norm``; random horizontal flips; a random shorter side from
``data.min_size_train`` per batch, ``data.min_size_test`` at evaluation. Not implemented: aspect-ratio grouping of
batches (only costs padding) and the VOC07 11-point metric (VOC is scored with COCO-style AP, difficult objects
ignored). Exact resume: iteration ``i`` always sees the same images and flips, and every RNG state is restored.
"""

from __future__ import annotations

import logging
import os
import random
import time
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Literal

import numpy as np
import torch
import torch.utils.data
from torch import Tensor, nn

from densessl.atomic import atomic_write_json
from densessl.det.coco import DetectionEvalResult, evaluate_detector
from densessl.det.datasets import (
    CocoDetection,
    DetectionDataset,
    SyntheticDetection,
    VOCDetection,
    detection_collate,
    horizontal_flip,
)
from densessl.det.model import ModelConfig, build_detector
from densessl.schema import Range, to_dict
from densessl.train import engine
from densessl.train.engine import NonFiniteLossError, ResumeMode
from densessl.train.optim import detectron2_lr_factor, param_groups

__all__ = ["DetConfig", "FIXED_ON_RESUME", "FinetuneResult", "NonFiniteLossError", "build_datasets", "finetune"]

logger = logging.getLogger("densessl")

DetDataset = Literal["synthetic", "voc", "coco"]
DATASETS: tuple[str, ...] = typing.get_args(DetDataset)

# Config keys a resume must not change: they change the model or what the saved iteration means.
FIXED_ON_RESUME = ("model.kind", "model.arch", "model.neck", "model.levels", "model.box_head", "model.out_channels",
                   "model.representation_size", "model.model_kwargs", "data.dataset", "data.root", "data.train_sets",
                   "data.train_images", "data.train_ann", "data.synthetic_train_images", "data.synthetic_size",
                   "data.synthetic_seed", "train.batch_size", "train.seed")


# --------------------------------------------------------------------------- #
# Config schema
# --------------------------------------------------------------------------- #


@dataclass
class DataConfig:
    """Datasets. Paths are relative to ``root`` unless absolute."""

    dataset: DetDataset = "synthetic"
    root: str | None = None  # voc: the VOCdevkit folder; coco: the folder holding images and annotations
    train_sets: list[str] = field(default_factory=lambda: ["VOC2007/trainval", "VOC2012/trainval"])  # voc
    val_sets: list[str] = field(default_factory=lambda: ["VOC2007/test"])  # voc
    train_images: str = "train2017"  # coco
    train_ann: str = "annotations/instances_train2017.json"  # coco
    val_images: str = "val2017"  # coco
    val_ann: str = "annotations/instances_val2017.json"  # coco
    val_max_images: Annotated[int | None, Range(ge=1)] = None  # evaluate on the first N val images only
    synthetic_train_images: Annotated[int, Range(ge=1)] = 512
    synthetic_val_images: Annotated[int, Range(ge=1)] = 128
    synthetic_size: Annotated[int, Range(ge=32)] = 128
    synthetic_seed: int = 0
    min_size_train: Annotated[list[int], Range(ge=32)] = field(default_factory=lambda: [800])  # one drawn per batch
    min_size_test: Annotated[int, Range(ge=32)] = 800
    max_size: int = 1333
    hflip_prob: Annotated[float, Range(ge=0, le=1)] = 0.5
    num_workers: Annotated[int, Range(ge=0)] = 2

    def validate(self) -> None:
        if self.dataset != "synthetic" and not self.root:
            raise ValueError(f"root: data.dataset={self.dataset} needs data.root=/path/to/data")
        if not self.min_size_train:
            raise ValueError("min_size_train: needs at least one size")
        if self.max_size < max(max(self.min_size_train), self.min_size_test):
            raise ValueError(f"max_size: must be >= every min size, got {self.max_size}")


@dataclass
class OptimConfig:
    """SGD, warm-up, then multi-step or cosine decay (lr is for the global ``train.batch_size``)."""

    lr: Annotated[float, Range(gt=0)] = 0.02
    momentum: Annotated[float, Range(ge=0)] = 0.9
    weight_decay: Annotated[float, Range(ge=0)] = 1e-4
    weight_decay_norm: Annotated[float, Range(ge=0)] = 0.0  # for normalization layers (detectron2's default)
    warmup_iters: Annotated[int, Range(ge=0)] = 1000
    warmup_factor: Annotated[float, Range(gt=0, le=1)] = 0.001
    schedule: Literal["multistep", "cosine"] = "multistep"
    # in iterations (in epochs when train.epochs is set)
    steps: Annotated[list[int], Range(ge=1, ordered=True)] = field(default_factory=list)
    gamma: Annotated[float, Range(gt=0, le=1)] = 0.1
    min_lr_ratio: Annotated[float, Range(ge=0, le=1)] = 0.0  # cosine floor, as a fraction of lr
    clip_grad: Annotated[float | None, Range(gt=0)] = None
    # micro-batches per step: train.batch_size / (processes x accumulate) images each
    accumulate: Annotated[int, Range(ge=1)] = 1


@dataclass
class TrainConfig:
    """Length, batch, evaluation, logging and checkpoints."""

    max_iters: Annotated[int | None, Range(ge=1)] = 1000
    epochs: Annotated[int | None, Range(ge=1)] = None  # instead of max_iters
    batch_size: Annotated[int, Range(ge=1)] = 16  # global, split over processes
    eval_every: Annotated[int | None, Range(ge=1)] = None  # iterations between evaluations (the last always runs)
    eval_batch_size: Annotated[int, Range(ge=1)] = 2  # per process
    checkpoint_every: Annotated[int, Range(ge=1)] = 1000
    log_every: Annotated[int, Range(ge=1)] = 20
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16); CPU runs fp32
    num_threads: Annotated[int | None, Range(ge=1)] = None  # torch CPU threads of this process (null: torch's)
    progress: bool = True
    wandb: str | None = None  # W&B project to log to (the wandb extra; WANDB_MODE=offline is honoured); null: off

    def validate(self) -> None:
        if (self.max_iters is None) == (self.epochs is None):
            raise ValueError("max_iters: set exactly one of train.max_iters and train.epochs")


@dataclass
class DetConfig:
    """Root of the detection fine-tuning config."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        if self.model.kind == "mask_rcnn" and self.data.dataset == "voc":
            raise ValueError("model: mask_rcnn needs instance masks; VOC detection has boxes only (use coco/synthetic)")
        if self.train.max_iters is not None and self.optim.steps and self.optim.steps[-1] >= self.train.max_iters:
            raise ValueError(f"optim: steps {self.optim.steps} must be below train.max_iters={self.train.max_iters}")


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


def _under(root: str | None, path: str) -> Path:
    path = os.path.expanduser(path)
    return Path(path) if os.path.isabs(path) or root is None else Path(root) / path


def build_datasets(cfg: DetConfig) -> tuple[DetectionDataset, DetectionDataset]:
    """The training dataset (ignore regions dropped) and the evaluation dataset."""
    data = replace(cfg.data, root=os.path.expanduser(cfg.data.root) if cfg.data.root else None)
    masks = cfg.model.kind == "mask_rcnn"
    if data.dataset == "synthetic":
        size = (data.synthetic_size, data.synthetic_size)
        val_count = min(data.synthetic_val_images, data.val_max_images or data.synthetic_val_images)
        return (SyntheticDetection(data.synthetic_train_images, size, data.synthetic_seed, "train", training=True,
                                   with_masks=masks),
                SyntheticDetection(val_count, size, data.synthetic_seed, "val", with_masks=masks))
    if data.dataset == "voc":
        return (VOCDetection(data.root, data.train_sets, training=True),  # type: ignore[arg-type]
                VOCDetection(data.root, data.val_sets, max_images=data.val_max_images))  # type: ignore[arg-type]
    return (CocoDetection(_under(data.root, data.train_images), _under(data.root, data.train_ann), training=True,
                          with_masks=masks),
            CocoDetection(_under(data.root, data.val_images), _under(data.root, data.val_ann), with_masks=masks,
                          max_images=data.val_max_images))


class _TrainBatches(torch.utils.data.Sampler):
    """Micro-batches of ``(index, flip)`` keys: a seeded permutation per epoch, split over ranks and accumulation.

    Step ``i`` of a run always gets the same images and flips (whatever the process count), so a resumed run sees the
    data an uninterrupted run would have seen. Yields ``accumulate`` micro-batches per step, from step ``start``.
    """

    def __init__(self, size: int, global_batch: int, rank: int, world: int, seed: int, flip_prob: float,
                 start: int, total: int, accumulate: int = 1) -> None:
        self.size, self.global_batch, self.rank, self.world = size, global_batch, rank, world
        self.seed, self.flip_prob, self.start, self.total = seed, flip_prob, start, total
        self.accumulate = accumulate
        self.per_epoch = size // global_batch
        if self.per_epoch < 1:
            raise ValueError(f"the training set has {size} images, fewer than one batch of {global_batch}")

    def __len__(self) -> int:
        return (self.total - self.start) * self.accumulate

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        local = self.global_batch // self.world
        micro = local // self.accumulate
        cached_epoch, order, flips = -1, None, None
        for iteration in range(self.start, self.total):
            epoch, position = divmod(iteration, self.per_epoch)
            if epoch != cached_epoch:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(self.size, generator=generator).tolist()
                flips = (torch.rand(self.size, generator=generator) < self.flip_prob).tolist()
                cached_epoch = epoch
            first = position * self.global_batch + self.rank * local
            for part in range(self.accumulate):
                keys = range(first + part * micro, first + (part + 1) * micro)
                yield [(order[k], bool(flips[k])) for k in keys]  # type: ignore[index]


class _FlipKeyed(torch.utils.data.Dataset):
    """``dataset[(index, flip)]``: the sample, mirrored when ``flip``."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, bool]) -> tuple[torch.Tensor, dict[str, Any]]:
        index, flip = key
        image, target = self.dataset[index]
        return horizontal_flip(image, target) if flip else (image, target)




# --------------------------------------------------------------------------- #
# The recipe
# --------------------------------------------------------------------------- #


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`.

    Attributes:
        iteration: Iterations done.
        evaluation: The final evaluation (``None`` when a signal stopped the run).
        results_path: ``results.json`` (``None`` on ranks other than 0, or when stopped).
        interrupted: A signal stopped the run after saving a checkpoint.
    """

    iteration: int
    evaluation: DetectionEvalResult | None
    results_path: Path | None
    interrupted: bool = False


def finetune(
    cfg: DetConfig,
    output_dir: str | os.PathLike,
    resume: ResumeMode | bool = "no",
    *,
    allow_config_change: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> FinetuneResult:
    """Train a detector as ``cfg`` says, evaluate it, write ``results.json``.

    Args:
        cfg: A validated config.
        output_dir: Run directory.
        resume: ``"no"``, ``"yes"`` or ``"auto"`` (see ``densessl.train.engine.resolve_resume``).
        allow_config_change: Resume even when the config changes the model, data or batch (recorded).
        on_step: Called with the iteration number after each finished step (after checkpointing).

    Raises:
        NonFiniteLossError: A loss became NaN/inf (the last checkpoint is kept).
        FileExistsError / densessl.train.engine.ResumeError / ValueError: Run directory, weights or data problems.
    """
    run = engine.start_run(output_dir, to_dict(cfg), recipe="detection", resume=resume, device=cfg.train.device,
                           precision="auto" if cfg.train.amp else "fp32", log_every=cfg.train.log_every,
                           wandb=cfg.train.wandb, fixed_keys=FIXED_ON_RESUME, accumulate=cfg.optim.accumulate,
                           allow_config_change=allow_config_change, resolved_config=cfg)
    try:
        return _finetune(cfg, run, on_step)
    finally:
        engine.finish_run(run)


def _finetune(cfg: DetConfig, run: engine.Run, on_step: Callable[[int], None] | None) -> FinetuneResult:
    device = run.device
    engine.micro_batch_size(run, cfg.train.batch_size, cfg.optim.accumulate, "train.batch_size")
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    train_set, val_set = build_datasets(cfg)
    m = cfg.model
    detector = build_detector(m, train_set.num_classes, min_size=cfg.data.min_size_train,
                              test_min_size=cfg.data.min_size_test, max_size=cfg.data.max_size).to(device)
    groups = param_groups([detector], cfg.optim.weight_decay, no_decay="norm",
                          no_decay_weight_decay=cfg.optim.weight_decay_norm)
    optimizer = torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum)

    per_epoch = len(train_set) // cfg.train.batch_size
    if cfg.train.epochs is not None:
        total = cfg.train.epochs * per_epoch
        milestones = [s * per_epoch for s in cfg.optim.steps]
    else:
        total = int(cfg.train.max_iters)  # type: ignore[arg-type]
        milestones = list(cfg.optim.steps)
    scaler = engine.make_scaler(run)

    start = run.start_iteration
    if run.state is not None:
        detector.load_state_dict(run.state["model"])
        optimizer.load_state_dict(run.state["optimizer"])
        scaler.load_state_dict(run.state["scaler"])
        engine.restore_rng(run.state["rng"])
        run.state = None
    model = engine.wrap_distributed(run, detector)

    def evaluate() -> DetectionEvalResult:
        return evaluate_detector(model, val_set, device=device, batch_size=cfg.train.eval_batch_size,
                                 num_workers=cfg.data.num_workers, progress=cfg.train.progress)

    def forward(module: nn.Module, batch: Any) -> dict[str, Tensor]:
        batch = batch.to(device)
        losses = module(batch.images, batch.targets)
        return {"loss": sum(losses.values()), **losses}

    sampler = _TrainBatches(len(train_set), cfg.train.batch_size, run.rank, run.world_size, cfg.train.seed,
                            cfg.data.hflip_prob, start, total, cfg.optim.accumulate)
    # The loader's own generator: creating its iterator must not draw from the global RNG, which is restored on resume.
    loader = torch.utils.data.DataLoader(_FlipKeyed(train_set), batch_sampler=sampler, collate_fn=detection_collate,
                                         num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(cfg.train.seed))
    logger.info("fine-tuning %s (%s, %s) on %s: %d iterations, batch %d (%d per process, %d accumulation), "
                "%d training / %d val images, device %s", m.kind, m.arch, m.weights or "random init",
                cfg.data.dataset, total, cfg.train.batch_size, cfg.train.batch_size // run.world_size,
                cfg.optim.accumulate, len(train_set), len(val_set), device)
    iteration, interrupted = start, False
    train_start = time.perf_counter()
    progress = engine.ProgressBar(run, total=total, initial=start, desc=f"{m.kind}/{m.arch}",
                                  enabled=cfg.train.progress)
    model.train()
    batches = iter(loader)
    try:
        while iteration < total:
            lr = cfg.optim.lr * detectron2_lr_factor(iteration, total, warmup_iters=cfg.optim.warmup_iters,
                                                     warmup_factor=cfg.optim.warmup_factor,
                                                     schedule=cfg.optim.schedule, milestones=milestones,
                                                     gamma=cfg.optim.gamma, min_lr_ratio=cfg.optim.min_lr_ratio)
            engine.set_lr(optimizer, lr)
            micro_batches = [next(batches) for _ in range(cfg.optim.accumulate)]
            try:
                terms = engine.optimizer_step(run, model, optimizer, scaler, micro_batches, forward,
                                              iteration=iteration, clip_grad=cfg.optim.clip_grad)
            except NonFiniteLossError as error:
                raise engine.fall_back_to_stable(run, error) from None
            iteration += 1
            progress.update(1)
            record = engine.log_step(run, iteration, total, terms, lr=lr, images=cfg.train.batch_size)
            if record is not None:
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.4g}")
            if iteration % cfg.train.checkpoint_every == 0 or iteration == total:
                _save(run, iteration, detector, optimizer, scaler, cfg.optim.accumulate)
            if cfg.train.eval_every and iteration % cfg.train.eval_every == 0 and iteration < total:
                result = evaluate()
                model.train()
                logger.info("iteration %d: %s", iteration, ", ".join(f"{k}={v:.2f}" for k, v in result.metrics().items()))
                engine.log_record(run, {"iteration": iteration, "eval": result.metrics()})
            if on_step is not None:
                on_step(iteration)
            signum = engine.stop_requested(run)
            if signum and iteration < total:
                _save(run, iteration, detector, optimizer, scaler, cfg.optim.accumulate)
                logger.warning("stopped by signal %d at iteration %d; resume with --resume", signum, iteration)
                interrupted = True
                break
    finally:
        progress.close()
        del batches
    if interrupted:
        return FinetuneResult(iteration=iteration, evaluation=None, results_path=None, interrupted=True)
    train_time = time.perf_counter() - train_start
    eval_start = time.perf_counter()
    result = evaluate()
    eval_time = time.perf_counter() - eval_start
    results_path = None
    engine.log_record(run, {"iteration": iteration, "eval": result.metrics()})
    if run.main:
        results_path = run.run_dir / "results.json"
        atomic_write_json(results_path, {
            **result.metrics(), "per_class_AP50": result.per_class_AP50, "num_val_images": result.num_images,
            "iterations": iteration, "train_time_s": round(train_time, 1), "eval_time_s": round(eval_time, 1),
            "settings": to_dict(cfg)})
    engine.drop_fallback(run)
    return FinetuneResult(iteration=iteration, evaluation=result, results_path=results_path)


def _save(run: engine.Run, iteration: int, detector: nn.Module, optimizer: torch.optim.Optimizer,
          scaler: torch.amp.GradScaler, accumulate: int) -> None:
    engine.save_checkpoint(run, iteration, {"model": detector.state_dict(), "optimizer": optimizer.state_dict(),
                                            "scaler": scaler.state_dict()}, accumulate=accumulate)
