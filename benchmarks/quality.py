"""Quality table at small scale: the VICRegL paper's central ablation on the embedded synthetic data.

Every variant is pretrained with the **same CPU budget** (same backbone, batch, epochs, image stream and seed) from
the ResNet-18 synthetic recipe, then its frozen backbone is scored three ways on the synthetic segmentation split:

* ``linear``: linear-probe mIoU (``tools/eval_seg.py --protocol linear``, the demo's settings),
* ``knn``: dense kNN retrieval mIoU (``--protocol knn``),
* ``match``: label-free learned-match precision (``densessl.diagnostics.match_precision_over_dataset``) between two
  global views of ``--match-images`` val images, as ``tools/visualize_matches.py --precision-images N
  --scene-size 128`` computes it (no photometric augmentation, 128 px scenes as in training): the fraction of
  nearest-neighbour feature matches that land within one cell of the geometrically corresponding cell, in percent.

Variants (``--variants``; all VICRegL ones use ``configs/pretrain/vicregl_resnet18_synthetic.yaml``):

==============  ====================================================================================
random          no pretraining: the random initialisation of the same seed
vicreg          VICRegL with alpha = 1 (global VICReg criterion only; the paper's alpha = 1 row)
vicregl_a0.9    alpha = 0.9
vicregl_a0.75   alpha = 0.75 (the paper's default)
geometric       alpha = 0.75, local term with the location (geometric) matching only
learned         alpha = 0.75, local term with the feature (learned) matching only
densecl         configs/pretrain/densecl_resnet18_synthetic.yaml, same epochs
pixpro          configs/pretrain/pixpro_resnet18_synthetic.yaml, same epochs
==============  ====================================================================================

Each (variant, seed) pretraining runs ``tools/train.py`` in a subprocess into ``--work-dir/<variant>_s<seed>``; a
finished run (``backbone.pt`` present) is reused and an interrupted one resumed, so the script can be stopped and
restarted. Evaluations are cached as JSON next to the run. The table shows mean ± sample standard deviation over
seeds and the pretraining wall time.

Usage::

    .venv/bin/python benchmarks/quality.py                          # all variants, seeds 0 1, recipe epochs
    .venv/bin/python benchmarks/quality.py --seeds 0 1 2 --epochs 6
    .venv/bin/python benchmarks/quality.py --variants random vicregl_a0.75 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _common import RESULTS, machine_info  # noqa: E402

RECIPE = "configs/pretrain/vicregl_resnet18_synthetic.yaml"
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "random": ("", []),
    "vicreg": (RECIPE, ["vicregl.alpha=1.0"]),
    "vicregl_a0.9": (RECIPE, ["vicregl.alpha=0.9"]),
    "vicregl_a0.75": (RECIPE, ["vicregl.alpha=0.75"]),
    "geometric": (RECIPE, ["vicregl.alpha=0.75", "vicregl.local_matching=location"]),
    "learned": (RECIPE, ["vicregl.alpha=0.75", "vicregl.local_matching=feature"]),
    "densecl": ("configs/pretrain/densecl_resnet18_synthetic.yaml", []),
    "pixpro": ("configs/pretrain/pixpro_resnet18_synthetic.yaml", []),
}
ARCH = "resnet18"


def run(cmd: list[str], log: Path, threads: int) -> None:
    """Run ``cmd`` from the repository root, output to ``log``; raise with the log's tail on failure."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with log.open("w") as handle:
        code = subprocess.call(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"command failed ({code}): {' '.join(cmd)}\n--- {log} (tail) ---\n{tail}")


def pretrain(variant: str, seed: int, run_dir: Path, epochs: int | None, threads: int) -> float:
    """Pretrain (or reuse / resume) one variant; returns the wall time of the pretraining in seconds."""
    config, overrides = VARIANTS[variant]
    timing = run_dir / "pretrain_time.json"
    if (run_dir / "backbone.pt").exists() and timing.exists():
        return json.loads(timing.read_text())["seconds"]
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "tools/train.py", config, "--output-dir", str(run_dir), f"train.seed={seed}",
           "train.progress=false", "train.diagnostics_every=0", "train.tensorboard=false", *overrides]
    if epochs is not None:
        cmd.append(f"train.epochs={epochs}")
    if (run_dir / "checkpoints" / "last.pt").exists():
        cmd.append("--resume")
    start = time.perf_counter()
    run(cmd, run_dir / "pretrain.log", threads)
    seconds = time.perf_counter() - start
    timing.write_text(json.dumps({"seconds": seconds, "resumed": "--resume" in cmd}))
    return seconds


def evaluate(weights: str, seed: int, protocol: str, out: Path, input_size: int, threads: int) -> float:
    """mIoU (percent) of one protocol, cached in ``out``."""
    if not out.exists():
        cmd = [sys.executable, "tools/eval_seg.py", "--weights", weights, "--arch", ARCH, "--dataset", "synthetic",
               "--protocol", protocol, "--input-size", str(input_size), "--seed", str(seed), "--no-progress",
               "--num-threads", str(threads), "--out", str(out)]
        run(cmd, out.with_suffix(".log"), threads)
    return float(json.loads(out.read_text())["mIoU"])


def match_score(weights: str | None, seed: int, images: int, size: int, out: Path) -> float:
    """Learned-match precision (percent) of the backbone's last map, cached in ``out``."""
    if out.exists():
        return float(json.loads(out.read_text())["precision"])
    import torch

    from densessl.backbones import DenseBackbone
    from densessl.data.synthetic import SyntheticScenes
    from densessl.data.transforms import MultiCrop, MultiCropConfig
    from densessl.diagnostics import match_precision_over_dataset

    torch.manual_seed(seed)  # the random init of this seed (as tools/eval_seg.py --weights random --seed SEED)
    backbone = DenseBackbone(ARCH, weights=weights)
    # Same protocol as tools/visualize_matches.py --precision-images N --scene-size 128: synthetic val scenes of
    # seed 0, two global views per image without photometric augmentation, view seed 0 (the same views for every
    # variant and seed).
    scenes = SyntheticScenes(images, size=(128, 128), seed=0, split="val")
    pil = [scenes[i].image for i in range(len(scenes))]
    config = MultiCropConfig(n_global=2, global_size=size, n_local=0)
    config.jitter_p, config.grayscale_p, config.blur_p, config.solarize_p = 0.0, 0.0, (0.0, 0.0), (0.0, 0.0)
    result = match_precision_over_dataset(backbone, pil, MultiCrop(config), seed=0, batch_size=8)
    out.write_text(json.dumps({"precision": 100 * result.precision, "chance": 100 * result.chance,
                               "num_valid": result.num_valid}))
    return 100 * result.precision


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default: the recipe's)")
    parser.add_argument("--input-size", type=int, default=224, help="segmentation eval input size")
    parser.add_argument("--match-images", type=int, default=64)
    parser.add_argument("--match-size", type=int, default=224, help="global view size for the match precision")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=HERE / "runs" / "quality")
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    info = machine_info()
    rows: dict[str, dict[str, list[float]]] = {}
    for variant in args.variants:
        for seed in args.seeds:
            run_dir = args.work_dir / f"{variant}_s{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            seconds = 0.0
            weights = None
            if variant != "random":
                seconds = pretrain(variant, seed, run_dir, args.epochs, args.threads)
                weights = str(run_dir / "backbone.pt")
            scores = {
                "linear": evaluate(weights or "random", seed, "linear", run_dir / "linear.json", args.input_size,
                                   args.threads),
                "knn": evaluate(weights or "random", seed, "knn", run_dir / "knn.json", args.input_size, args.threads),
                "match": match_score(weights, seed, args.match_images, args.match_size, run_dir / "match.json"),
                "pretrain_s": seconds,
            }
            print(f"{variant:14s} seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), flush=True)
            for key, value in scores.items():
                rows.setdefault(variant, {}).setdefault(key, []).append(value)

    header = f"{'variant':14s} | {'linear mIoU':>14s} | {'kNN mIoU':>14s} | {'match prec.':>14s} | pretrain s"
    lines = [header, "-" * len(header)]
    for variant, scores in rows.items():
        lines.append(f"{variant:14s} | {mean_std(scores['linear']):>14s} | {mean_std(scores['knn']):>14s} | "
                     f"{mean_std(scores['match']):>14s} | {statistics.mean(scores['pretrain_s']):.0f}")
    print("\n".join(lines))
    info["loadavg_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": info,
        "settings": {"seeds": args.seeds, "epochs": args.epochs, "input_size": args.input_size,
                     "match_images": args.match_images, "match_size": args.match_size, "threads": args.threads,
                     "variants": {v: VARIANTS[v] for v in args.variants}},
        "results": rows,
    }, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
