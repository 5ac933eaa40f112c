#!/usr/bin/env python
"""Fine-tune Faster / Mask R-CNN on a densessl backbone and report COCO-style box (and mask) AP.

``densessl-finetune-det CONFIG [--output-dir DIR] [--resume [auto]] [key.sub=value ...]``

CONFIG is a YAML file (or the name of a shipped config such as ``detection/faster_rcnn_fpn_r18_synthetic.yaml``)
listing what differs from the schema in ``densessl.det.finetune``; overrides use the same dotted keys
(``model.weights=runs/x train.max_iters=100``). Runs on a CPU, one GPU, or
``torchrun --nproc_per_node N -m densessl.cli.finetune_det CONFIG ...``. ``--print-config`` shows the resolved config.
Run directory: default ``runs/detection/<config name>``; see ``densessl.train.engine`` and ``results.json``.

Exit codes: 0 done, 2 bad config, arguments, data or run directory, 3 non-finite loss, 130 stopped by a signal.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from densessl.cli.common import training_main
from densessl.config_io import load_config
from densessl.det.finetune import DetConfig, FinetuneResult, NonFiniteLossError, finetune


def _print_result(result: FinetuneResult, cfg: DetConfig) -> None:
    assert result.evaluation is not None
    print(f"{cfg.model.kind} {cfg.model.arch} ({cfg.model.weights or 'random init'}) on {cfg.data.dataset}, "
          f"{result.iteration} iterations, {result.evaluation.num_images} val images")
    print(result.evaluation.format_table())
    print("per-class box AP50: " + ", ".join(f"{name}={'-' if v is None else f'{v:.1f}'}"
                                             for name, v in result.evaluation.per_class_AP50.items()))
    print(f"results: {result.results_path}")


def _train(cfg: DetConfig, output_dir: Path, resume: str, allow_config_change: bool) -> FinetuneResult:
    threads = torch.get_num_threads()
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    try:
        return finetune(cfg, output_dir, resume=resume, allow_config_change=allow_config_change)
    finally:
        torch.set_num_threads(threads)  # the process group is left by engine.finish_run


def main(argv: list[str] | None = None) -> int:
    return training_main(
        argv, description=__doc__, command="densessl-finetune-det", default_dir="runs/detection",
        load=lambda path, overrides: load_config(DetConfig, path, overrides), train=_train, report=_print_result,
        non_finite=NonFiniteLossError)


if __name__ == "__main__":
    sys.exit(main())
