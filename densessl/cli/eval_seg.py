#!/usr/bin/env python
"""Evaluate a frozen backbone on semantic segmentation: linear probe or dense kNN retrieval.

``densessl-eval-seg --weights PATH|random [--arch NAME] --dataset NAME [--data-root DIR] --protocol linear|knn
[--out FILE.json] [options]`` (or ``python tools/eval_seg.py ...`` from a checkout), or
``densessl-eval-seg --config FILE.yaml [key.sub=value ...] [options]``

A weights path is local, never downloaded: a pretraining run folder ``runs/<run>`` (its export,
``export/model.safetensors``), an export folder, a densessl training checkpoint (``runs/<run>/checkpoints/last.pt``),
or a timm state dict.
``--arch`` is needed only when the file does not state its architecture (a plain timm state dict); when both are given
they must agree. ``--weights random --arch NAME`` evaluates a randomly initialized backbone (seeded by ``--seed``):
the baseline any pretrained backbone must beat.
``--dataset synthetic`` needs no data root (``--synthetic-train``/``--synthetic-val`` images at ``--synthetic-size``).

Prints a per-class IoU table, mIoU, pixel accuracy and the protocol settings; ``--out`` writes them as JSON with keys
``mIoU``, ``per_class_iou`` (class name -> IoU percent or null), ``pixel_acc``, ``settings``, ``weights``,
``weights_source`` (what the file was, e.g. "densessl backbone export"), ``arch`` (the one used), ``dataset``,
``protocol``.

Every option is also a key of the config schema ``densessl.seg.config.EvalSegConfig``: ``--config FILE.yaml`` reads
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
import logging
import sys
from typing import Any

COMMAND = "densessl-eval-seg"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. knn.k=5 features.input_size=224 (flags are applied on top)")
    parser.add_argument("--config", help="YAML config (densessl.seg.config.EvalSegConfig; only what differs from "
                                         "the defaults)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (defaults <- YAML <- overrides <- flags) as YAML and exit")
    parser.add_argument("--weights",
                        help="backbone weights: a run folder (its export/model.safetensors), an export folder, a "
                             "weights file, a training checkpoint, a "
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


def main(argv: list[str] | None = None) -> int:
    from densessl.cli.common import check_output_path, print_config, print_error, run_evaluation
    from densessl.config_io import load_config
    from densessl.schema import ConfigError
    from densessl.seg.config import REQUIRED, EvalSegConfig
    from densessl.seg.evaluate import evaluate

    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = load_config(EvalSegConfig, args.config, args.overrides, _flag_updates(args))
    except ConfigError as error:
        return print_error(COMMAND, f"config error: {error}")
    if args.print_config:
        print_config(cfg)
        return 0
    missing = cfg.missing()
    if missing:
        flags = ", ".join(REQUIRED[name] for name in missing)
        if args.config is None and not args.overrides:
            parser.error(f"the following arguments are required: {flags}")  # as before configs: exits 2
        them = "it" if len(missing) == 1 else "them"
        return print_error(COMMAND, f"config error: {', '.join(missing)}: required; pass {flags} or set {them} in the "
                                    "--config file (or as key=value)")
    def produce() -> dict:
        if cfg.out:
            check_output_path(cfg.out)  # before minutes of compute
        return evaluate(cfg)

    return run_evaluation(COMMAND, produce, cfg.out)


if __name__ == "__main__":
    sys.exit(main())
