#!/usr/bin/env python
"""Fine-tune Faster / Mask R-CNN on a densessl backbone and report COCO-style box (and mask) AP.

``densessl-finetune-det CONFIG [--output-dir DIR] [--resume [auto]] [key.sub=value ...]``

CONFIG is a YAML file (or the name of a shipped config such as ``detection/faster_rcnn_fpn_r18_synthetic.yaml``)
listing what differs from the schema in ``densessl.train.finetune_det``; overrides use the same dotted keys
(``model.weights=runs/x/backbone.safetensors train.max_iters=100``). Runs on a CPU, one GPU, or
``torchrun --nproc_per_node N -m densessl.cli.finetune_det CONFIG ...``. ``--print-config`` shows the resolved config.
Run directory: default ``runs/detection/<config name>``; see ``densessl.train.engine`` and ``results.json``.

Exit codes: 0 done, 2 bad config, arguments, data or run directory, 3 non-finite loss, 130 stopped by a signal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from densessl.cli.common import EXIT_OK, EXIT_STOPPED, EXIT_USAGE, add_run_arguments, print_config, run_tool, \
    setup_logging
from densessl.config_io import ConfigError, load_config
from densessl.train.finetune_det import DetConfig, FinetuneResult, NonFiniteLossError, finetune


def _print_result(result: FinetuneResult, cfg: DetConfig) -> None:
    assert result.evaluation is not None
    print(f"{cfg.model.kind} {cfg.model.arch} ({cfg.model.weights or 'random init'}) on {cfg.data.dataset}, "
          f"{result.iteration} iterations, {result.evaluation.num_images} val images")
    print(result.evaluation.format_table())
    print("per-class box AP50: " + ", ".join(f"{name}={'-' if v is None else f'{v:.1f}'}"
                                             for name, v in result.evaluation.per_class_AP50.items()))
    print(f"results: {result.results_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, default_dir="runs/detection")
    args = parser.parse_intermixed_args(argv)
    rank = setup_logging()
    try:
        cfg = load_config(DetConfig, args.config, args.overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        print_config(cfg)
        return EXIT_OK
    output_dir = Path(args.output_dir) if args.output_dir else Path("runs") / "detection" / Path(args.config).stem

    def body() -> int:
        threads = torch.get_num_threads()
        if cfg.train.num_threads is not None:
            torch.set_num_threads(cfg.train.num_threads)
        try:
            result = finetune(cfg, output_dir, resume=args.resume, allow_config_change=args.allow_config_change)
        finally:
            torch.set_num_threads(threads)
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        if result.interrupted:
            print(f"stopped at iteration {result.iteration}; continue with: densessl-finetune-det {args.config} "
                  f"--output-dir {output_dir} --resume", file=sys.stderr)
            return EXIT_STOPPED
        if rank == 0:
            _print_result(result, cfg)
        return EXIT_OK

    return run_tool(body, NonFiniteLossError)


if __name__ == "__main__":
    sys.exit(main())
