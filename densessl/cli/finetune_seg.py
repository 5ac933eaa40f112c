#!/usr/bin/env python
"""Fine-tune or linearly evaluate a densessl backbone with mmsegmentation.

``densessl-finetune-seg CONFIG [--work-dir DIR] [--cfg-options k=v ...] [--resume [auto]] [--launcher pytorch]``

Trains with mmseg's ``Runner`` (validating at the config's ``val_interval`` and at the end), then writes the last
validation metrics to ``<work-dir>/metrics.json`` and prints them. Runs on one CPU or GPU as is; for several GPUs use
``torchrun --nproc_per_node N tools/finetune_seg.py CONFIG --launcher pytorch``. Set the pretrained weights with
``--cfg-options model.backbone.weights=runs/<run>`` (loaded by densessl with ``weights_only=True``).

``--resume`` continues from the last checkpoint in the work dir; ``--resume auto`` does so when there is one and
starts otherwise (for requeued jobs). mmengine's own checkpoints hold more than tensors, so
files inside the work dir (which this tool wrote) are read with ``weights_only=False``; any other checkpoint
(``--cfg-options load_from=FILE``) only with ``weights_only=True``, and the backbone weights file is always read by
densessl with ``weights_only=True``. Note that mmseg configs are Python files: loading one runs its code, so only use
configs you trust.

Exit codes: 0 done, 2 bad config, arguments or dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from densessl.cli.common import add_resume_argument, explicit_resume, print_error

COMMAND = "densessl-finetune-seg"

PLUGIN = "densessl.seg.mmseg_plugin"


def _add_plugin_import(cfg: Any) -> None:
    """Make sure the config imports the densessl plugin (registers DenseSSLBackbone, LinearHead, datasets)."""
    custom = cfg.get("custom_imports") or {}
    imports = list(custom.get("imports", []))
    if PLUGIN not in imports:
        imports.append(PLUGIN)
    cfg.custom_imports = dict(imports=imports, allow_failed_imports=False)


def _check_folder_classes(cfg: Any) -> None:
    """For folder datasets, the decode head's ``num_classes`` must match the lines of ``classes.txt``."""
    dataset = cfg.get("train_dataloader", {}).get("dataset", {})
    if dataset.get("type") != "FolderSegDataset":
        return
    path = Path(dataset.get("data_root", "")) / "classes.txt"
    if not path.is_file():
        return  # FolderSegDataset raises a clear error naming the file
    count = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    for head in ("decode_head", "auxiliary_head"):
        head_cfg = cfg.model.get(head)
        if head_cfg is not None and head_cfg.get("num_classes") != count:
            raise ValueError(f"model.{head}.num_classes={head_cfg.get('num_classes')} but {path} lists {count} "
                             f"classes; pass --cfg-options model.{head}.num_classes={count}")


def _load_mmengine_checkpoints_fully(work_dir: str) -> None:
    """Let mmengine read its own full training checkpoints (``--resume``) under torch >= 2.6, and nothing else.

    Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``, which rejects the numpy arrays and
    ``HistoryBuffer`` objects that mmengine stores with the optimizer and log state, so resuming fails. This replaces
    mmengine's local-file checkpoint loader with one that unpickles fully (``weights_only=False``, which can run code
    stored in the file) **only for files inside the work dir**, i.e. checkpoints this tool wrote. Any other local
    file (``load_from=downloaded.pth``) is read with ``weights_only=True``; one that needs full unpickling is refused
    with a message. densessl backbone weights (``model.backbone.weights``) never go through it: densessl loads them
    itself with ``weights_only=True``.
    """
    import pickle

    import torch
    from mmengine.runner.checkpoint import CheckpointLoader

    trusted_dir = Path(work_dir).expanduser().resolve()

    def load_from_local(filename: str, map_location: Any) -> Any:
        path = Path(os.path.expanduser(filename))
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {filename} (work dir {work_dir})")
        if path.resolve().is_relative_to(trusted_dir):
            return torch.load(path, map_location=map_location, weights_only=False)
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            raise ValueError(
                f"{filename} is outside the work dir {work_dir} and holds Python objects beyond tensors, so loading it "
                f"would run code stored in the file; it was not loaded. For backbone weights use "
                f"model.backbone.weights=FILE (a state dict); to resume a run of this tool use --resume with its "
                f"--work-dir"
            ) from None

    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local, force=True)


def main(argv: list[str] | None = None) -> int:
    from densessl.config_io import SHIPPED_CONFIGS, resolve_config_path
    from densessl.seg import mmcv_ops_standin

    mmcv_ops_standin.install()  # mmcv-lite: a pure-Python mmcv.ops before anything imports mmseg
    from mmengine.config import Config, DictAction
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="mmseg config, e.g. configs/mmseg/linear_densessl-r50_frozen_..._voc12aug.py")
    parser.add_argument("--work-dir", help="output folder (default: runs/mmseg/<config name>)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                        help="override config keys, e.g. model.backbone.weights=runs/x "
                             "train_cfg.max_iters=1000")
    add_resume_argument(parser, "continue from the last checkpoint in --work-dir; '--resume auto' resumes when "
                                "there is one and starts otherwise (for requeued jobs)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="distributed launcher (default: none, a single process)")
    args = parser.parse_args(explicit_resume(argv))

    args.config = resolve_config_path(args.config)
    if not os.path.isfile(args.config):
        return print_error(COMMAND, f"config not found: {args.config} (the configs shipped with densessl are in "
                                    f"{SHIPPED_CONFIGS}/mmseg)")
    try:
        cfg = Config.fromfile(args.config)
        if args.cfg_options:
            cfg.merge_from_dict(args.cfg_options)
        _add_plugin_import(cfg)
        _check_folder_classes(cfg)
    except (ValueError, KeyError, SyntaxError) as error:
        return print_error(COMMAND, f"config error: {error}")
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or os.path.join("runs", "mmseg", Path(args.config).stem)
    has_checkpoint = Path(cfg.work_dir, "last_checkpoint").is_file()
    if args.resume == "yes" and not has_checkpoint:
        return print_error(COMMAND, f"--resume: no checkpoint in {cfg.work_dir} (mmengine writes 'last_checkpoint' "
                                    "there); start without --resume, or use --resume auto")
    if args.resume == "yes" or (args.resume == "auto" and has_checkpoint):
        cfg.resume = True
        cfg.load_from = None  # the latest checkpoint in work_dir
    _load_mmengine_checkpoints_fully(cfg.work_dir)
    # Import the plugin now (Runner.from_cfg imports custom_imports too; this gives a clear error first).
    __import__(PLUGIN)

    class _KeepMetrics(Hook):
        """Remember the metrics of the last validation run."""

        metrics: dict[str, float] | None = None

        def after_val_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
            self.metrics = dict(metrics or {})

    try:
        runner = Runner.from_cfg(cfg)
        keeper = _KeepMetrics()
        runner.register_hook(keeper, priority="LOWEST")
        runner.train()
    except (FileNotFoundError, ValueError) as error:
        return print_error(COMMAND, error)
    metrics = keeper.metrics if keeper.metrics is not None else runner.val()
    if runner.rank == 0:
        result = {k: float(v) for k, v in metrics.items()}
        Path(cfg.work_dir, "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        print("metrics: " + ", ".join(f"{k}={v:.2f}" for k, v in result.items()))
        print(f"work dir: {cfg.work_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
