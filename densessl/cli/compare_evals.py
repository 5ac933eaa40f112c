#!/usr/bin/env python
"""Print evaluation JSON files (from tools/eval_seg.py) side by side: ``python tools/compare_evals.py A.json B.json ...``.

One column per file (labelled ``--labels`` or by weights), rows: mIoU, pixel accuracy and per-class IoU; the settings
shared by all files are printed once below, so a comparison is only made under one pinned protocol.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", help="JSON files written by tools/eval_seg.py --out")
    parser.add_argument("--labels", nargs="+", help="column labels (default: the weights of each file)")
    args = parser.parse_args(argv)
    try:
        results = [json.loads(Path(f).read_text()) for f in args.files]
    except (OSError, json.JSONDecodeError) as error:
        print(f"compare_evals.py: error: {error}", file=sys.stderr)
        return 2
    labels = args.labels or [Path(str(r.get("weights", f))).stem for r, f in zip(results, args.files)]
    if len(labels) != len(results):
        print("compare_evals.py: error: give one label per file", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
