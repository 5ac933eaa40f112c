"""Collapse monitors of pretraining checkpoints: are the dense features (and the objective's heads) spread or collapsed?

For each run directory (``checkpoints/last.pt`` + ``config.yaml``, as ``densessl-train`` writes them), and for the
random initialisation of the first run's recipe (``--random``), encode the first ``--images`` val photos of a scene
set (resized to ``--size`` x ``--size * 4 / 3``, ImageNet normalisation; backbones in eval mode, as a frozen
evaluation sees them, heads with BatchNorm over the batch, as the loss sees them) and report, for the student
backbone's last stage and for each (student, teacher) head pair the objective moves by EMA (``ema_pairs()``: PixPro's
pixel projector, DenseCL's neck, whose dense output is used; the teacher head reads the teacher backbone):

* ``mean_cosine``: the mean cosine between two cells drawn from all images, ``‖mean_i u_i‖²`` over the
  L2-normalized cells ``u_i`` (self-pairs included): near ``1 / N`` for spread features, 1 when every cell of every
  image points one way (PixPro's ``target_cosine`` during training is the same number over a training batch);
* ``rankme``: the effective rank of the cells (``densessl.diagnostics.rankme``) and the width it is out of.

A loss at its floor with ``mean_cosine`` near 1 in a head means the head solved the task by collapsing, not by
matching. Usage::

    .venv/bin/python benchmarks/collapse.py --data-root DATA/stanford_background --random \\
        --runs benchmarks/runs/sb_pixpro_pv_adamw/pixpro_s0 --out benchmarks/results/collapse_sb_pixpro.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import Tensor

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import machine_info  # noqa: E402

from densessl.diagnostics import rankme  # noqa: E402
from densessl.train.config import load_config  # noqa: E402
from densessl.train.pretrain import build_pretrainer  # noqa: E402


def load_images(data_root: Path, count: int, size: int) -> Tensor:
    """The first ``count`` val photos (sorted names) as a normalized ``(count, 3, size, size * 4 // 3)`` batch."""
    from densessl.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    files = sorted((data_root / "images" / "val").glob("*.jpg"))[:count]
    if not files:
        raise SystemExit(f"error: collapse.py: no .jpg under {data_root / 'images' / 'val'}; pass --data-root of a "
                         f"scene set (images/val/*.jpg)")
    width = size * 4 // 3
    batch = torch.stack([torch.frombuffer(bytearray(Image.open(f).convert("RGB").resize((width, size)).tobytes()),
                                          dtype=torch.uint8).reshape(size, width, 3) for f in files])
    batch = rearrange(batch, "b h w c -> b c h w").float() / 255
    return (batch - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def cells(output: object) -> Tensor:
    """A head's dense output as ``(N, D)`` cells: a ``(B, D, h, w)`` map, or an object with ``.dense`` ``(B, n, D)``."""
    if isinstance(output, Tensor) and output.dim() == 4:
        return rearrange(output, "b d h w -> (b h w) d")
    dense = getattr(output, "dense", None)
    if isinstance(dense, Tensor) and dense.dim() == 3:
        return rearrange(dense, "b n d -> (b n) d")
    raise TypeError(f"cannot read dense cells from a head output of type {type(output).__name__}")


def monitors(x: Tensor) -> dict[str, float]:
    """``mean_cosine`` and ``rankme`` (with ``dim``) of ``(N, D)`` cells."""
    unit = F.normalize(x.float(), dim=1)
    return {"mean_cosine": float(unit.mean(dim=0).pow(2).sum()), "rankme": rankme(x), "dim": int(x.shape[1])}


@torch.no_grad()
def measure(run: Path | None, recipe: Path, images: Tensor) -> dict[str, dict[str, float]]:
    """Monitors of one run (``None``: the recipe's random initialisation at its seed)."""
    cfg = load_config(recipe)
    torch.manual_seed(cfg.train.seed)
    pretrainer = build_pretrainer(cfg)
    if run is not None:
        state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]
        pretrainer.load_state_dict(state)
    pretrainer.eval()  # backbones as a frozen evaluation sees them
    maps = pretrainer.backbone(images).maps[-1]
    teacher_maps = maps if pretrainer.teacher_backbone is None else pretrainer.teacher_backbone(images).maps[-1]
    out = {"backbone": monitors(rearrange(maps, "b c h w -> (b h w) c"))}
    names = {id(module): name for name, module in pretrainer.objective.named_children()}
    for student, teacher in pretrainer.objective.ema_pairs():
        student.train(), teacher.train()  # heads as the loss sees them: BatchNorm over the batch
        out[names[id(student)]] = monitors(cells(student(maps)))
        out[names[id(teacher)]] = monitors(cells(teacher(teacher_maps)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="a scene set (images/val/*.jpg)")
    parser.add_argument("--runs", nargs="+", type=Path, default=[],
                        help="run directories (checkpoints/last.pt and config.yaml)")
    parser.add_argument("--random", action="store_true",
                        help="also the random initialisation of the first run's recipe")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=160, help="image height (width = 4/3 of it)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    for run in args.runs:
        for name in ("config.yaml", "checkpoints/last.pt"):
            if not (run / name).is_file():
                parser.error(f"--runs {run}: no {name} (a densessl-train run directory has config.yaml and "
                             f"checkpoints/last.pt)")
    if not args.runs:
        parser.error("--runs needs at least one run directory")
    torch.set_num_threads(2)
    images = load_images(args.data_root, args.images, args.size)
    rows = {}
    if args.random:
        rows["random init"] = measure(None, args.runs[0] / "config.yaml", images)
    for run in args.runs:  # named by the last two path parts (work dir / variant_seed), as quality.py lays runs out
        rows[f"{run.resolve().parent.name}/{run.resolve().name}"] = measure(run, run / "config.yaml", images)
    print("| run | network | mean cosine between cells | RankMe |\n|---|---|---|---|")
    for run, parts in rows.items():
        for network, m in parts.items():
            print(f"| {run} | {network} | {m['mean_cosine']:.3f} | {m['rankme']:.1f} / {m['dim']} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine_info(), "settings": {
            "data_root": str(args.data_root), "images": len(images), "size": args.size}, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
