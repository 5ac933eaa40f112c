"""The DAVIS video object segmentation layout: sequences, their frames and their annotations.

The standard layout (the DAVIS 2017 "trainval" download, which also holds the DAVIS 2016 lists)::

    ROOT/JPEGImages/480p/<seq>/00000.jpg, 00001.jpg, ...
    ROOT/Annotations/480p/<seq>/00000.png, 00001.png, ...
    ROOT/ImageSets/<year>/val.txt          one sequence name per line (year "2016" or "2017")

The original DAVIS 2016 download lists image/annotation path pairs in ``ROOT/ImageSets/480p/val.txt`` instead; with
``year="2016"`` that file is read when ``ImageSets/2016/val.txt`` is absent (the sequence names are the folders its
paths name).

Annotations:
    * DAVIS 2016: binary masks (0 / 255); any value > 0 is the object, label 1. A multi-object 2017 annotation read
      as 2016 becomes the union of its objects (the single-object task).
    * DAVIS 2017: palette PNGs whose index is the object id: 0 background, 1..K objects, ``VOID_LABEL`` (255) void.

Frames and annotations are paired by file stem (``00012.jpg`` <-> ``00012.png``); frames are sorted by name.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from densessl.data.images import ImageLoadError, load_image

__all__ = [
    "VOID_LABEL",
    "YEARS",
    "DavisSequence",
    "load_annotation",
    "load_frame",
    "read_davis",
    "read_sequence_names",
]

logger = logging.getLogger("densessl")

VOID_LABEL = 255
YEARS = ("2016", "2017")
Year = Literal["2016", "2017"]
_FRAME_EXTENSIONS = (".jpg", ".jpeg")
_LAYOUT = ("expected the DAVIS layout ROOT/JPEGImages/{res}/<seq>/00000.jpg ..., ROOT/Annotations/{res}/<seq>/00000.png "
           "..., ROOT/ImageSets/<year>/<split>.txt (one sequence name per line)")


@dataclass(frozen=True)
class DavisSequence:
    """One DAVIS sequence.

    Attributes:
        name: Sequence name (its folder name), e.g. ``bear``.
        frames: The frame files, sorted by name.
        annotations: One annotation file per frame, in the same order (``annotations[i]`` has the stem of
            ``frames[i]``).
    """

    name: str
    frames: list[Path]
    annotations: list[Path]

    def __len__(self) -> int:
        return len(self.frames)


def _layout(resolution: str) -> str:
    return _LAYOUT.format(res=resolution)


def _check_year(year: str) -> None:
    if year not in YEARS:
        raise ValueError(f"DAVIS year must be one of {', '.join(YEARS)}, got {year!r}")


def _names_from_pair_list(path: Path) -> list[str]:
    """Sequence names from a DAVIS 2016 pair list (``/JPEGImages/480p/bear/00000.jpg /Annotations/...`` per line)."""
    names: list[str] = []
    for line in path.read_text().splitlines():
        if line.strip():
            parts = Path(line.split()[0]).parts
            if len(parts) >= 2 and parts[-2] not in names:
                names.append(parts[-2])
    return names


def read_sequence_names(root: str | os.PathLike, year: Year = "2016", split: str = "val",
                        resolution: str = "480p") -> list[str]:
    """The sequence names of a split: ``ROOT/ImageSets/<year>/<split>.txt``, in file order, without duplicates.

    Args:
        root: The DAVIS folder.
        year: ``"2016"`` or ``"2017"``.
        split: ``val`` (or ``train``, ``test-dev``, ... where the list exists).
        resolution: Resolution folder name (``480p`` or ``Full-Resolution``); only for the DAVIS 2016 pair list.

    Returns:
        The names.

    Raises:
        ValueError: Unknown year, the list is missing or empty.
    """
    _check_year(year)
    root = Path(root)
    listing = root / "ImageSets" / year / f"{split}.txt"
    pair_list = root / "ImageSets" / resolution / f"{split}.txt"
    if listing.is_file():
        names = list(dict.fromkeys(line.strip() for line in listing.read_text().splitlines() if line.strip()))
    elif year == "2016" and pair_list.is_file():
        names = _names_from_pair_list(pair_list)
        listing = pair_list
    else:
        raise ValueError(f"DAVIS sequence list not found: {str(listing)!r}; {_layout(resolution)} (pass the folder "
                         f"that holds JPEGImages/, Annotations/ and ImageSets/ as the data root)")
    if not names:
        raise ValueError(f"DAVIS sequence list {str(listing)!r} names no sequence; it needs one sequence name per line")
    return names


def _select(names: list[str], wanted: Sequence[str], listing: str) -> list[str]:
    unknown = [name for name in wanted if name not in names]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
            hints.append(f"{name!r} (did you mean: {', '.join(close)}?)" if close else repr(name))
        raise ValueError(f"unknown DAVIS sequence {', '.join(hints)}: not in {listing} ({len(names)} sequences: "
                         f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
    return list(dict.fromkeys(wanted))


def _read_sequence(root: Path, name: str, resolution: str) -> DavisSequence:
    frame_dir = root / "JPEGImages" / resolution / name
    mask_dir = root / "Annotations" / resolution / name
    if not frame_dir.is_dir():
        raise ValueError(f"DAVIS sequence {name!r}: frame folder {str(frame_dir)!r} not found; {_layout(resolution)}")
    frames = sorted(p for p in frame_dir.iterdir() if p.suffix.lower() in _FRAME_EXTENSIONS and p.is_file())
    if not frames:
        raise ValueError(f"DAVIS sequence {name!r}: no .jpg frames in {str(frame_dir)!r}; {_layout(resolution)}")
    if not mask_dir.is_dir():
        raise ValueError(f"DAVIS sequence {name!r}: annotation folder {str(mask_dir)!r} not found; "
                         f"{_layout(resolution)}")
    annotations = [mask_dir / f"{frame.stem}.png" for frame in frames]
    if not annotations[0].is_file():
        raise ValueError(f"DAVIS sequence {name!r}: no annotation for the first frame {frames[0].name}: expected "
                         f"{str(annotations[0])!r} (the mask that label propagation starts from)")
    missing = [path.name for path in annotations if not path.is_file()]
    if missing:
        raise ValueError(f"DAVIS sequence {name!r}: {len(missing)} of {len(frames)} frames have no annotation in "
                         f"{str(mask_dir)!r} ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); the "
                         f"evaluation needs one per frame")
    return DavisSequence(name=name, frames=frames, annotations=annotations)


def read_davis(root: str | os.PathLike, year: Year = "2016", split: str = "val",
               sequences: Sequence[str] | None = None, resolution: str = "480p") -> list[DavisSequence]:
    """Read the sequences of a DAVIS split (file lists only; frames and masks are read on demand).

    Args:
        root: The DAVIS folder (holding ``JPEGImages/``, ``Annotations/``, ``ImageSets/``).
        year: ``"2016"`` or ``"2017"`` (which ``ImageSets`` list; how annotations are read is ``load_annotation``'s).
        split: The list's name, ``val`` by default.
        sequences: A subset of the list's sequences by name, in the order given; ``None`` for all.
        resolution: ``480p`` (the protocol's) or ``Full-Resolution``.

    Returns:
        One ``DavisSequence`` per sequence, in list order (or the order of ``sequences``).

    Raises:
        ValueError: ``root`` is not a folder, the list is missing, an unknown sequence name (with close names), a
            sequence folder without frames, or frames without annotations.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"DAVIS data root {str(root)!r} is not a folder; {_layout(resolution)}")
    names = read_sequence_names(root, year, split, resolution)
    if sequences is not None:
        names = _select(names, sequences, f"ImageSets/{year}/{split}.txt")
    read = [_read_sequence(root, name, resolution) for name in names]
    logger.info("DAVIS %s %s: %d sequences, %d frames in %s", year, split, len(read), sum(map(len, read)), root)
    return read


def load_frame(path: str | os.PathLike) -> np.ndarray:
    """Read a frame as RGB.

    Returns:
        ``(H, W, 3)`` uint8 array.

    Raises:
        ImageLoadError: The file cannot be read (a ``ValueError`` naming it).
    """
    return np.asarray(load_image(path))


def load_annotation(path: str | os.PathLike, year: Year) -> np.ndarray:
    """Read an annotation as a label map.

    Args:
        path: A PNG of the ``Annotations`` folder.
        year: ``"2016"``: any value > 0 becomes label 1 (binary masks, 0 / 255). ``"2017"``: the palette index is the
            object id (0 background, 1..K objects, ``VOID_LABEL`` void), kept as is.

    Returns:
        ``(H, W)`` uint8 label map.

    Raises:
        ValueError: Unknown year, an unreadable file, or (2017) an annotation that is not a palette or grayscale PNG.
    """
    _check_year(year)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except UnidentifiedImageError as error:
        raise ImageLoadError(path, "UnidentifiedImageError: not an image file PIL can decode") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageLoadError(path, f"{type(error).__name__}: {error}") from error
    if year == "2016":
        binary = array.any(axis=-1) if array.ndim == 3 else array > 0
        return binary.astype(np.uint8)
    if mode not in ("P", "L", "1"):
        raise ValueError(f"DAVIS 2017 annotation {str(path)!r} is a {mode} image; expected a palette (P) PNG whose "
                         f"index is the object id (0 background, 1..K objects, 255 void)")
    return array.astype(np.uint8)
