"""Linear depth probe of a frozen backbone on an RGB-D folder (the DINOv2/DINOv3 NYUv2 protocol).

``densessl-eval-depth --weights PATH|random [--arch NAME] --data-root DIR [--out FILE.json] [options]`` (or
``python tools/eval_depth.py ...`` from a checkout)

``--data-root`` holds ``images/{train,val}/`` and ``depth/{train,val}/<name>.png`` (16-bit, ``--depth-scale`` units
per metre: 1000 for NYUv2's millimetres), see ``densessl.depth.data``. The head (bins or regression) trains on frozen
features of the train split with the scale-invariant log loss and is scored on val (Eigen crop for 480 x 640 maps):
RMSE, AbsRel, SqRel, RMSE-log, log10, delta1/2/3 (``densessl.depth.probe`` gives the protocol and its differences
from DINOv2's). ``--out`` writes the metrics, every setting, the weights and the architecture as JSON.

Exit codes: 0 done, 2 bad arguments, data, weights, architecture or device (one ``error: densessl-eval-depth:`` line).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from densessl.cli.common import run_evaluation

COMMAND = "densessl-eval-depth"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="a run or export folder, a weights file, or 'random'")
    parser.add_argument("--arch", help="timm architecture (needed for 'random' and files that state none)")
    parser.add_argument("--data-root", required=True, help="RGB-D folder: images/{train,val}/, depth/{train,val}/")
    parser.add_argument("--depth-scale", type=float, default=1000.0, help="depth PNG units per metre (default 1000)")
    parser.add_argument("--input-size", type=int, default=224, help="shorter side of the input (default 224)")
    parser.add_argument("--levels", type=int, nargs="+", default=[-1], help="backbone levels (default: the last)")
    parser.add_argument("--head", choices=["bins", "regression"], default="bins")
    parser.add_argument("--n-bins", type=int, default=256)
    parser.add_argument("--min-depth", type=float, default=1e-3)
    parser.add_argument("--max-depth", type=float, default=10.0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--no-eigen-crop", action="store_true", help="score 480 x 640 maps whole")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--out", help="write the result as JSON")
    return parser


def run(args: argparse.Namespace) -> dict:
    """The evaluation; raises ``ValueError``/``OSError`` for user errors."""
    from densessl.cli.common import check_output_path

    if args.out:
        check_output_path(args.out)
    import torch

    from densessl.depth.data import DepthFolder
    from densessl.depth.probe import DepthProbeConfig, evaluate_depth
    from densessl.dist import resolve_device

    device = resolve_device(args.device)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    cfg = DepthProbeConfig(input_size=args.input_size, levels=tuple(args.levels), head=args.head, n_bins=args.n_bins,
                           min_depth=args.min_depth, max_depth=args.max_depth, epochs=args.epochs, lr=args.lr,
                           eigen_crop=not args.no_eigen_crop, seed=args.seed, device=str(device))
    cfg.validate()
    if args.weights != "random" and not os.path.exists(args.weights):
        raise FileNotFoundError(f"weights file not found: {args.weights!r} (use --weights random for a random init)")
    train_ds = DepthFolder(args.data_root, "train", args.depth_scale)
    val_ds = DepthFolder(args.data_root, "val", args.depth_scale)
    start = time.perf_counter()
    result = evaluate_depth(args.weights, args.arch, train_ds, val_ds, cfg)
    m = result["metrics"]
    print(f"linear depth probe: {result['arch']} ({args.weights}: {result['weights_source']}) on {args.data_root}, "
          f"{len(train_ds)} train / {len(val_ds)} val images, {time.perf_counter() - start:.1f} s")
    print(f"RMSE {m['rmse']:.3f}  AbsRel {m['abs_rel']:.3f}  delta1 {100 * m['delta1']:.1f}  "
          f"delta2 {100 * m['delta2']:.1f}  delta3 {100 * m['delta3']:.1f}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Run ``densessl-eval-depth``; returns the exit code."""
    args = _parser().parse_args(argv)
    return run_evaluation(COMMAND, lambda: run(args), args.out)


if __name__ == "__main__":
    sys.exit(main())
