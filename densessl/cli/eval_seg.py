#!/usr/bin/env python
"""Evaluate a frozen backbone on semantic segmentation: linear probe or dense kNN retrieval.

``densessl-eval-seg --weights PATH|random [--arch NAME] --dataset NAME [--data-root DIR] --protocol linear|knn
[--out FILE.json] [options]`` (or ``python tools/eval_seg.py ...`` from a checkout)

A weights path is a local file, never downloaded: the ``runs/<run>/backbone.safetensors`` (or ``backbone.pt``) that
pretraining exports, a densessl training checkpoint (``runs/<run>/checkpoints/last.pt``), or a timm state dict.
``--arch`` is needed only when the file does not state its architecture (a plain timm state dict); when both are given
they must agree. ``--weights random --arch NAME`` evaluates a randomly initialized backbone (seeded by ``--seed``):
the baseline any pretrained backbone must beat.
``--dataset synthetic`` needs no data root (``--synthetic-train``/``--synthetic-val`` images at ``--synthetic-size``).

Prints a per-class IoU table, mIoU, pixel accuracy and the protocol settings; ``--out`` writes them as JSON with keys
``mIoU``, ``per_class_iou`` (class name -> IoU percent or null), ``pixel_acc``, ``settings``, ``weights``,
``weights_source`` (what the file was, e.g. "densessl backbone export"), ``arch`` (the one used), ``dataset``,
``protocol``.

Exit codes: 0 done, 2 bad arguments, weights, architecture or dataset.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True,
                        help="backbone weights: backbone.safetensors/backbone.pt of a run, a training checkpoint, a "
                             "timm state dict; or 'random'")
    parser.add_argument("--arch", help="timm architecture, e.g. resnet18 (default: the one the weights file states; "
                                       "required with --weights random or a plain timm state dict)")
    parser.add_argument("--dataset", required=True,
                        help="voc, ade20k, cityscapes, coco_stuff, folder or synthetic")
    parser.add_argument("--data-root", help="dataset folder (not needed for synthetic)")
    parser.add_argument("--protocol", required=True, choices=("linear", "knn"))
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--num-classes", type=int, help="class count (folder datasets; a check for the others)")
    parser.add_argument("--ignore-index", type=int, default=255,
                        help="mask value meaning 'ignore' in a folder dataset (remapped to 255; default 255)")
    parser.add_argument("--input-size", type=int, help="eval crop side S (default 128)")
    parser.add_argument("--resize-mode", choices=("shorter_crop", "square"),
                        help="shorter side -> S then center crop (default), or plain resize to S x S")
    parser.add_argument("--levels", type=int, nargs="+", help="backbone feature levels, resize-concatenated (-1)")
    parser.add_argument("--batch-size", type=int, help="images per feature-extraction batch")
    parser.add_argument("--num-workers", type=int, help="DataLoader workers")
    parser.add_argument("--seed", type=int, default=0, help="seed (random weights, probe, memory sampling)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--num-threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    probe = parser.add_argument_group("linear probe")
    probe.add_argument("--epochs", type=int)
    probe.add_argument("--lr", type=float)
    probe.add_argument("--optimizer", choices=("sgd", "adamw"))
    probe.add_argument("--schedule", choices=("poly", "cosine"))
    probe.add_argument("--weight-decay", type=float)
    probe.add_argument("--dropout", type=float)
    probe.add_argument("--head-batch-size", type=int)
    knn = parser.add_argument_group("kNN retrieval")
    knn.add_argument("--k", type=int)
    knn.add_argument("--temperature", type=float)
    knn.add_argument("--memory-size", type=int)
    knn.add_argument("--augment-memory", type=int)
    knn.add_argument("--faiss", action="store_true", help="use faiss.IndexFlatIP if faiss is installed")
    synthetic = parser.add_argument_group("synthetic dataset")
    synthetic.add_argument("--synthetic-train", type=int, default=400)
    synthetic.add_argument("--synthetic-val", type=int, default=100)
    synthetic.add_argument("--synthetic-size", type=int, default=128)
    return parser


def _config(args: argparse.Namespace, device: str) -> Any:
    """The protocol config: dataclass defaults, overridden by the options given."""
    from densessl.eval.knn import KNNConfig
    from densessl.eval.linear_seg import LinearProbeConfig

    common = {"input_size": args.input_size, "resize_mode": args.resize_mode, "batch_size": args.batch_size,
              "num_workers": args.num_workers, "seed": args.seed,
              "levels": tuple(args.levels) if args.levels else None}
    if args.protocol == "linear":
        specific = {"epochs": args.epochs, "lr": args.lr, "optimizer": args.optimizer, "schedule": args.schedule,
                    "weight_decay": args.weight_decay, "dropout": args.dropout,
                    "head_batch_size": args.head_batch_size}
        factory: Any = LinearProbeConfig
    else:
        specific = {"k": args.k, "temperature": args.temperature, "memory_size": args.memory_size,
                    "augment_memory": args.augment_memory, "use_faiss": args.faiss or None}
        factory = KNNConfig
    given = {key: value for key, value in {**common, **specific}.items() if value is not None}
    cfg = factory(device=device, progress=not args.no_progress, **given)
    cfg.validate()
    return cfg


def _datasets(args: argparse.Namespace) -> tuple[Any, Any]:
    from densessl.data.seg_readers import build_segmentation_dataset

    if args.dataset == "synthetic":
        size = (args.synthetic_size, args.synthetic_size)
        return tuple(
            build_segmentation_dataset("synthetic", None, split, num_classes=args.num_classes, num_images=count,
                                       size=size, seed=args.seed)
            for split, count in (("train", args.synthetic_train), ("val", args.synthetic_val))
        )
    if not args.data_root:
        raise ValueError(f"--data-root is required for --dataset {args.dataset}")
    if not os.path.isdir(args.data_root):
        raise FileNotFoundError(f"data root {args.data_root!r} is not a directory")
    return tuple(build_segmentation_dataset(args.dataset, args.data_root, split, num_classes=args.num_classes,
                                            ignore_index=args.ignore_index)
                 for split in ("train", "val"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build backbone and datasets, run the protocol, print the table; returns the JSON record."""
    import torch

    from densessl.backbones import DenseBackbone
    from densessl.eval.knn import run_knn
    from densessl.eval.linear_seg import run_linear_probe
    from densessl.weights import read_backbone_weights, resolve_arch

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = _config(args, device)
    if args.weights != "random" and not os.path.exists(args.weights):
        raise FileNotFoundError(f"weights file not found: {args.weights!r} (use --weights random for a random init)")
    weights = None if args.weights == "random" else read_backbone_weights(args.weights)
    arch = resolve_arch(args.arch, weights)
    weights_source = "random init" if weights is None else weights.source
    train_ds, val_ds = _datasets(args)
    torch.manual_seed(args.seed)
    backbone = DenseBackbone(arch, levels=cfg.levels, weights=weights).to(device)
    del weights  # loaded into the backbone
    start = time.perf_counter()
    result = run_linear_probe(backbone, train_ds, val_ds, cfg) if args.protocol == "linear" else run_knn(
        backbone, train_ds, val_ds, cfg)
    wall = time.perf_counter() - start
    print(f"{args.protocol} segmentation: {arch} ({args.weights}: {weights_source}) on {args.dataset}, {wall:.1f} s")
    print(result.format_table())
    record = {
        **result.to_dict(),
        "weights": args.weights,
        "weights_source": weights_source,
        "arch": arch,
        "dataset": args.dataset,
        "protocol": args.protocol,
        "wall_seconds": round(wall, 2),
    }
    record["settings"]["device"] = device
    return record


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        record = run(args)
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
            print(f"wrote {out}")
    except (OSError, ValueError) as error:
        message = " ".join(str(error).split())
        print(f"eval_seg.py: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
