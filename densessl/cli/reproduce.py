#!/usr/bin/env python
"""Reproduce a published number: run a protocol card with your weights and compare with what was published.

``densessl-reproduce CARD --weights FILE|random --data-root DIR [--arch NAME] [key.sub=value ...] [--smoke]
[--out result.json] [--output-dir DIR] [--resume [auto]]``; ``densessl-reproduce --list`` lists the shipped cards.

CARD is a card file, a shipped card (``protocols/vicregl_r50_voc_linear.yaml``) or a shipped card's name
(``vicregl_r50_voc_linear``); ``densessl.protocols`` describes the schema. The card's protocol runs through the
existing tools: seg cards build a ``densessl-eval-seg`` config (``densessl.seg.config.EvalSegConfig``) and run it
with ``densessl.seg.evaluate.evaluate``; depth cards run the linear depth probe of ``densessl-eval-depth``
(``densessl.depth.probe.run_depth_probe``) on an RGB-D folder; detection cards build a ``DetConfig`` and train with
``densessl.det.finetune.finetune`` in ``--output-dir`` (default ``runs/reproduce/<card name>``; ``--resume``
continues it; under ``torchrun`` it runs distributed like ``densessl-finetune-det``).

Printed at the end (and written to ``--out`` as JSON): published vs measured values, the difference
(measured - published), the source of the published value and whether it was verified, every protocol setting the
run used, and the known differences between densessl's implementation and the published protocol. The run is marked
not comparable when it is a smoke run, uses random weights or another architecture than the card's, or when
overrides change the protocol (overrides of devices, threads, workers and logging do not).

``--weights random`` builds the card's architecture (or ``--arch``) with random weights: the baseline. A weights file
whose architecture differs from the card's is refused unless ``--arch`` names it. ``--smoke`` swaps in the embedded
synthetic data and tiny sizes (8 train / 4 val images at 64 px, 1 epoch, a small kNN memory; depth: 8 / 4 generated
RGB-D scenes; detection: 2 iterations at 32 px) so that any card runs on a CPU in seconds: a check that the protocol
runs, never a comparable number.

Exit codes: 0 done, 2 bad arguments, card, weights, data or run directory (one ``error:`` line), 3 non-finite loss,
130 stopped by a signal (detection; continue with ``--resume``).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from densessl.cli.common import add_resume_argument, explicit_resume, print_error

COMMAND = "densessl-reproduce"

if TYPE_CHECKING:  # the heavy imports (torch) wait until they are needed, so that --help is quick
    from densessl.protocols import ProtocolCard

EXIT_OK, EXIT_USAGE, EXIT_NON_FINITE, EXIT_STOPPED = 0, 2, 3, 130
SMOKE_BANNER = ("SMOKE RUN: embedded synthetic data and tiny sizes; the measured number is NOT comparable with the "
                "published one")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="densessl-reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("card", nargs="?", help="protocol card: a file, protocols/<name>.yaml or a shipped card's name")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="card overrides, e.g. seg.features.device=cuda:1 detection.optim.accumulate=2")
    parser.add_argument("--weights", help="backbone weights (a run or export folder, a weights file, a training "
                                          "checkpoint, a timm state dict) or 'random' (required)")
    parser.add_argument("--data-root", help="dataset folder in the card's dataset layout (required unless --smoke)")
    parser.add_argument("--arch", help="timm architecture to run instead of the card's (not comparable then)")
    parser.add_argument("--smoke", action="store_true",
                        help="embedded synthetic data and tiny sizes: checks that the card runs, in seconds on a CPU")
    parser.add_argument("--out", help="write the comparison and the run's results as JSON to this file")
    parser.add_argument("--output-dir", help="detection run directory (default runs/reproduce/<card name>; "
                                             "a temporary folder for --smoke)")
    add_resume_argument(parser, "detection: continue the run in --output-dir")
    parser.add_argument("--list", action="store_true", help="list the shipped cards and exit")
    parser.add_argument("--print-card", action="store_true",
                        help="print the resolved card (with --smoke and overrides applied) as YAML and exit")
    return parser


class _UsageError(ValueError):
    """A bad combination of arguments (reported as one ``error:`` line, exit 2)."""


# --------------------------------------------------------------------------- #
# The comparison
# --------------------------------------------------------------------------- #


def _number(value: float | None, metric: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if metric in ("rmse", "abs_rel") else f"{value:.2f}"


def compare(published: dict[str, float | None], measured: dict[str, float | None]) -> list[dict[str, Any]]:
    """One row per published metric, ``{"metric", "published", "measured", "difference"}`` (measured - published),
    then rows for the headline metrics measured but not published (``box_AP``, ``mask_AP``; depth: ``rmse``,
    ``abs_rel``, ``delta1``)."""
    rows = []
    unpublished = {metric: None for metric in ("mIoU", "box_AP", "mask_AP", "rmse", "abs_rel", "delta1")
                   if metric in measured and metric not in published}
    for metric, value in {**published, **unpublished}.items():
        got = measured.get(metric)
        if got is not None and isinstance(got, float) and math.isnan(got):
            got = None
        difference = None if value is None or got is None else round(got - value, 4)
        rows.append({"metric": metric, "published": value, "measured": got, "difference": difference})
    return rows


def format_report(record: dict[str, Any]) -> str:
    """The printed report: banner, published vs measured table, source, every protocol setting, differences."""
    lines = []
    if record["smoke"]:
        lines += ["=" * len(SMOKE_BANNER), SMOKE_BANNER, "=" * len(SMOKE_BANNER)]
    published = record["published"]
    lines.append(f"card {record['card']} ({record['task']}): {record['description']}")
    lines.append(f"published model: {published['model']}; measured: {record['arch']} with {record['weights']} "
                 f"({record['weights_source']})")
    width = max(len("metric"), *(len(row["metric"]) for row in record["comparison"]))
    lines.append(f"{'metric':<{width}}  {'published':>10}  {'measured':>10}  {'difference':>10}")
    for row in record["comparison"]:
        metric = row["metric"]
        difference = "n/a" if row["difference"] is None else "+" * (row["difference"] >= 0) + _number(
            row["difference"], metric)
        lines.append(f"{metric:<{width}}  {_number(row['published'], metric):>10}  "
                     f"{_number(row['measured'], metric):>10}  {difference:>10}")
    verified = "verified" if published["verified"] else "NOT verified"
    lines.append(f"source ({verified}): {published['source']}")
    if published.get("note"):
        lines.append(f"note: {published['note']}")
    if record["comparable"]:
        lines.append("comparable: yes (the card's protocol, architecture and dataset)")
    else:
        lines.append("comparable: NO: " + "; ".join(record["not_comparable"]))
    dataset = record["dataset"]
    lines.append(f"dataset: {dataset['name']} (train: {dataset['train_split']}; val: {dataset['val_split']})"
                 + (" -- replaced by the synthetic scenes in this smoke run" if record["smoke"] else ""))
    lines.append("protocol settings:")
    lines += [f"  {key} = {value}" for key, value in record["settings"].items()]
    if record["differences"]:
        lines.append("known differences from the published protocol:")
        lines += [f"  - {text}" for text in record["differences"]]
    if record["smoke"]:
        lines.append(SMOKE_BANNER)
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# Running a card
# --------------------------------------------------------------------------- #


def _run_arch(card: ProtocolCard, weights: str, arch: str | None) -> str:
    """The architecture to run: ``--arch``, else the card's; a weights file for another architecture is refused."""
    if arch or weights == "random":
        return arch or card.arch
    from densessl.weights import read_backbone_weights

    if not Path(weights).exists():
        raise FileNotFoundError(f"weights file not found: {weights!r} (use --weights random for a random init)")
    stated = read_backbone_weights(weights).arch
    if stated is not None and stated.split(".", 1)[0] != card.arch.split(".", 1)[0]:
        raise _UsageError(f"weights file {weights!r} is for {stated}, but card {card.name} is for {card.arch}; pass "
                          f"--arch {stated} to run the protocol on it anyway (not comparable with the published "
                          "number then)")
    return card.arch


def _run_seg(card: ProtocolCard, args: argparse.Namespace, arch: str) -> tuple[dict[str, Any], Any]:
    from densessl.protocols import build_eval_seg_config
    from densessl.seg.evaluate import evaluate

    cfg = build_eval_seg_config(card, weights=args.weights, data_root=args.data_root, arch=arch, smoke=args.smoke)
    record = evaluate(cfg)
    return record, cfg


def _run_depth(card: ProtocolCard, args: argparse.Namespace, arch: str) -> tuple[dict[str, Any], Any]:
    """The linear depth probe of ``densessl-eval-depth`` on the card's RGB-D folder (generated scenes for --smoke)."""
    from densessl.depth.data import DepthFolder, write_synthetic_rgbd
    from densessl.depth.probe import evaluate_depth
    from densessl.dist import resolve_device
    from densessl.protocols import DEPTH_SCALE, DEPTH_SMOKE_IMAGES, DEPTH_SMOKE_SIZE, build_depth_config

    cfg = build_depth_config(card, device=str(resolve_device(card.depth.device, "depth.device")))
    with tempfile.TemporaryDirectory(prefix="densessl-reproduce-") as scratch:
        root = (write_synthetic_rgbd(Path(scratch), DEPTH_SMOKE_IMAGES, DEPTH_SMOKE_SIZE) if args.smoke
                else Path(args.data_root))
        scale = 1000.0 if args.smoke else DEPTH_SCALE[card.dataset.name]  # generated scenes: millimetres
        train_ds, val_ds = DepthFolder(root, "train", scale), DepthFolder(root, "val", scale)
        result = evaluate_depth(args.weights, arch, train_ds, val_ds, cfg)
    m = result["metrics"]
    print(f"linear depth probe: {arch} on {'generated RGB-D scenes' if args.smoke else args.data_root}, "
          f"{len(train_ds)} train / {len(val_ds)} val images: RMSE {m['rmse']:.3f}, AbsRel {m['abs_rel']:.3f}, "
          f"delta1 {100 * m['delta1']:.1f}")
    result["dataset"] = "synthetic" if args.smoke else card.dataset.name
    return result, cfg


def _run_detection(card: ProtocolCard, args: argparse.Namespace, arch: str) -> tuple[dict[str, Any] | None, Any]:
    """Train and evaluate; ``None`` when a signal stopped the run (checkpoint saved)."""
    import json

    import torch

    from densessl.det.finetune import finetune
    from densessl.protocols import build_det_config

    cfg = build_det_config(card, weights=args.weights, data_root=args.data_root, arch=arch, smoke=args.smoke)
    threads = torch.get_num_threads()
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    with tempfile.TemporaryDirectory(prefix="densessl-reproduce-") as scratch:
        if args.output_dir:
            run_dir = Path(args.output_dir)
        elif args.smoke:
            run_dir = Path(scratch) / "run"
        else:
            run_dir = Path("runs") / "reproduce" / card.name
        try:
            result = finetune(cfg, run_dir, resume=args.resume)
        finally:
            torch.set_num_threads(threads)  # the process group is left by engine.finish_run
        if result.interrupted:
            data = f" --data-root {args.data_root}" if args.data_root else ""
            print(f"stopped at iteration {result.iteration}; continue with: densessl-reproduce {args.card} --weights "
                  f"{args.weights}{data}{' --smoke' if args.smoke else ''} --output-dir {run_dir} --resume",
                  file=sys.stderr)
            return None, cfg
        if result.evaluation is None or result.results_path is None:  # ranks other than 0
            return {}, cfg
        print(f"{cfg.model.kind} {cfg.model.arch} on {cfg.data.dataset}, {result.iteration} iterations, "
              f"{result.evaluation.num_images} val images")
        print(result.evaluation.format_table())
        record = json.loads(Path(result.results_path).read_text(encoding="utf-8"))
        record.pop("settings", None)  # the report lists them
        record["run_dir"] = None if (args.smoke and not args.output_dir) else str(run_dir)
        return record, cfg


def _protocol_changes(base: ProtocolCard, final: ProtocolCard) -> dict[str, list[Any]]:
    """Protocol settings the overrides changed (run-only keys such as devices and threads left out)."""
    from densessl.protocols import RUN_ONLY_KEYS, protocol_settings

    before, after = protocol_settings(base), protocol_settings(final)
    return {key: [before.get(key), value] for key, value in after.items()
            if before.get(key) != value and key not in RUN_ONLY_KEYS}


def reproduce(card: ProtocolCard, args: argparse.Namespace, *, card_file: str,
              protocol_changes: dict[str, list[Any]]) -> dict[str, Any] | None:
    """Run ``card`` as ``args`` say; returns the JSON record (``None``: stopped by a signal; ``{}``: not rank 0)."""
    from densessl.protocols import flatten
    from densessl.schema import to_dict

    arch = _run_arch(card, args.weights, args.arch)
    start = time.perf_counter()
    if card.is_seg:
        result, cfg = _run_seg(card, args, arch)
        measured: dict[str, float | None] = {"mIoU": result.get("mIoU")}
        weights_source = result.get("weights_source", "")
        arch = result.get("arch", arch)
        section = "seg"
    elif card.section == "depth":
        result, cfg = _run_depth(card, args, arch)
        metrics = result["metrics"]
        measured = {"rmse": metrics["rmse"], "abs_rel": metrics["abs_rel"], "delta1": 100 * metrics["delta1"]}
        weights_source = result["weights_source"]
        section = "depth"
    else:
        result, cfg = _run_detection(card, args, arch)
        if not result:
            return result
        measured = {key: value for key, value in result.items() if key.startswith(("box_", "mask_"))}
        weights_source = "random init" if args.weights == "random" else "weights file"
        section = "detection"
    wall = time.perf_counter() - start
    not_comparable = []
    if args.smoke:
        not_comparable.append("smoke run (synthetic data, tiny sizes)")
    if args.weights == "random":
        not_comparable.append("random weights (the baseline), not the published model")
    if arch.split(".", 1)[0] != card.arch.split(".", 1)[0]:
        not_comparable.append(f"architecture {arch}, the card's is {card.arch}")
    if protocol_changes:
        not_comparable.append("overrides change the protocol: " + ", ".join(protocol_changes))
    if card.published.value is None:
        not_comparable.append("the published value is not confirmed (published.value is null)")
    published = to_dict(card.published)
    return {
        "card": card.name,
        "card_file": card_file,
        "task": card.task,
        "description": card.description,
        "smoke": bool(args.smoke),
        "comparable": not not_comparable,
        "not_comparable": not_comparable,
        "published": published,
        "measured": measured,
        "comparison": compare(card.published.values(), measured),
        "weights": args.weights,
        "weights_source": weights_source,
        "arch": arch,
        "card_arch": card.arch,
        "dataset": to_dict(card.dataset),
        "protocol_changes": protocol_changes,
        "settings": _settings(flatten(to_dict(cfg), section), card, smoke=bool(args.smoke)),
        "differences": list(card.differences),
        "result": result,
        "wall_seconds": round(wall, 2),
    }


def _settings(settings: dict[str, Any], card: ProtocolCard, *, smoke: bool) -> dict[str, Any]:
    """The settings that define this run: the other seg protocol's group, the synthetic sizes outside smoke runs and
    the unused ``out`` left out."""
    skip = ["seg.out"]
    if card.task == "seg_linear":
        skip.append("seg.knn.")
    elif card.task == "seg_knn":
        skip.append("seg.linear.")
    if not smoke:
        skip += ["seg.synthetic.", "detection.data.synthetic_"]
    return {key: value for key, value in settings.items() if not key.startswith(tuple(skip))}


def _list_cards() -> None:
    from densessl.protocols import load_card, shipped_cards

    for path in shipped_cards():
        card = load_card(path)
        value = "null" if card.published.value is None else str(card.published.value)
        verified = "verified" if card.published.verified else "NOT verified"
        print(f"{card.name}: {card.task}, {card.published.model}: {card.published.metric} {value} ({verified}); "
              f"{card.published.source}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_intermixed_args(explicit_resume(argv))
    from densessl.atomic import DiskFullError, atomic_write_json
    from densessl.cli.common import check_output_path, print_config, setup_logging
    from densessl.data.images import ImageLoadError
    from densessl.protocols import apply_overrides, apply_smoke, load_card, resolve_card_path
    from densessl.schema import ConfigError
    from densessl.train.engine import NonFiniteLossError

    rank = setup_logging()
    try:
        if args.list:
            _list_cards()
            return EXIT_OK
        if not args.card:
            raise _UsageError("CARD is required (a card file or a shipped card's name; --list shows them)")
        card_file = resolve_card_path(args.card)
        if not Path(card_file).is_file():
            raise _UsageError(f"card {args.card!r} not found: no such file and no shipped card of that name "
                              "(densessl-reproduce --list shows them)")
        base = load_card(card_file)
        card = apply_smoke(base) if args.smoke else base
        card = apply_overrides(card, args.overrides)
        if args.print_card:
            print_config(card)
            return EXIT_OK
        if not args.weights:
            raise _UsageError("--weights is required: a weights file, or 'random' for the random-init baseline")
        if not args.smoke and not args.data_root:
            raise _UsageError(f"--data-root is required: the {card.dataset.name} folder the card's protocol reads "
                              "(--smoke runs on the embedded synthetic data instead)")
        if args.out:
            check_output_path(args.out)  # before the run
        changes = _protocol_changes(base, apply_overrides(base, args.overrides))
        record = reproduce(card, args, card_file=card_file, protocol_changes=changes)
        if record is None:
            return EXIT_STOPPED
        if rank == 0 and record:
            print(format_report(record))
            if args.out:
                atomic_write_json(args.out, record)
                print(f"wrote {args.out}")
    except ConfigError as error:
        return print_error(COMMAND, error)
    except NonFiniteLossError as error:
        print_error(COMMAND, error)
        return EXIT_NON_FINITE
    except (OSError, ValueError, ImageLoadError, DiskFullError) as error:
        return print_error(COMMAND, error)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
