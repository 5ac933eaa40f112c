"""RGB-D folders for the depth probe: the common NYUv2 layout, and the same layout for any RGB-D set.

Layout (``DepthFolder``)::

    DIR/images/{train,val}/<name>.jpg|.png     RGB images
    DIR/depth/{train,val}/<name>.png           16-bit PNG depth, ``depth_scale`` units per metre (NYUv2: millimetres,
                                               1000); 0 = no measurement

Depth is returned in metres as float32 ``(H, W)`` with 0 where there is no measurement. An image without its depth
file, or a depth file that is not 16-bit (or 8-bit), is an error naming the file.

``write_synthetic_rgbd`` writes a small generated set in this layout whose depth is known from the colour (the
tests' and ``densessl-reproduce --smoke``'s data; nothing is downloaded).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.utils.data
from PIL import Image

__all__ = ["SYNTHETIC_SURFACES", "DepthFolder", "DepthSample", "write_synthetic_rgbd"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

SYNTHETIC_SURFACES = {(40, 200, 40): 1.0, (220, 30, 30): 3.0, (30, 30, 220): 6.0}
"""The generated scenes' surfaces: RGB colour -> distance in metres."""


@dataclass
class DepthSample:
    """One RGB-D pair: the image, its depth in metres ``(H, W)`` float32 (0: no measurement) and its name."""

    image: Image.Image
    depth: np.ndarray
    name: str


class DepthFolder(torch.utils.data.Dataset):
    """The ``split`` of an RGB-D folder (see the module docstring).

    Args:
        root: The dataset folder.
        split: ``train`` or ``val``.
        depth_scale: Depth PNG units per metre (1000 for millimetres).

    Raises:
        FileNotFoundError: The split's image folder is missing or empty, or an image has no depth file.
    """

    def __init__(self, root: str | os.PathLike, split: str, depth_scale: float = 1000.0) -> None:
        self.root = Path(root)
        self.split = split
        self.depth_scale = float(depth_scale)
        images = self.root / "images" / split
        if not images.is_dir():
            raise FileNotFoundError(f"no {split} images: {str(images)!r} is not a folder (expected DIR/images/{split}/ "
                                    f"and DIR/depth/{split}/)")
        self.images = sorted(p for p in images.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not self.images:
            raise FileNotFoundError(f"no {split} images in {str(images)!r} (.jpg or .png)")
        self.depths = [self.root / "depth" / split / f"{p.stem}.png" for p in self.images]
        missing = [str(d) for d in self.depths if not d.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} {split} images have no depth PNG, e.g. {missing[0]!r}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> DepthSample:
        with Image.open(self.images[index]) as image:
            rgb = image.convert("RGB")
        with Image.open(self.depths[index]) as depth_image:
            raw = np.asarray(depth_image)
        if raw.dtype not in (np.uint16, np.int32, np.uint8) or raw.ndim != 2:
            raise ValueError(f"depth file {str(self.depths[index])!r} is {raw.dtype} with shape {raw.shape}; expected "
                             "a single-channel 16-bit PNG")
        if raw.shape != (rgb.height, rgb.width):
            raise ValueError(f"depth file {str(self.depths[index])!r} is {raw.shape[1]}x{raw.shape[0]}, its image "
                             f"{rgb.width}x{rgb.height}")
        depth = raw.astype(np.float32) / self.depth_scale
        return DepthSample(image=rgb, depth=depth, name=self.images[index].stem)


def write_synthetic_rgbd(root: str | os.PathLike, counts: dict[str, int], size: tuple[int, int] = (48, 64),
                         seed: int = 0) -> Path:
    """Write generated RGB-D scenes in the folder layout under ``root`` and return it.

    Each ``(H, W)`` image is split at a column (a multiple of 8 pixels) into two of the ``SYNTHETIC_SURFACES``: its
    colour tells its depth, so a probe on colour features can recover it exactly. Depth PNGs are 16-bit millimetres
    (``depth_scale`` 1000) with the top row 0 (no measurement). ``counts`` maps split -> number of images.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    colours = list(SYNTHETIC_SURFACES)
    for split, count in counts.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "depth" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            left, right = rng.choice(len(colours), size=2, replace=False)
            cut = int(rng.integers(1, size[1] // 8)) * 8
            image = np.zeros((*size, 3), dtype=np.uint8)
            depth = np.zeros(size, dtype=np.uint16)
            image[:, :cut], depth[:, :cut] = colours[left], int(SYNTHETIC_SURFACES[colours[left]] * 1000)
            image[:, cut:], depth[:, cut:] = colours[right], int(SYNTHETIC_SURFACES[colours[right]] * 1000)
            depth[0] = 0
            Image.fromarray(image).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(depth).save(root / "depth" / split / f"{i:03d}.png")
    return root
