#!/usr/bin/env python
"""Fine-tune Faster / Mask R-CNN on a densessl backbone and report COCO-style box (and mask) AP.

``python tools/finetune_det.py CONFIG [--output-dir DIR] [--resume] [key.sub=value ...]``

CONFIG is a YAML file listing what differs from the schema below (``configs/detection/*.yaml``); overrides use the
same dotted keys (``model.weights=runs/x/backbone.pt train.max_iters=100``). Runs on a CPU, one GPU, or
``torchrun --nproc_per_node N tools/finetune_det.py CONFIG ...`` (``train.batch_size`` is global: each process gets
``batch_size / N`` images; ``model.norm=sync_bn`` then synchronizes BatchNorm over the GPUs).

Run directory (default ``runs/detection/<config name>``)::

    config.yaml          the resolved config
    metrics.jsonl        training losses / lr every ``train.log_every`` iterations, and every evaluation
    checkpoints/last.pt  model, optimizer, scheduler, AMP scaler, iteration and RNG states (atomic writes)
    results.json         the final evaluation (box_AP, box_AP50, box_AP75, ..., mask_* for Mask R-CNN,
                         per_class_AP50) and the settings

Training follows detectron2's recipe: SGD with momentum, linear warm-up from ``warmup_factor`` over
``warmup_iters``, then multi-step (``gamma`` at ``steps``) or cosine decay; random horizontal flips; a random shorter
side from ``data.min_size_train`` per batch, ``data.min_size_test`` at evaluation. Not implemented: aspect-ratio
grouping of batches (only costs padding) and the VOC07 11-point metric (VOC is scored with COCO-style AP, difficult
objects ignored).

Exit codes: 0 done, 2 bad config, arguments or data, 3 non-finite loss.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.utils.data
from torch import nn
from tqdm import tqdm

from densessl.config_io import ConfigError, load_config, save_config, to_dict
from densessl.data.detection import (
    CocoDetection,
    DetectionDataset,
    SyntheticDetection,
    VOCDetection,
    detection_collate,
    horizontal_flip,
)
from densessl.eval.detection import (
    BOX_HEADS,
    DETECTOR_KINDS,
    NECKS,
    NORMS,
    DetectionEvalResult,
    build_detector,
    evaluate_detector,
)
from densessl.train.checkpoint import atomic_save, capture_rng, last_checkpoint_path, load_checkpoint, restore_rng

logger = logging.getLogger("densessl")

DATASETS = ("synthetic", "voc", "coco")


# --------------------------------------------------------------------------- #
# Config schema
# --------------------------------------------------------------------------- #


@dataclass
class ModelConfig:
    """Detector and backbone (see ``densessl.eval.detection.build_detector``)."""

    kind: str = "faster_rcnn"  # faster_rcnn | mask_rcnn
    arch: str = "resnet50"  # any timm model with forward_intermediates
    weights: str | None = None  # backbone.pt / timm state_dict / .safetensors; null = random init
    neck: str = "fpn"  # fpn | c4 (ResNets, faster_rcnn)
    levels: list[int] | None = None  # feature_info indices; null = strides 4/8/16/32 (c4: 16; ViT: last block)
    norm: str = "frozen_bn"  # frozen_bn | bn | sync_bn
    frozen_stages: int = 1  # -1 none, 0 stem, N stem + first N stages
    frozen: bool = False  # freeze the whole backbone
    out_channels: int = 256
    box_head: str = "2fc"  # 2fc | 4conv1fc
    representation_size: int = 1024
    anchor_sizes: list[int] | None = None  # one per pyramid level; null = 8 x stride
    roi_batch_size: int = 512
    rpn_proposals_train: int = 2000
    rpn_proposals_test: int = 1000
    detections_per_img: int = 100
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.kind not in DETECTOR_KINDS:
            raise ValueError(f"kind: must be one of {DETECTOR_KINDS}, got {self.kind!r}")
        if self.neck not in NECKS:
            raise ValueError(f"neck: must be one of {NECKS}, got {self.neck!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm: must be one of {NORMS}, got {self.norm!r}")
        if self.box_head not in BOX_HEADS:
            raise ValueError(f"box_head: must be one of {BOX_HEADS}, got {self.box_head!r}")
        if self.frozen_stages < -1:
            raise ValueError(f"frozen_stages: must be >= -1, got {self.frozen_stages}")
        if self.neck == "c4" and self.kind == "mask_rcnn":
            raise ValueError("neck: c4 is implemented for faster_rcnn only")
        for name in ("out_channels", "representation_size", "roi_batch_size", "rpn_proposals_train",
                     "rpn_proposals_test", "detections_per_img"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class DataConfig:
    """Datasets. Paths are relative to ``root`` unless absolute."""

    dataset: str = "synthetic"  # synthetic | voc | coco
    root: str | None = None  # voc: the VOCdevkit folder; coco: the folder holding images and annotations
    train_sets: list[str] = field(default_factory=lambda: ["VOC2007/trainval", "VOC2012/trainval"])  # voc
    val_sets: list[str] = field(default_factory=lambda: ["VOC2007/test"])  # voc
    train_images: str = "train2017"  # coco
    train_ann: str = "annotations/instances_train2017.json"  # coco
    val_images: str = "val2017"  # coco
    val_ann: str = "annotations/instances_val2017.json"  # coco
    val_max_images: int | None = None  # evaluate on the first N val images only (quick checks)
    synthetic_train_images: int = 512
    synthetic_val_images: int = 128
    synthetic_size: int = 128
    synthetic_seed: int = 0
    min_size_train: list[int] = field(default_factory=lambda: [800])  # one drawn per batch
    min_size_test: int = 800
    max_size: int = 1333
    hflip_prob: float = 0.5
    num_workers: int = 2

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: must be one of {DATASETS}, got {self.dataset!r}")
        if self.dataset != "synthetic" and not self.root:
            raise ValueError(f"root: data.dataset={self.dataset} needs data.root=/path/to/data")
        if not self.min_size_train or min(self.min_size_train) < 32:
            raise ValueError(f"min_size_train: needs sizes >= 32, got {self.min_size_train}")
        if self.min_size_test < 32 or self.max_size < max(max(self.min_size_train), self.min_size_test):
            raise ValueError("max_size: must be >= every min size (and min_size_test >= 32)")
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob: must be in [0, 1], got {self.hflip_prob}")
        if self.synthetic_train_images < 1 or self.synthetic_val_images < 1 or self.synthetic_size < 32:
            raise ValueError("synthetic_size: synthetic sizes must be >= 32 and image counts >= 1")
        if self.val_max_images is not None and self.val_max_images < 1:
            raise ValueError(f"val_max_images: must be >= 1 or null, got {self.val_max_images}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers: must be >= 0, got {self.num_workers}")


@dataclass
class OptimConfig:
    """SGD, warm-up, then multi-step or cosine decay (lr is for the global ``train.batch_size``)."""

    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0  # for normalization layers (detectron2's default)
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    schedule: str = "multistep"  # multistep | cosine
    steps: list[int] = field(default_factory=list)  # in iterations (in epochs when train.epochs is set)
    gamma: float = 0.1
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    clip_grad: float | None = None

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.schedule not in ("multistep", "cosine"):
            raise ValueError(f"schedule: must be multistep or cosine, got {self.schedule!r}")
        if self.steps != sorted(self.steps) or any(s < 1 for s in self.steps):
            raise ValueError(f"steps: must be increasing positive numbers, got {self.steps}")
        if not 0 < self.gamma <= 1 or not 0 < self.warmup_factor <= 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("gamma and warmup_factor must be in (0, 1], min_lr_ratio in [0, 1]")
        if self.weight_decay < 0 or self.weight_decay_norm < 0 or self.warmup_iters < 0 or self.momentum < 0:
            raise ValueError("weight_decay, weight_decay_norm, warmup_iters and momentum must be >= 0")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad: must be > 0 or null, got {self.clip_grad}")


@dataclass
class TrainConfig:
    """Length, batch, evaluation, logging and checkpoints."""

    max_iters: int | None = 1000
    epochs: int | None = None  # instead of max_iters
    batch_size: int = 16  # global, split over processes
    eval_every: int | None = None  # iterations between evaluations (the final one always runs)
    eval_batch_size: int = 2  # per process
    checkpoint_every: int = 1000
    log_every: int = 20
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16); CPU runs fp32
    num_threads: int | None = None  # torch CPU threads of this process (null: torch's default)
    progress: bool = True

    def validate(self) -> None:
        if (self.max_iters is None) == (self.epochs is None):
            raise ValueError("max_iters: set exactly one of train.max_iters and train.epochs")
        if (self.max_iters or 1) < 1 or (self.epochs or 1) < 1:
            raise ValueError("max_iters: train.max_iters / train.epochs must be >= 1")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch_size: must be >= 1")
        if self.checkpoint_every < 1 or self.log_every < 1 or (self.eval_every is not None and self.eval_every < 1):
            raise ValueError("checkpoint_every: checkpoint_every, log_every and eval_every must be >= 1")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads: must be >= 1 or null, got {self.num_threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: must be auto, cpu or cuda, got {self.device!r}")


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
    return Path(path) if os.path.isabs(path) or root is None else Path(root) / path


def build_datasets(cfg: DetConfig) -> tuple[DetectionDataset, DetectionDataset]:
    """The training dataset (ignore regions dropped) and the evaluation dataset."""
    data = cfg.data
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
    """Per-iteration batches of ``(index, flip)`` keys: a seeded permutation per epoch, split over ranks.

    Iteration ``i`` of a run always gets the same images and flips, so a resumed run sees the data an uninterrupted
    run would have seen.
    """

    def __init__(self, size: int, global_batch: int, rank: int, world: int, seed: int, flip_prob: float,
                 start: int, total: int) -> None:
        self.size, self.global_batch, self.rank, self.world = size, global_batch, rank, world
        self.seed, self.flip_prob, self.start, self.total = seed, flip_prob, start, total
        self.per_epoch = size // global_batch
        if self.per_epoch < 1:
            raise ValueError(f"the training set has {size} images, fewer than one batch of {global_batch}")

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        local = self.global_batch // self.world
        cached_epoch, order, flips = -1, None, None
        for iteration in range(self.start, self.total):
            epoch, position = divmod(iteration, self.per_epoch)
            if epoch != cached_epoch:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(self.size, generator=generator).tolist()
                flips = (torch.rand(self.size, generator=generator) < self.flip_prob).tolist()
                cached_epoch = epoch
            first = position * self.global_batch + self.rank * local
            yield [(order[k], bool(flips[k])) for k in range(first, first + local)]  # type: ignore[index]


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
# Optimization
# --------------------------------------------------------------------------- #


_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD over the trainable parameters; normalization layers get ``weight_decay_norm``."""
    norm_params: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NORM_TYPES) or "LayerNorm" in type(module).__name__:
            norm_params.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if id(p) in norm_params else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": cfg.weight_decay_norm}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum)


def lr_factor(iteration: int, total: int, cfg: OptimConfig, steps: list[int]) -> float:
    """Learning-rate multiplier at ``iteration`` (0-based): warm-up x (multi-step or cosine)."""
    if cfg.schedule == "multistep":
        factor = cfg.gamma ** sum(iteration >= s for s in steps)
    else:
        factor = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * iteration / max(total, 1)))
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


# --------------------------------------------------------------------------- #
# Loop
# --------------------------------------------------------------------------- #


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite."""


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`.

    Attributes:
        iteration: Iterations done.
        evaluation: The final evaluation.
        results_path: ``results.json`` (``None`` on ranks other than 0).
    """

    iteration: int
    evaluation: DetectionEvalResult
    results_path: Path | None


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device=cuda but no CUDA device is available; use train.device=cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def finetune(cfg: DetConfig, output_dir: str | os.PathLike, resume: bool = False) -> FinetuneResult:
    """Train a detector as ``cfg`` says, evaluate it, write ``results.json``.

    Args:
        cfg: A validated config.
        output_dir: Run directory (must not hold a checkpoint unless ``resume``).
        resume: Continue from ``output_dir/checkpoints/last.pt``.

    Returns:
        The final iteration and evaluation.

    Raises:
        NonFiniteLossError: A loss became NaN/inf (the last checkpoint is kept).
        FileExistsError / FileNotFoundError / ValueError: Run directory, weights or data problems.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = _device(cfg.train.device)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    main = rank == 0
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} must be divisible by the {world} processes")
    output_dir = Path(output_dir)
    last_path = last_checkpoint_path(output_dir, resume)
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output_dir / "config.yaml")

    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    train_set, val_set = build_datasets(cfg)
    m = cfg.model
    model = build_detector(
        m.kind, m.arch, m.weights, train_set.num_classes, neck=m.neck, levels=m.levels, norm=m.norm,
        frozen_stages=m.frozen_stages, frozen=m.frozen, out_channels=m.out_channels, box_head=m.box_head,
        min_size=cfg.data.min_size_train, test_min_size=cfg.data.min_size_test, max_size=cfg.data.max_size,
        anchor_sizes=m.anchor_sizes, representation_size=m.representation_size, roi_batch_size=m.roi_batch_size,
        rpn_proposals_train=m.rpn_proposals_train, rpn_proposals_test=m.rpn_proposals_test,
        detections_per_img=m.detections_per_img, model_kwargs=m.model_kwargs,
    ).to(device)
    optimizer = build_optimizer(model, cfg.optim)

    per_epoch = len(train_set) // cfg.train.batch_size
    if cfg.train.epochs is not None:
        total = cfg.train.epochs * per_epoch
        steps = [s * per_epoch for s in cfg.optim.steps]
    else:
        total = int(cfg.train.max_iters)  # type: ignore[arg-type]
        steps = list(cfg.optim.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, total, cfg.optim, steps))
    amp_dtype = None
    if cfg.train.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start = 0
    if resume:
        state = load_checkpoint(last_path)  # clear errors for a damaged or foreign file
        if state.get("format") != "densessl-detection":
            raise ValueError(f"{str(last_path)!r} is not a densessl detection checkpoint")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start = int(state["iteration"])
        restore_rng(state["rng"])
        logger.info("resumed from %s at iteration %d", last_path, start)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def save() -> None:
        if main:
            atomic_save({"format": "densessl-detection", "iteration": iteration, "model": _unwrap(model).state_dict(),
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict(), "rng": capture_rng(), "config": to_dict(cfg)}, last_path)

    def evaluate() -> DetectionEvalResult:
        return evaluate_detector(model, val_set, device=device, batch_size=cfg.train.eval_batch_size,
                                 num_workers=cfg.data.num_workers, progress=cfg.train.progress)

    sampler = _TrainBatches(len(train_set), cfg.train.batch_size, rank, world, cfg.train.seed, cfg.data.hflip_prob,
                            start, total)
    loader = torch.utils.data.DataLoader(_FlipKeyed(train_set), batch_sampler=sampler, collate_fn=detection_collate,
                                         num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    metrics_file = (output_dir / "metrics.jsonl").open("a") if main else None
    logger.info("fine-tuning %s (%s, %s) on %s: %d iterations, batch %d (%d per process), %d training / %d val "
                "images, device %s", m.kind, m.arch, m.weights or "random init", cfg.data.dataset, total,
                cfg.train.batch_size, cfg.train.batch_size // world, len(train_set), len(val_set), device)
    iteration = start
    window: dict[str, float] = {}
    window_count, window_start = 0, time.perf_counter()
    train_start = time.perf_counter()
    progress = tqdm(total=total, initial=start, disable=not (main and cfg.train.progress), dynamic_ncols=True,
                    desc=f"{m.kind}/{m.arch}")
    model.train()
    try:
        for batch in loader:
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                losses = model(batch.images, batch.targets)
            loss = sum(losses.values())
            values = torch.stack([v.detach().float() for v in losses.values()])
            if world > 1:
                dist.all_reduce(values)
                values /= world
            if not bool(torch.isfinite(values).all()):
                named = {k: float(v) for k, v in zip(losses, values)}
                raise NonFiniteLossError(
                    f"non-finite loss at iteration {iteration + 1}: {named}. The last good checkpoint is "
                    f"{str(last_path)!r} (if any). Lower optim.lr, raise optim.warmup_iters or set optim.clip_grad.")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            iteration += 1
            progress.update(1)
            for key, value in zip(losses, values.tolist()):
                window[key] = window.get(key, 0.0) + value
            window["loss"] = window.get("loss", 0.0) + float(values.sum())
            window_count += 1
            if iteration % cfg.train.log_every == 0 or iteration == total:
                record = {"iteration": iteration, **{k: v / window_count for k, v in window.items()}, "lr": lr,
                          "s_per_iter": (time.perf_counter() - window_start) / window_count}
                if metrics_file is not None:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.4g}")
                window, window_count, window_start = {}, 0, time.perf_counter()
            if iteration % cfg.train.checkpoint_every == 0 or iteration == total:
                save()
            if cfg.train.eval_every and iteration % cfg.train.eval_every == 0 and iteration < total:
                result = evaluate()
                model.train()
                logger.info("iteration %d: %s", iteration, ", ".join(f"{k}={v:.2f}" for k, v in result.metrics().items()))
                if metrics_file is not None:
                    metrics_file.write(json.dumps({"iteration": iteration, "eval": result.metrics()}) + "\n")
                    metrics_file.flush()
    finally:
        progress.close()
    train_time = time.perf_counter() - train_start
    eval_start = time.perf_counter()
    result = evaluate()
    eval_time = time.perf_counter() - eval_start
    results_path = None
    if main:
        assert metrics_file is not None
        metrics_file.write(json.dumps({"iteration": iteration, "eval": result.metrics()}) + "\n")
        metrics_file.close()
        results_path = output_dir / "results.json"
        payload = {**result.metrics(), "per_class_AP50": result.per_class_AP50, "num_val_images": result.num_images,
                   "iterations": iteration, "train_time_s": round(train_time, 1), "eval_time_s": round(eval_time, 1),
                   "settings": to_dict(cfg)}
        tmp = results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, results_path)
    return FinetuneResult(iteration=iteration, evaluation=result, results_path=results_path)


def _print_result(result: FinetuneResult, cfg: DetConfig) -> None:
    print(f"{cfg.model.kind} {cfg.model.arch} ({cfg.model.weights or 'random init'}) on {cfg.data.dataset}, "
          f"{result.iteration} iterations, {result.evaluation.num_images} val images")
    print(result.evaluation.format_table())
    print("per-class box AP50: " + ", ".join(f"{name}={'-' if v is None else f'{v:.1f}'}"
                                             for name, v in result.evaluation.per_class_AP50.items()))
    print(f"results: {result.results_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="detection YAML, e.g. configs/detection/faster_rcnn_fpn_r18_synthetic.yaml")
    parser.add_argument("overrides", nargs="*", help="config overrides as key.sub=value, e.g. model.weights=x.pt")
    parser.add_argument("--output-dir", help="run directory (default: runs/detection/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoints/last.pt")
    args = parser.parse_intermixed_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = load_config(DetConfig, args.config, args.overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    output_dir = Path(args.output_dir) if args.output_dir else Path("runs") / "detection" / Path(args.config).stem
    threads = torch.get_num_threads()
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    try:
        result = finetune(cfg, output_dir, resume=args.resume)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    finally:
        torch.set_num_threads(threads)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        _print_result(result, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
