#!/usr/bin/env python
"""Print evaluation JSON files (from tools/eval_seg.py) side by side: ``python tools/compare_evals.py A.json B.json ...``.

One column per file (labelled ``--labels``, else by the run folder of its weights: ``runs/x``,
``runs/x/export/model.safetensors`` and ``runs/x/checkpoints/last.pt`` -> ``x``), rows: mIoU, pixel accuracy and
per-class IoU; the settings shared by all files are printed once below and the ones that differ are named. Files of
different protocols or datasets are refused (``--allow-different`` prints them anyway): their numbers are not
comparable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from densessl.cli.common import print_error

COMMAND = "densessl-compare-evals"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", help="JSON files written by tools/eval_seg.py --out")
    parser.add_argument("--labels", nargs="+", help="column labels (default: the run folder of each file's weights)")
    parser.add_argument("--allow-different", action="store_true",
                        help="print files of different protocols or datasets side by side anyway")
    args = parser.parse_args(argv)
    try:
        results = [json.loads(Path(f).read_text()) for f in args.files]
    except (OSError, json.JSONDecodeError) as error:
        return print_error(COMMAND, error)
    labels = args.labels or _labels(results, args.files)
    if len(labels) != len(results):
        return print_error(COMMAND, "give one label per file")
    kinds = [(r.get("protocol"), r.get("dataset")) for r in results]
    if len(set(kinds)) > 1 and not args.allow_different:
        listed = "; ".join(f"{f}: {p} on {d}" for f, (p, d) in zip(args.files, kinds))
        return print_error(COMMAND, f"the files are evaluations of different protocols or datasets ({listed}); "
                                    "compare files of one protocol, or pass --allow-different")
    width = max(12, *(len(label) + 2 for label in labels))
    header = f"{'':<22}" + "".join(f"{label:>{width}}" for label in labels)
    print(header)
    print("-" * len(header))

    def row(name: str, values: list) -> None:
        cells = "".join(f"{'-' if v is None else f'{v:.2f}':>{width}}" for v in values)
        print(f"{name:<22}{cells}")

    row("mIoU", [r["mIoU"] for r in results])
    row("pixel acc", [r["pixel_acc"] for r in results])
    for name in results[0]["per_class_iou"]:
        row(f"  IoU {name}", [r["per_class_iou"].get(name) for r in results])
    settings = [r.get("settings", {}) for r in results]
    shared = {k: v for k, v in settings[0].items() if all(s.get(k) == v for s in settings[1:])}
    differing = sorted({k for s in settings for k in s} - set(shared))
    print(f"protocol: {results[0].get('protocol')} on {results[0].get('dataset')}, "
          + ", ".join(f"{k}={v}" for k, v in shared.items()))
    if differing:
        print("settings that differ between columns: " + ", ".join(differing))
    return 0


def _labels(results: list[dict], files: list[str]) -> list[str]:
    """The run folder of each file's weights (``random`` for a random init); the file name where two would clash."""
    from densessl.weights import run_label

    labels = [run_label(str(result.get("weights", file))) for result, file in zip(results, files)]
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({Path(file).stem})" for label, file in zip(labels, files)]
    return labels


if __name__ == "__main__":
    sys.exit(main())
