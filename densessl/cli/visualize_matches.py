#!/usr/bin/env python
"""Draw geometric vs learned matches between two views of one image, and print the label-free match precision.

Examples::

    densessl-viz --weights random --arch resnet18 --dataset synthetic --out /tmp/viz.png
    densessl-viz --weights runs/x --image cat.jpg --out viz.png --query 0.5 0.4 \\
        --precision-images 64

(``python tools/visualize_matches.py ...`` from a checkout.) ``--weights`` is local, never downloaded: a pretraining run
folder (its ``export/model.safetensors``), an export folder, a training checkpoint
(``runs/x/checkpoints/last.pt``) or a timm state dict. ``--arch`` is needed only for ``--weights random`` or a file
that does not state its architecture; when both are given they must agree.

Two global views come from ``MultiCrop`` (random resized crop + flip, seeded by ``--seed``); photometric
augmentation is off unless ``--augment`` (then the VICRegL recipe), so the figure shows the geometry alone.
Needs matplotlib (``pip install 'densessl[viz]'``). Exit codes: 0 done, 2 bad arguments or inputs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

from densessl.cli.common import check_output_path, print_error

COMMAND = "densessl-viz"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {COMMAND}: {message} (see --help)\n")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True,
                        help="backbone weights: a run folder (its export/model.safetensors), an export folder, a "
                             "weights file, a training checkpoint, a "
                             "timm state dict; or 'random'")
    parser.add_argument("--arch", help="timm architecture, e.g. resnet18 (default: the one the weights file states; "
                                       "required with --weights random or a plain timm state dict)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="image file")
    source.add_argument("--dataset", choices=["synthetic"], help="built-in dataset to draw the image from")
    parser.add_argument("--index", type=int, default=0, help="image index in --dataset (default 0)")
    parser.add_argument("--scene-size", type=int, default=256, help="side of synthetic images in pixels (default 256)")
    parser.add_argument("--out", required=True, help="output PNG path (missing parent folders are created)")
    parser.add_argument("--size", type=int, default=224, help="side of the two global crops (default 224)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the views and of a random init (default 0)")
    parser.add_argument("--query", type=float, nargs=2, metavar=("X", "Y"),
                        help="query point, normalized (x, y) in the original image; default: centre of the overlap")
    parser.add_argument("--radius", type=float, default=1.0, help="correct-match radius in cells of view B")
    parser.add_argument("--level", type=int, default=-1, help="feature level (timm feature_info index, default -1)")
    parser.add_argument("--augment", action="store_true", help="also apply the VICRegL photometric augmentation")
    parser.add_argument("--precision-images", type=int, default=0, metavar="N",
                        help="also print the match precision over N synthetic val images")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dpi", type=int, default=120, help="figure resolution (figure is 14x7 inches)")
    return parser.parse_args(argv)


def _validate(args: argparse.Namespace) -> None:
    if args.index < 0:
        raise ValueError(f"--index must be >= 0, got {args.index}")
    if args.size < 8:
        raise ValueError(f"--size must be >= 8, got {args.size}")
    if args.radius < 0:
        raise ValueError(f"--radius must be >= 0, got {args.radius}")
    if args.precision_images < 0:
        raise ValueError(f"--precision-images must be >= 0, got {args.precision_images}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.weights != "random" and not Path(args.weights).exists():
        raise FileNotFoundError(f"weights file not found: {args.weights!r} (or pass --weights random)")
    if args.weights == "random" and not args.arch:
        raise ValueError("--weights random needs --arch (a timm model name, e.g. resnet18)")
    if args.image is not None and not Path(args.image).is_file():
        raise FileNotFoundError(f"image file not found: {args.image!r}")
    if args.query is not None and not all(0.0 <= v <= 1.0 for v in args.query):
        raise ValueError(f"--query must be normalized (x, y) in [0, 1], got {args.query}")
    check_output_path(args.out, example="viz.png")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        _validate(args)
        import matplotlib  # noqa: F401  (fail early with a clear message)
    except ImportError:
        return print_error(COMMAND, "matplotlib is not installed: pip install 'densessl[viz]'")
    except (ValueError, FileNotFoundError) as error:
        return print_error(COMMAND, error)

    import torch

    from densessl.backbones import DenseBackbone
    from densessl.data.images import ImageLoadError, load_image
    from densessl.data.synthetic import SyntheticScenes
    from densessl.data.transforms import MultiCrop, MultiCropConfig, geometry_only_config
    from densessl.diagnostics import match_precision_over_dataset
    from densessl.viz import draw_match_figure
    from densessl.weights import read_backbone_weights, resolve_arch

    try:
        weights = None if args.weights == "random" else read_backbone_weights(args.weights)
        arch = resolve_arch(args.arch, weights)
        torch.manual_seed(args.seed)  # a random init is reproducible
        backbone = DenseBackbone(arch, levels=(args.level,), weights=weights)
        del weights  # loaded into the backbone
        backbone = backbone.to(torch.device(args.device)).eval()
        if args.image is not None:
            image = load_image(args.image)
            source = Path(args.image).name
        else:
            scenes = SyntheticScenes(max(args.index + 1, 1), size=(args.scene_size, args.scene_size), seed=args.seed,
                                     split="val")
            image = scenes[args.index].image
            source = f"synthetic val #{args.index}"
        config = (MultiCropConfig(n_global=2, n_local=0, global_size=args.size) if args.augment
                  else geometry_only_config(args.size))
        multicrop = MultiCrop(config)
        views = multicrop(image, torch.Generator().manual_seed(args.seed))
        with torch.no_grad():
            batch = torch.stack(views.crops[:2]).to(args.device)
            maps = backbone(batch).maps[0].cpu()
        weights_name = "random init" if args.weights == "random" else Path(args.weights).name
        label = f"{arch} / {weights_name} / {source}"
        summary = draw_match_figure(image, views, maps[0], maps[1], args.out, query_point=args.query,
                                    radius_cells=args.radius, label=label, mean=config.mean, std=config.std,
                                    dpi=args.dpi)
        print(f"figure: {summary.out_path}")
        print(f"match precision (view A -> B): {summary.precision:.4f} = {summary.num_correct}/{summary.num_valid} "
              f"valid cells, chance {summary.chance:.4f}, radius {args.radius:g} cell")
        if args.precision_images:
            dataset = SyntheticScenes(args.precision_images, size=(args.scene_size, args.scene_size),
                                      seed=args.seed, split="val")
            images = [dataset[i].image for i in range(len(dataset))]
            pooled = match_precision_over_dataset(backbone, images, multicrop, radius_cells=args.radius,
                                                  seed=args.seed, batch_size=8, level=0)
            print(f"dataset match precision over {len(images)} synthetic val images (both directions): "
                  f"{pooled.precision:.4f} = {pooled.num_correct}/{pooled.num_valid}, chance {pooled.chance:.4f}")
    except (ValueError, OSError, ImageLoadError, RuntimeError, IndexError) as error:
        return print_error(COMMAND, str(error).splitlines()[0] if str(error) else type(error).__name__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
