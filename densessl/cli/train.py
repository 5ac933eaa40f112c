#!/usr/bin/env python
"""Pretrain a backbone: ``densessl-train CONFIG [--output-dir DIR] [--resume [auto]] [key.sub=value ...]``.

Single process (CPU or one GPU) or ``torchrun --nproc_per_node N -m densessl.cli.train CONFIG ...`` (or
``tools/train.py`` from a checkout). CONFIG is a YAML path or the name of a shipped config
(``pretrain/vicregl_resnet18_synthetic.yaml``). ``--print-config`` shows the resolved config and exits.
Exit codes: 0 done, 2 bad config/arguments/data/run directory, 3 non-finite loss, 130 stopped by a signal
(checkpoint saved; ``--resume auto`` continues it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from densessl.cli.common import EXIT_OK, EXIT_STOPPED, EXIT_USAGE, add_run_arguments, print_config, run_tool, \
    setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, default_dir="runs")
    args = parser.parse_intermixed_args(argv)
    rank = setup_logging()

    from densessl.config import load_config
    from densessl.config_io import ConfigError
    from densessl.train.pretrain import NonFiniteLossError, train

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        print_config(cfg)
        return EXIT_OK
    output_dir = Path(args.output_dir) if args.output_dir else Path("runs") / Path(args.config).stem

    def body() -> int:
        result = train(cfg, output_dir, resume=args.resume, allow_config_change=args.allow_config_change)
        if result.interrupted:
            print(f"stopped at iteration {result.iteration}; continue with: densessl-train {args.config} "
                  f"--output-dir {output_dir} --resume", file=sys.stderr)
            return EXIT_STOPPED
        if rank == 0 and result.backbone_path is not None:
            exported = Path(result.backbone_path).with_name("backbone.safetensors")
            print(f"backbone: {exported} (arch and config inside; backbone.pt and backbone.json beside it). "
                  f"Evaluate with: densessl-eval-seg --weights {exported} --dataset ... --protocol knn")
        return EXIT_OK

    return run_tool(body, NonFiniteLossError)


if __name__ == "__main__":
    sys.exit(main())
