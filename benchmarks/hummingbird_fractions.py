"""Hummingbird dense kNN at label fractions: the table of NeCo / DIP (Table 1 there: 1/1, 1/8, 1/64, 1/128), for any
backbone (ResNets and ConvNeXts included) on any dataset in densessl's folder layout.

Each backbone is scored by ``densessl.seg.evaluate`` with ``protocol: knn`` and the memory built from a seeded subset
of the train images (``knn.label_fraction``, ``knn.fraction_seed``; the val split is always whole); 1/1 needs one
seed, every smaller fraction runs ``--seeds``. ``--preset hummingbird`` takes the open Hummingbird implementation's
settings (``configs/eval/knn_hummingbird.yaml``: k 30, temperature 0.02, rare-class memory sampling, one augmented
memory pass, 504 px, 10,240,000 memory patches); ``--preset default`` densessl's kNN defaults; ``--set KEY=VALUE``
overrides either (e.g. ``features.input_size=224 knn.memory_size=1024000`` for a CPU). Every evaluation is cached as
JSON in ``--work-dir`` (rerunning reuses them), the table prints mean ± sample std over seeds, and
``results/hummingbird_<data>.json`` keeps every run.

Usage::

    .venv/bin/python benchmarks/hummingbird_fractions.py --data-root ../data/stanford_background \\
        --weights random runs/vicregl_s0 --arch resnet18 --seeds 0 1 2 --set features.input_size=224
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _common import RESULTS, machine_info  # noqa: E402

from densessl.weights import run_label  # noqa: E402

PRESETS = {"hummingbird": ROOT / "configs" / "eval" / "knn_hummingbird.yaml", "default": None}


def evaluate_cached(weights: str, arch: str | None, data_root: Path, fraction: int, seed: int, preset: Path | None,
                    settings: list[str], out: Path) -> dict:
    """The kNN evaluation of one (weights, fraction, seed), from ``out`` when it holds one."""
    if out.is_file():
        return json.loads(out.read_text())
    from densessl.config_io import load_config
    from densessl.seg.config import EvalSegConfig
    from densessl.seg.evaluate import evaluate

    overrides = [f"weights={weights}", "dataset=folder", f"data_root={data_root}", "protocol=knn", f"seed={seed}",
                 f"knn.label_fraction={1.0 / fraction}", f"knn.fraction_seed={seed}", "features.progress=false",
                 *([f"arch={arch}"] if arch else []), *settings]
    record = evaluate(load_config(EvalSegConfig, str(preset) if preset else None, overrides))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="a dataset in the folder layout")
    parser.add_argument("--weights", nargs="+", required=True, help="run folders, weights files or 'random'")
    parser.add_argument("--arch", help="timm architecture (needed for 'random' and files that state none)")
    parser.add_argument("--fractions", nargs="+", type=int, default=[1, 8, 64, 128], help="denominators: 1/N")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="subset seeds (1/1 uses the first)")
    parser.add_argument("--preset", choices=list(PRESETS), default="hummingbird")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="eval-seg config overrides")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: benchmarks/runs/hummingbird_<data>")
    parser.add_argument("--out", type=Path, default=None, help="default: results/hummingbird_<data>.json")
    args = parser.parse_args(argv)

    data = args.data_root.resolve().name
    work = args.work_dir or HERE / "runs" / f"hummingbird_{data}"
    rows: dict[str, dict[int, list[float]]] = {}
    runs = []
    for weights in args.weights:
        name = run_label(weights)
        for fraction in args.fractions:
            for seed in (args.seeds[:1] if fraction == 1 else args.seeds):
                out = work / name / f"f{fraction}_s{seed}.json"
                record = evaluate_cached(weights, args.arch, args.data_root, fraction, seed, PRESETS[args.preset],
                                         args.set, out)
                miou = record["mIoU"]
                rows.setdefault(name, {}).setdefault(fraction, []).append(miou)
                runs.append({"weights": weights, "fraction": f"1/{fraction}", "seed": seed, "miou": miou,
                             "memory_train_images": record["settings"]["memory_train_images"]})
                print(f"{name:24s} 1/{fraction:<4d} seed {seed}: mIoU {miou:.2f}", flush=True)

    header = f"{'backbone':24s}" + "".join(f"{'1/' + str(f):>16s}" for f in args.fractions)
    lines = [header]
    for name, by_fraction in rows.items():
        cells = []
        for fraction in args.fractions:
            values = by_fraction[fraction]
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.2f}{spread}".rjust(16))
        lines.append(f"{name:24s}" + "".join(cells))
    print("\n".join(lines))
    out = args.out or RESULTS / f"hummingbird_{data}.json"
    out.write_text(json.dumps({"machine": machine_info(), "data": data, "preset": args.preset, "set": args.set,
                               "runs": runs, "table": lines}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
