"""The segmentation evaluation both tools run: ``densessl-eval-seg`` and the protocol cards of ``densessl-reproduce``.

``evaluate(cfg)`` reads the weights (or builds a random init), the train and val splits, runs the linear probe or the
dense kNN on the frozen backbone, prints the per-class table and returns the JSON record the tools write.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from densessl.backbones import DenseBackbone
from densessl.dist import resolve_device
from densessl.seg.config import EvalSegConfig
from densessl.seg.dataset import SegmentationDataset
from densessl.seg.knn import run_knn
from densessl.seg.linear import LinearProbeConfig, run_linear_probe
from densessl.seg.readers import build_segmentation_dataset
from densessl.weights import read_backbone_weights, resolve_arch

__all__ = ["build_datasets", "evaluate"]


def build_datasets(cfg: EvalSegConfig) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The (train, val) datasets of ``cfg`` (``cfg.synthetic`` sizes the generated set; others read ``cfg.data_root``).

    Raises:
        ValueError: No data root for a dataset that needs one, or a bad dataset (the reader's message).
        FileNotFoundError: The data root is not a directory.
    """
    if cfg.dataset == "synthetic":
        size = (cfg.synthetic.size, cfg.synthetic.size)
        return tuple(
            build_segmentation_dataset("synthetic", None, split, num_classes=cfg.num_classes, num_images=count,
                                       size=size, seed=cfg.seed)
            for split, count in (("train", cfg.synthetic.train_images), ("val", cfg.synthetic.val_images))
        )
    if not cfg.data_root:
        raise ValueError(f"--data-root is required for --dataset {cfg.dataset} (data_root in a config file)")
    if not os.path.isdir(cfg.data_root):
        raise FileNotFoundError(f"data root {cfg.data_root!r} is not a directory")
    return tuple(build_segmentation_dataset(cfg.dataset, cfg.data_root, split,  # type: ignore[arg-type]
                                            num_classes=cfg.num_classes, ignore_index=cfg.ignore_index)
                 for split in ("train", "val"))


def evaluate(cfg: EvalSegConfig) -> dict[str, Any]:
    """Build backbone and datasets, run the protocol, print the table; returns the JSON record.

    Raises:
        ValueError: A required field (``cfg.missing()``) is unset, or bad weights, architecture or dataset.
        OSError: Missing weights file or data root.
    """
    if cfg.missing():
        raise ValueError(f"{', '.join(cfg.missing())}: required")
    assert cfg.weights is not None  # for type checkers: missing() is empty
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = str(resolve_device(cfg.features.device, "--device"))
    protocol_cfg = cfg.protocol_config(device)
    weights = None
    if cfg.weights != "random":  # checked before the (possibly slow) dataset scan
        if not os.path.exists(cfg.weights):
            raise FileNotFoundError(f"weights file not found: {cfg.weights!r} (use --weights random for a random "
                                    f"init)")
        weights = read_backbone_weights(cfg.weights)
    arch = resolve_arch(cfg.arch, weights)
    weights_source = "random init" if weights is None else weights.source
    train_ds, val_ds = build_datasets(cfg)
    torch.manual_seed(cfg.seed)
    backbone = DenseBackbone(arch, levels=protocol_cfg.levels, weights=weights).to(device)
    del weights  # loaded into the backbone
    start = time.perf_counter()
    if isinstance(protocol_cfg, LinearProbeConfig):
        result = run_linear_probe(backbone, train_ds, val_ds, protocol_cfg)
    else:
        result = run_knn(backbone, train_ds, val_ds, protocol_cfg)
    wall = time.perf_counter() - start
    print(f"{cfg.protocol} segmentation: {arch} ({cfg.weights}: {weights_source}) on {cfg.dataset}, {wall:.1f} s")
    print(result.format_table())
    record = {
        **result.to_dict(),
        "weights": cfg.weights,
        "weights_source": weights_source,
        "arch": arch,
        "dataset": cfg.dataset,
        "protocol": cfg.protocol,
        "wall_seconds": round(wall, 2),
    }
    record["settings"]["device"] = device
    return record
