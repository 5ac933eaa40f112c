#!/usr/bin/env python
"""Evaluate a frozen backbone on semantic segmentation: linear probe or dense kNN retrieval.

``densessl-eval-seg --weights PATH|random [--arch NAME] --dataset NAME [--data-root DIR] --protocol linear|knn
[--out FILE.json] [options]`` (or ``python tools/eval_seg.py ...`` from a checkout), or
``densessl-eval-seg --config FILE.yaml [key.sub=value ...] [options]``

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

Every option is also a key of the config schema ``densessl.eval.config.EvalSegConfig``: ``--config FILE.yaml`` reads
one (only what differs from the defaults, ``_base_`` allowed), trailing ``key.sub=value`` items override single keys
(``knn.k=5 features.input_size=224``), and the flags given are applied on top. ``--print-config`` prints the resolved
config as YAML and exits. Flag -> key: ``--input-size``, ``--resize-mode``, ``--levels``, ``--batch-size``,
``--num-workers``, ``--device``, ``--no-progress`` -> ``features.*``; the linear-probe flags -> ``linear.*``; the kNN
flags -> ``knn.*`` (``--faiss``: ``knn.use_faiss``); ``--synthetic-train/-val/-size`` ->
``synthetic.train_images/val_images/size``; the others -> the top-level key of the same name.

Exit codes: 0 done, 2 bad arguments, config (one ``config error:`` line naming the key), weights, architecture or
dataset.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the heavy imports (torch) wait until they are needed, so that --help is quick
    from densessl.eval.config import EvalSegConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. knn.k=5 features.input_size=224 (flags are applied on top)")
    parser.add_argument("--config", help="YAML config (densessl.eval.config.EvalSegConfig; only what differs from "
                                         "the defaults)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (defaults <- YAML <- overrides <- flags) as YAML and exit")
    parser.add_argument("--weights",
                        help="backbone weights: backbone.safetensors/backbone.pt of a run, a training checkpoint, a "
                             "timm state dict; or 'random' (required, here or in the config)")
    parser.add_argument("--arch", help="timm architecture, e.g. resnet18 (default: the one the weights file states; "
                                       "required with --weights random or a plain timm state dict)")
    parser.add_argument("--dataset", help="voc, ade20k, cityscapes, coco_stuff, folder or synthetic (required)")
    parser.add_argument("--data-root", help="dataset folder (not needed for synthetic)")
    parser.add_argument("--protocol", choices=("linear", "knn"), help="(required)")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--num-classes", type=int, help="class count (folder datasets; a check for the others)")
    parser.add_argument("--ignore-index", type=int,
                        help="mask value meaning 'ignore' in a folder dataset (remapped to 255; default 255)")
    parser.add_argument("--input-size", type=int, help="eval crop side S (default 128)")
    parser.add_argument("--resize-mode", choices=("shorter_crop", "square"),
                        help="shorter side -> S then center crop (default), or plain resize to S x S")
    parser.add_argument("--levels", type=int, nargs="+", help="backbone feature levels, resize-concatenated (-1)")
    parser.add_argument("--batch-size", type=int, help="images per feature-extraction batch")
    parser.add_argument("--num-workers", type=int, help="DataLoader workers")
    parser.add_argument("--seed", type=int, help="seed (random weights, probe, memory sampling; default 0)")
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
    synthetic.add_argument("--synthetic-train", type=int, help="train images (default 400)")
    synthetic.add_argument("--synthetic-val", type=int, help="val images (default 100)")
    synthetic.add_argument("--synthetic-size", type=int, help="image side (default 128)")
    return parser


# Flag (argparse dest) -> config key. A flag left out is not applied, so the YAML value (or the default) stays.
_FLAG_KEYS = {
    "weights": "weights", "arch": "arch", "dataset": "dataset", "data_root": "data_root", "protocol": "protocol",
    "out": "out", "num_classes": "num_classes", "ignore_index": "ignore_index", "seed": "seed",
    "num_threads": "num_threads",
    "input_size": "features.input_size", "resize_mode": "features.resize_mode", "levels": "features.levels",
    "batch_size": "features.batch_size", "num_workers": "features.num_workers", "device": "features.device",
    "epochs": "linear.epochs", "lr": "linear.lr", "optimizer": "linear.optimizer", "schedule": "linear.schedule",
    "weight_decay": "linear.weight_decay", "dropout": "linear.dropout", "head_batch_size": "linear.head_batch_size",
    "k": "knn.k", "temperature": "knn.temperature", "memory_size": "knn.memory_size",
    "augment_memory": "knn.augment_memory",
    "synthetic_train": "synthetic.train_images", "synthetic_val": "synthetic.val_images",
    "synthetic_size": "synthetic.size",
}


def _flag_updates(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, as a nested mapping of config keys (``--k 5`` -> ``{"knn": {"k": 5}}``)."""
    given = {key: getattr(args, dest) for dest, key in _FLAG_KEYS.items() if getattr(args, dest) is not None}
    if args.no_progress:
        given["features.progress"] = False
    if args.faiss:
        given["knn.use_faiss"] = True
    updates: dict[str, Any] = {}
    for key, value in given.items():
        *parents, leaf = key.split(".")
        node = updates
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return updates


def _datasets(cfg: EvalSegConfig) -> tuple[Any, Any]:
    from densessl.data.seg_readers import build_segmentation_dataset

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


def run(cfg: EvalSegConfig) -> dict[str, Any]:
    """Build backbone and datasets, run the protocol, print the table; returns the JSON record.

    Raises:
        ValueError: A required field (``cfg.missing()``) is unset, or bad weights, architecture or dataset.
        OSError: Missing weights file or data root.
    """
    import torch

    from densessl.backbones import DenseBackbone
    from densessl.eval.knn import run_knn
    from densessl.eval.linear_seg import LinearProbeConfig, run_linear_probe
    from densessl.weights import read_backbone_weights, resolve_arch

    if cfg.missing():
        raise ValueError(f"{', '.join(cfg.missing())}: required")
    assert cfg.weights is not None  # for type checkers: missing() is empty
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = cfg.features.device or ("cuda" if torch.cuda.is_available() else "cpu")
    protocol_cfg = cfg.protocol_config(device)
    weights = None
    if cfg.weights != "random":  # checked before the (possibly slow) dataset scan
        if not os.path.exists(cfg.weights):
            raise FileNotFoundError(f"weights file not found: {cfg.weights!r} (use --weights random for a random "
                                    f"init)")
        weights = read_backbone_weights(cfg.weights)
    arch = resolve_arch(cfg.arch, weights)
    weights_source = "random init" if weights is None else weights.source
    train_ds, val_ds = _datasets(cfg)
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


def main(argv: list[str] | None = None) -> int:
    from densessl.atomic import atomic_write_text
    from densessl.cli.common import check_output_path, print_config
    from densessl.config_io import ConfigError
    from densessl.eval.config import REQUIRED, load_eval_seg_config

    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = load_eval_seg_config(args.config, args.overrides, _flag_updates(args))
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print_config(cfg)
        return 0
    missing = cfg.missing()
    if missing:
        flags = ", ".join(REQUIRED[name] for name in missing)
        if args.config is None and not args.overrides:
            parser.error(f"the following arguments are required: {flags}")  # as before configs: exits 2
        them = "it" if len(missing) == 1 else "them"
        print(f"config error: {', '.join(missing)}: required; pass {flags} or set {them} in the --config file (or as "
              "key=value)", file=sys.stderr)
        return 2
    try:
        if cfg.out:
            check_output_path(cfg.out)  # before minutes of compute
        record = run(cfg)
        if cfg.out:
            atomic_write_text(cfg.out, json.dumps(record, indent=2, allow_nan=False) + "\n")
            print(f"wrote {cfg.out}")
    except (OSError, ValueError) as error:
        message = " ".join(str(error).split())
        print(f"eval_seg.py: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
