#!/usr/bin/env python
"""Convert a published checkpoint into a densessl backbone: ``densessl-convert SRC [--arch NAME] --out DIR``.

SRC is a checkpoint as VICRegL, VICReg, DenseCL, PixPro, DINO, iBOT, DINOv2, DINOv3 or ConvNeXt release it (full
training checkpoint or backbone-only file; the layout is detected, ``--format`` names it). The backbone is renamed to
timm's names and checked against ``timm.create_model(NAME, pretrained=False, num_classes=0)``; heads, projectors,
momentum encoders and queues are left out and listed. ``--out DIR`` writes the export folder pretraining writes
(``DIR/model.safetensors`` and timm's ``DIR/config.json``), for ``--weights DIR`` / ``model.weights=DIR`` and for
``timm.create_model("local-dir:DIR", pretrained=True)``. Without ``--out`` the
conversion is only checked. Nothing is downloaded.

Exit codes: 0 done, 2 bad arguments, unreadable file, unknown layout or weights that do not fit (one ``error:`` line).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from densessl.atomic import DiskFullError
    from densessl.cli.common import print_error
    from densessl.convert import BRANCHES, FORMATS
    from densessl.weights import convert_file

    parser = argparse.ArgumentParser(prog="densessl-convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="the published checkpoint (.pth/.pt/.bin or .safetensors)")
    parser.add_argument("--arch", help="timm architecture to convert to, e.g. resnet50, convnext_small, "
                                       "vit_small_patch16_224, vit_small_patch14_dinov2 (default: inferred from "
                                       "the tensor shapes)")
    parser.add_argument("--format", choices=list(FORMATS), help="the checkpoint's layout (default: detected)")
    parser.add_argument("--branch", choices=BRANCHES,
                        help="network of a DINO/iBOT/DINOv2/DINOv3 checkpoint to convert (default: teacher)")
    parser.add_argument("--out", help="export folder to write (model.safetensors + timm's config.json; default: "
                                      "check only)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="write the backbone even when tensors are missing (left random) or unexpected")
    args = parser.parse_args(argv)
    try:
        report = convert_file(args.src, args.arch, args.format, args.out, branch=args.branch,
                              allow_partial=args.allow_partial)
    except (FileNotFoundError, ValueError, DiskFullError) as error:
        return print_error("densessl-convert", error)
    print(report.summary())
    if args.out:
        print(f"wrote {args.out}/model.safetensors and {args.out}/config.json; use it with --weights {args.out} "
              f"(or model.weights=...), or timm.create_model('local-dir:{args.out}', pretrained=True)")
    else:
        print("checked only: pass --out DIR to write the backbone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
