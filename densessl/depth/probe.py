"""Linear depth probe on frozen features: the DINOv2 / DINOv3 NYUv2 "linear" protocol, for any backbone.

Protocol (``run_depth_probe``), after DINOv2's depth evaluation (Oquab et al. 2023, Sec. 7.4 and its
Monocular-Depth-Estimation-Toolbox configs), written from the papers:

1. Features. Each image is resized so that its shorter side is ``input_size`` and both sides are multiples of the
   backbone's stride (the aspect ratio kept to within a stride), normalised with ImageNet statistics; the frozen
   backbone's ``levels`` are resize-concatenated on the first level's grid (``densessl.seg.features``). Train
   features are extracted once and kept (float16).
2. Head (``LinearDepthHead``): features upsampled ``upsample`` x (bilinear) -> BatchNorm -> 1x1 conv. ``head: bins``
   (the DINOv2 default): ``n_bins`` logits -> ReLU + 0.1, normalised to sum 1 over the bins (the toolbox's "linear"
   normalisation) -> depth = sum of probability x bin centre, the centres uniform in ``[min_depth, max_depth]``;
   ``head: regression``: one channel -> ``max_depth * sigmoid``.
3. Training: AdamW (``lr``, ``weight_decay``), cosine to 0 over ``epochs`` over the cached train features, batch
   ``batch_size``; the prediction is upsampled bilinearly to the resized image and trained with the scale-invariant
   log loss (Eigen et al. 2014) as the toolbox's ``SigLoss`` computes it: ``g = log(pred) - log(gt)`` over pixels
   with ``min_depth < gt < max_depth``, ``loss = loss_weight * sqrt(var(g) + 0.15 * mean(g)^2)`` (``var``
   unbiased; = ``sqrt(mean(g^2) - 0.85 mean(g)^2)`` up to that), ``loss_weight`` 10.
4. Evaluation on val at the ground truth's resolution: the predicted depth map is resized bilinearly to the depth
   map, clipped to ``[min_depth, max_depth]``; pixels with ``min_depth < gt < max_depth`` count, inside the Eigen crop
   (rows 45:471, columns 41:601 of a 480 x 640 map, ``eigen_crop``; other sizes are scored whole). Per image: RMSE,
   AbsRel, SqRel, RMSE-log, log10 and delta1/2/3 (``max(pred/gt, gt/pred) < 1.25^k``), averaged over images.

Known differences: the head's BatchNorm normalises with the statistics of all train features, computed once, not
per batch (a CPU batch of a few images, one forward per image size, gives unstable statistics); DINOv2's "lin. 1"
also concatenates the class token to every patch feature (a pooled vector for a ConvNet); densessl uses the dense
maps only, so ConvNets and ViTs run one protocol. Its linear heads train 38,400 iterations with random-crop / flip
augmentation at 416 x 544 crops; here the head trains on fixed, unaugmented features (cheap, deterministic) for
``epochs`` passes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from densessl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from densessl.schema import Range, check_fields
from densessl.seg.features import backbone_device, resize_concat, resolve_levels

__all__ = ["DepthProbeConfig", "LinearDepthHead", "depth_metrics", "evaluate_depth", "run_depth_probe", "sig_loss",
           "EIGEN_CROP"]

logger = logging.getLogger("densessl")

EIGEN_CROP = (45, 471, 41, 601)  # rows top:bottom, columns left:right of a 480 x 640 NYUv2 depth map
METRICS = ("rmse", "abs_rel", "sq_rel", "rmse_log", "log10", "delta1", "delta2", "delta3")


@dataclass
class DepthProbeConfig:
    """Every setting of the depth probe (see the module docstring); all of them go into the result JSON."""

    input_size: Annotated[int, Range(ge=16)] = 224
    levels: tuple[int, ...] = (-1,)
    head: Literal["bins", "regression"] = "bins"
    n_bins: Annotated[int, Range(ge=2)] = 256
    min_depth: Annotated[float, Range(gt=0)] = 1e-3
    max_depth: Annotated[float, Range(gt=0)] = 10.0
    upsample: Annotated[int, Range(ge=1)] = 4
    epochs: Annotated[int, Range(ge=1)] = 20
    batch_size: Annotated[int, Range(ge=1)] = 8
    lr: Annotated[float, Range(gt=0)] = 1e-3
    weight_decay: Annotated[float, Range(ge=0)] = 1e-2
    loss_weight: Annotated[float, Range(gt=0)] = 10.0
    eigen_crop: bool = True
    seed: int = 0
    device: str | None = None

    def validate(self) -> None:
        check_fields(self)
        if self.min_depth >= self.max_depth:
            raise ValueError(f"min_depth: must be below max_depth ({self.max_depth}), got {self.min_depth}")


class LinearDepthHead(nn.Module):
    """``(B, C, h, w)`` features -> ``(B, 1, upsample * h, upsample * w)`` depth in metres (module docstring, 2)."""

    def __init__(self, channels: int, cfg: DepthProbeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, cfg.n_bins if cfg.head == "bins" else 1, kernel_size=1)
        centres = torch.linspace(cfg.min_depth, cfg.max_depth, cfg.n_bins)
        self.register_buffer("centres", centres.view(1, -1, 1, 1), persistent=False)

    def forward(self, features: Tensor) -> Tensor:
        if self.cfg.upsample > 1:
            features = F.interpolate(features, scale_factor=self.cfg.upsample, mode="bilinear", align_corners=False)
        logits = self.conv(self.norm(features))
        if self.cfg.head == "regression":
            return self.cfg.max_depth * torch.sigmoid(logits)
        weights = torch.relu(logits) + 0.1
        weights = weights / weights.sum(dim=1, keepdim=True)
        return (weights * self.centres).sum(dim=1, keepdim=True)


def sig_loss(pred: Tensor, target: Tensor, valid: Tensor, weight: float = 10.0) -> Tensor:
    """The scale-invariant log loss over ``valid`` pixels: ``weight * sqrt(var(g) + 0.15 * mean(g)^2)``."""
    g = torch.log(pred[valid].clamp_min(1e-6)) - torch.log(target[valid])
    return weight * torch.sqrt(torch.var(g) + 0.15 * g.mean() ** 2)


def depth_metrics(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """The standard depth metrics of one image over its ``valid`` pixels (module docstring, 4)."""
    p, t = pred[valid].astype(np.float64), target[valid].astype(np.float64)
    ratio = np.maximum(p / t, t / p)
    return {
        "rmse": float(np.sqrt(np.mean((p - t) ** 2))),
        "abs_rel": float(np.mean(np.abs(p - t) / t)),
        "sq_rel": float(np.mean((p - t) ** 2 / t)),
        "rmse_log": float(np.sqrt(np.mean((np.log(p) - np.log(t)) ** 2))),
        "log10": float(np.mean(np.abs(np.log10(p) - np.log10(t)))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


@torch.no_grad()
def _set_norm_statistics(norm: nn.BatchNorm2d, features: list[Tensor]) -> None:
    """The head's BatchNorm statistics: the per-channel mean and variance over every train feature cell."""
    cells = torch.cat([f.float().flatten(1) for f in features], dim=1)  # (C, N)
    norm.running_mean.copy_(cells.mean(dim=1).to(norm.running_mean.device))
    norm.running_var.copy_(cells.var(dim=1).to(norm.running_var.device))


def _valid(target: np.ndarray, cfg: DepthProbeConfig) -> np.ndarray:
    valid = (target > cfg.min_depth) & (target < cfg.max_depth)
    if cfg.eigen_crop and target.shape == (480, 640):
        crop = np.zeros_like(valid)
        top, bottom, left, right = EIGEN_CROP
        crop[top:bottom, left:right] = True
        valid &= crop
    return valid


def _input(image: Image.Image, size: int, stride: int) -> Tensor:
    """The normalised ``(3, H', W')`` input: shorter side ``size``, both sides multiples of ``stride``."""
    scale = size / min(image.width, image.height)
    width = max(stride, round(image.width * scale / stride) * stride)
    height = max(stride, round(image.height * scale / stride) * stride)
    array = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (tensor - mean) / std


@torch.no_grad()
def _features(backbone: nn.Module, image: Image.Image, cfg: DepthProbeConfig, positions: list[int], stride: int,
              device: torch.device) -> Tensor:
    out = backbone(_input(image, cfg.input_size, stride)[None].to(device))
    return resize_concat([out.maps[p] for p in positions]).float()[0]


def run_depth_probe(backbone: nn.Module, train_ds: torch.utils.data.Dataset, val_ds: torch.utils.data.Dataset,
                    cfg: DepthProbeConfig | None = None) -> dict[str, Any]:
    """Train the linear depth head on frozen features of ``train_ds``, score it on ``val_ds``.

    Args:
        backbone: Returns ``DenseFeatures`` (``DenseBackbone``), kept frozen in eval mode.
        train_ds, val_ds: Yield ``DepthSample`` (``densessl.depth.data.DepthFolder``).
        cfg: Protocol settings (defaults: ``DepthProbeConfig()``).

    Returns:
        ``{"metrics": {name: mean over val images}, "settings": {...}, "timings": {...}}``.
    """
    cfg = cfg or DepthProbeConfig()
    cfg.validate()
    device = backbone_device(backbone, cfg.device)
    positions = resolve_levels(backbone, cfg.levels)
    stride = int(max(getattr(backbone, "strides", [32])))  # the input sides are multiples of the coarsest stride
    was_training = backbone.training
    backbone.eval()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    train = []
    try:
        for index in range(len(train_ds)):  # type: ignore[arg-type]
            sample = train_ds[index]
            feats = _features(backbone, sample.image, cfg, positions, stride, device)
            height, width = feats.shape[-2:]  # the target at the resized input's size (NEAREST: 0 stays "none")
            target = Image.fromarray(sample.depth).resize((width * stride, height * stride), Image.Resampling.NEAREST)
            train.append((feats.half().cpu(), torch.from_numpy(np.array(target, dtype=np.float32))))
        timings["train_features"] = time.perf_counter() - start

        generator = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        head = LinearDepthHead(train[0][0].shape[0], cfg).to(device)
        _set_norm_statistics(head.norm, [feats for feats, _ in train])
        optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        total = cfg.epochs * steps_per_epoch
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        start = time.perf_counter()
        head.train()
        head.norm.eval()  # fixed train-set statistics (see _set_norm_statistics); its affine part still learns
        losses = []
        for _ in range(cfg.epochs):
            order = torch.randperm(len(train), generator=generator).tolist()
            for first in range(0, len(order), cfg.batch_size):
                loss = torch.zeros((), device=device)
                batch = [train[i] for i in order[first:first + cfg.batch_size]]
                terms = 0
                for feats, target in batch:  # images of different sizes: one forward each, the loss averaged
                    target = target.to(device)
                    valid = (target > cfg.min_depth) & (target < cfg.max_depth)
                    if int(valid.sum()) < 2:
                        continue
                    pred = head(feats.float()[None].to(device))
                    pred = F.interpolate(pred, size=tuple(target.shape), mode="bilinear", align_corners=False)[0, 0]
                    loss = loss + sig_loss(pred, target, valid, cfg.loss_weight)
                    terms += 1
                if terms == 0:
                    continue
                optimizer.zero_grad(set_to_none=True)
                (loss / terms).backward()
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()) / terms)
        timings["train_head"] = time.perf_counter() - start

        start = time.perf_counter()
        head.eval()
        per_image = []
        with torch.no_grad():
            for index in range(len(val_ds)):  # type: ignore[arg-type]
                sample = val_ds[index]
                pred = head(_features(backbone, sample.image, cfg, positions, stride, device)[None])
                pred = F.interpolate(pred, size=sample.depth.shape, mode="bilinear", align_corners=False)[0, 0]
                pred = pred.clamp(cfg.min_depth, cfg.max_depth).cpu().numpy()
                valid = _valid(sample.depth, cfg)
                if valid.any():
                    per_image.append(depth_metrics(pred, sample.depth, valid))
        timings["evaluate"] = time.perf_counter() - start
    finally:
        backbone.train(was_training)
    if not per_image:
        raise ValueError("no val image has a depth measurement inside (min_depth, max_depth)")
    metrics = {name: float(np.mean([m[name] for m in per_image])) for name in METRICS}
    settings = {"protocol": "depth_linear", **{k: (list(v) if isinstance(v, tuple) else v)
                                               for k, v in asdict(cfg).items() if k != "device"},
                "num_train": len(train), "num_val_scored": len(per_image),
                "feature_channels": int(train[0][0].shape[0]),
                "final_train_loss": round(losses[-1], 4) if losses else None}
    return {"metrics": metrics, "settings": settings, "timings": {k: round(v, 2) for k, v in timings.items()}}


def evaluate_depth(weights: str, arch: str | None, train_ds: torch.utils.data.Dataset,
                   val_ds: torch.utils.data.Dataset, cfg: DepthProbeConfig) -> dict[str, Any]:
    """The probe of a backbone named by its weights: ``densessl-eval-depth`` and depth protocol cards run this.

    Args:
        weights: A run or export folder, a weights file, or ``random`` (initialised after ``cfg.seed``).
        arch: The timm architecture; ``None``: the one the weights file states.
        train_ds, val_ds, cfg: As for :func:`run_depth_probe`; the backbone is built on ``cfg.device``.

    Returns:
        :func:`run_depth_probe`'s record plus ``weights``, ``weights_source`` and ``arch``.
    """
    from densessl.backbones import DenseBackbone
    from densessl.weights import read_backbone_weights, resolve_arch

    loaded = None if weights == "random" else read_backbone_weights(weights)
    arch = resolve_arch(arch, loaded)
    torch.manual_seed(cfg.seed)
    backbone = DenseBackbone(arch, levels=cfg.levels, weights=loaded).to(cfg.device or "cpu")
    result = run_depth_probe(backbone, train_ds, val_ds, cfg)
    return {**result, "weights": weights, "weights_source": "random init" if loaded is None else loaded.source,
            "arch": arch}
