#!/usr/bin/env python
"""Pretrain a backbone: ``densessl-train CONFIG [--output-dir DIR] [--resume [auto]] [key.sub=value ...]``.

Single process (CPU or one GPU) or ``torchrun --nproc_per_node N -m densessl.cli.train CONFIG ...`` (or
``tools/train.py`` from a checkout). CONFIG is a YAML path or the name of a shipped config
(``pretrain/vicregl_resnet18_synthetic.yaml``). ``--print-config`` shows the resolved config and exits.
Exit codes: 0 done, 2 bad config/arguments/data/run directory, 3 non-finite loss, 130 stopped by a signal
(checkpoint saved; ``--resume auto`` continues it).
"""

from __future__ import annotations

import sys
from typing import Any

from densessl.cli.common import training_main


def _report(result: Any, cfg: Any) -> None:
    print(f"backbone: {result.backbone_path} (timm: timm.create_model('local-dir:{result.backbone_path.parent}', "
          "pretrained=True))")
    print(f"evaluate it with: densessl-eval-seg --weights {result.run_dir} --dataset synthetic --protocol linear")


def main(argv: list[str] | None = None) -> int:
    from densessl.train.config import load_config
    from densessl.train.pretrain import NonFiniteLossError, train

    return training_main(
        argv, description=__doc__, command="densessl-train", default_dir="runs", load=load_config,
        train=lambda cfg, out, resume, allow: train(cfg, out, resume=resume, allow_config_change=allow),
        report=_report, non_finite=NonFiniteLossError)


if __name__ == "__main__":
    sys.exit(main())
