"""Evaluate a frozen backbone on DAVIS video object segmentation by label propagation (the DINO protocol).

``densessl-eval-video --weights PATH|random [--arch NAME] --data-root DIR [--year 2016|2017] [--sequences NAME ...]
[--out FILE.json] [--save-masks DIR] [options]`` (or ``python tools/eval_video.py ...`` from a checkout)

The first frame's annotation of each sequence is propagated to the following frames through the backbone's dense
features (``densessl.video.propagation``: affinities to the first frame and the last ``--n-last-frames`` frames,
restricted to a ``--neighborhood``, top ``--topk``, ``--temperature``), and the predictions are scored with the
official DAVIS measures (``densessl.video.metrics``): J (region IoU), F (contour accuracy) and J&F, over every frame but
the first and the last, averaged over all objects of all sequences.

``--data-root`` is a DAVIS folder: ``JPEGImages/480p/<seq>/*.jpg``, ``Annotations/480p/<seq>/*.png`` and
``ImageSets/<year>/val.txt`` (``densessl.video.davis``). ``--year 2016`` reads the masks as binary (one object),
``--year 2017`` as palette PNGs of object ids.

A weights path is local, never downloaded: a pretraining run folder (its ``export/model.safetensors``), an export
folder, a densessl training checkpoint, or a timm state dict. ``--arch`` is needed only when the file does not state
its architecture; ``--weights random --arch NAME`` evaluates a randomly initialized backbone (seeded by ``--seed``).
``--weights first-frame`` uses no features: every frame's prediction is the first frame's mask (the "identity"
baseline of CRW's tables), the floor any backbone's propagation should clear.

Prints a per-sequence table (J mean, F mean, J&F, in percent) and the overall J-mean, F-mean and J&F-mean; ``--out``
writes them as JSON with keys ``J&F``, ``J`` (``mean``, ``recall``), ``F`` (``mean``, ``recall``), ``per_sequence``
(name -> ``J``, ``F``, ``J&F``, ``frames``, ``objects``), ``settings``, ``weights``, ``weights_source``, ``arch``,
``seconds``. ``--save-masks DIR`` writes the predicted masks as palette PNGs, ``DIR/<seq>/<frame>.png``.

Exit codes: 0 done, 2 bad arguments, data, weights, architecture or device (one ``error: densessl-eval-video:`` line).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from densessl.cli.common import run_evaluation

if TYPE_CHECKING:  # the heavy imports (torch) wait until they are needed, so that --help is quick
    import numpy as np
    import torch

    from densessl.video.davis import DavisSequence
    from densessl.video.metrics import SequenceScores
    from densessl.video.propagation import PropagationSettings

COMMAND = "densessl-eval-video"
_SETTING_FLAGS = {"short_side": "--short-side", "n_last_frames": "--n-last-frames", "neighborhood": "--neighborhood",
                  "topk": "--topk", "temperature": "--temperature", "level": "--level"}


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one ``error: densessl-eval-video:`` line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {COMMAND}: {message} (see {COMMAND} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True,
                        help="backbone weights: a run folder (its export/model.safetensors), an export folder, a "
                             "weights file, a training checkpoint, a "
                             "timm state dict; 'random' (a random init); or 'first-frame' (no features: the first "
                             "mask repeated, the baseline to beat)")
    parser.add_argument("--arch", help="timm architecture, e.g. resnet18 (default: the one the weights file states; "
                                       "required with --weights random or a plain timm state dict)")
    parser.add_argument("--data-root", required=True, help="DAVIS folder (JPEGImages/, Annotations/, ImageSets/)")
    parser.add_argument("--year", choices=("2016", "2017"), default="2016",
                        help="2016: binary masks, one object; 2017: palette masks, several objects (default 2016)")
    parser.add_argument("--sequences", nargs="+", metavar="NAME",
                        help="evaluate these sequences only (default: all of ImageSets/<year>/val.txt)")
    parser.add_argument("--max-frames", type=int, help="use at most the first N frames of each sequence (quick "
                                                       "checks; N >= 3: the first and last frames are not scored)")
    parser.add_argument("--level", type=int, default=-1, help="backbone feature level (default -1: the last)")
    parser.add_argument("--short-side", type=int, default=480, help="frame short side in pixels (default 480)")
    parser.add_argument("--n-last-frames", type=int, default=7,
                        help="preceding frames kept as context besides the first (default 7)")
    parser.add_argument("--neighborhood", type=int, default=12,
                        help="neighbourhood radius in feature cells; 0: no restriction (default 12)")
    parser.add_argument("--topk", type=int, default=5, help="candidates kept per target cell (default 5)")
    parser.add_argument("--temperature", type=float, default=0.1, help="affinity temperature (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a random init (default 0)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    parser.add_argument("--num-threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--save-masks", metavar="DIR", help="write the predicted masks as DIR/<seq>/<frame>.png")
    return parser


def _settings(args: argparse.Namespace) -> PropagationSettings:
    from densessl.video.propagation import PropagationSettings

    try:
        return PropagationSettings(short_side=args.short_side, n_last_frames=args.n_last_frames,
                                   neighborhood=args.neighborhood, topk=args.topk, temperature=args.temperature,
                                   level=args.level)
    except ValueError as error:
        field = str(error).split(":", 1)[0]
        raise ValueError(f"{_SETTING_FLAGS.get(field, field)} {str(error).split(':', 1)[-1].strip()}") from None


def _check_mask_folder(folder: str) -> None:
    """Fail before any compute when masks could not be written under ``folder``."""
    path = Path(folder).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--save-masks {folder!r} is a file; give a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--save-masks {folder!r} cannot be written: {str(existing)!r} is not a writable folder; "
                         f"choose another folder")


def _palette() -> list[int]:
    """The DAVIS / PASCAL VOC palette (label 1 red, 2 green, 3 yellow, ...), 256 RGB triples flattened."""
    palette = []
    for label in range(256):
        red = green = blue = 0
        value = label
        for shift in range(7, -1, -1):
            red |= ((value >> 0) & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.extend((red, green, blue))
    return palette


def _save_mask(path: Path, mask: np.ndarray, palette: list[int]) -> None:
    from PIL import Image

    from densessl.atomic import atomic_write

    image = Image.fromarray(mask)
    image.putpalette(palette)  # an "L" image becomes a "P" image with the same indices
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def _evaluate_sequence(backbone: torch.nn.Module | None, sequence: DavisSequence, args: argparse.Namespace,
                       settings: PropagationSettings, bar: Any) -> SequenceScores:
    """Propagate through one sequence (``backbone`` ``None``: repeat the first mask), optionally save the masks, and
    score it."""
    from densessl.video.davis import load_annotation, load_frame
    from densessl.video.metrics import evaluate_sequence
    from densessl.video.propagation import iter_propagation

    count = len(sequence) if args.max_frames is None else min(len(sequence), args.max_frames)
    frames = (load_frame(path) for path in sequence.frames[:count])
    first_mask = load_annotation(sequence.annotations[0], args.year)
    palette = _palette()
    predictions = []
    bar.set_description(sequence.name)
    masks = ((p.mask for p in iter_propagation(backbone, frames, first_mask, settings)) if backbone is not None
             else (first_mask for _ in range(count)))
    for number, mask in enumerate(masks):
        predictions.append(mask)
        if args.save_masks:
            _save_mask(Path(args.save_masks) / sequence.name / f"{sequence.frames[number].stem}.png", mask, palette)
        bar.update(1)
    annotations = [load_annotation(path, args.year) for path in sequence.annotations[:count]]
    return evaluate_sequence(sequence.name, predictions, annotations)


def _table(scores: list[SequenceScores]) -> str:
    width = max([len("sequence"), *(len(s.name) for s in scores)])
    lines = [f"{'sequence':<{width}}  frames  objects  J mean  F mean     J&F"]
    for s in scores:
        lines.append(f"{s.name:<{width}}  {s.frames:>6}  {len(s.object_ids):>7}  {100 * s.j_mean:>6.1f}  "
                     f"{100 * s.f_mean:>6.1f}  {100 * s.jf_mean:>6.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Check the inputs, build the backbone, propagate and score every sequence, print the table.

    Returns:
        The JSON record.

    Raises:
        ValueError: Bad settings, device, data layout, sequence name, weights or architecture.
        OSError: An unreadable or unwritable file.
    """
    settings = _settings(args)
    if args.max_frames is not None and args.max_frames < 3:
        raise ValueError(f"--max-frames must be >= 3 (the first and the last frame are not scored), got "
                         f"{args.max_frames}")
    if args.num_threads is not None and args.num_threads < 1:
        raise ValueError(f"--num-threads must be >= 1, got {args.num_threads}")
    if args.out:
        from densessl.cli.common import check_output_path

        check_output_path(args.out)  # before minutes of compute
    if args.save_masks:
        _check_mask_folder(args.save_masks)

    import torch
    from tqdm.auto import tqdm

    from densessl.backbones import DenseBackbone
    from densessl.dist import resolve_device
    from densessl.video.davis import read_davis
    from densessl.video.metrics import summarize
    from densessl.weights import read_backbone_weights, resolve_arch

    device = resolve_device(args.device)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.weights not in ("random", "first-frame") and not os.path.exists(args.weights):
        raise FileNotFoundError(f"weights file not found: {args.weights!r} (use --weights random for a random init)")
    if not os.path.isdir(args.data_root):
        raise ValueError(f"--data-root {args.data_root!r} is not a folder; pass the DAVIS folder that holds "
                         f"JPEGImages/, Annotations/ and ImageSets/")
    backbone: torch.nn.Module | None = None
    arch, stride, weights_source = None, None, "no features: the first frame's mask in every frame"
    if args.weights != "first-frame":
        weights = None if args.weights == "random" else read_backbone_weights(args.weights)
        arch = resolve_arch(args.arch, weights)
        weights_source = "random init" if weights is None else weights.source
        torch.manual_seed(args.seed)
        try:
            backbone = DenseBackbone(arch, levels=(settings.level,), weights=weights).to(device)
        except ValueError as error:
            if str(error).startswith("levels "):  # normalize_levels: the level is out of range for this model
                raise ValueError(f"--level {settings.level}: {error}") from None
            raise
        del weights  # loaded into the backbone
        stride = int(backbone.strides[0])
    sequences = read_davis(args.data_root, args.year, "val", args.sequences)  # logs what it found: after all checks
    total = sum(len(s) if args.max_frames is None else min(len(s), args.max_frames) for s in sequences)
    start = time.perf_counter()
    with tqdm(total=total, unit="frame", disable=args.no_progress or not sys.stderr.isatty(), leave=False) as bar:
        scores = [_evaluate_sequence(backbone, sequence, args, settings, bar) for sequence in sequences]
    seconds = time.perf_counter() - start
    overall = summarize(scores)
    features = f"level {settings.level} (stride {stride})" if backbone is not None else "no features"
    print(f"DAVIS {args.year} val label propagation: {arch} ({args.weights}: {weights_source}), {features}, "
          f"{len(scores)} sequences, {total} frames, {seconds:.1f} s on {device}")
    print(_table(scores))
    print(f"overall ({overall.objects} objects): J-mean {100 * overall.j_mean:.1f}  J-recall "
          f"{100 * overall.j_recall:.1f}  F-mean {100 * overall.f_mean:.1f}  F-recall {100 * overall.f_recall:.1f}  "
          f"J&F-mean {100 * overall.jf_mean:.1f}")
    print(f"settings: short_side={settings.short_side} n_last_frames={settings.n_last_frames} "
          f"neighborhood={settings.neighborhood} topk={settings.topk} temperature={settings.temperature:g}")
    return {
        "J&F": 100 * overall.jf_mean,
        "J": {"mean": 100 * overall.j_mean, "recall": 100 * overall.j_recall},
        "F": {"mean": 100 * overall.f_mean, "recall": 100 * overall.f_recall},
        "per_sequence": {s.name: {"J": 100 * s.j_mean, "F": 100 * s.f_mean, "J&F": 100 * s.jf_mean,
                                  "frames": s.frames, "objects": len(s.object_ids)} for s in scores},
        "settings": {"short_side": settings.short_side, "n_last_frames": settings.n_last_frames,
                     "neighborhood": settings.neighborhood, "topk": settings.topk,
                     "temperature": settings.temperature, "level": settings.level, "stride": stride,
                     "year": args.year, "sequences": [s.name for s in sequences], "max_frames": args.max_frames,
                     "device": str(device), "seed": args.seed},
        "weights": args.weights,
        "weights_source": weights_source,
        "arch": arch,
        "seconds": round(seconds, 2),
        "seconds_per_frame": round(seconds / max(1, total), 4),
    }


def main(argv: list[str] | None = None) -> int:
    """Run ``densessl-eval-video``; returns the exit code."""
    args = _parser().parse_args(argv)
    return run_evaluation(COMMAND, lambda: run(args), args.out)


if __name__ == "__main__":
    sys.exit(main())
