#!/usr/bin/env python
"""Pretrain a backbone: ``python tools/train.py CONFIG [--output-dir DIR] [--resume] [key.sub=value ...]``.

Single process (CPU or one GPU) or ``torchrun --nproc_per_node N tools/train.py CONFIG ...``.
Exit codes: 0 done, 2 bad config/arguments, 3 non-finite loss, 130 stopped by a signal (checkpoint saved).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment YAML (only what differs from the defaults)")
    parser.add_argument("overrides", nargs="*", help="config overrides as key.sub=value, e.g. optim.base_lr=0.3")
    parser.add_argument("--output-dir", help="run directory (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoints/last.pt")
    args = parser.parse_intermixed_args(argv)

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    from densessl.config import load_config
    from densessl.config_io import ConfigError
    from densessl.train.loop import NonFiniteLossError, train

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    output_dir = Path(args.output_dir) if args.output_dir else Path("runs") / Path(args.config).stem
    try:
        result = train(cfg, output_dir, resume=args.resume)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    if result.interrupted:
        print(f"stopped at iteration {result.iteration}; resume with: python tools/train.py {args.config} "
              f"--output-dir {output_dir} --resume", file=sys.stderr)
        return 130
    if rank == 0:
        print(f"backbone: {result.backbone_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
