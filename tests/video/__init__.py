"""Tests of ``densessl.video``; ``write_davis`` builds the tiny DAVIS folder that the reader and CLI tests share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SEQUENCES = ("blackswan", "car-shadow")
SIZE = (48, 64)  # (H, W)
BACKGROUNDS = ((90, 160, 90), (60, 60, 140))


def davis_palette() -> list[int]:
    """A small palette: 0 black, 1 red, 2 green, 255 white (the rest black)."""
    palette = [0] * 768
    palette[3:9] = [128, 0, 0, 0, 128, 0]
    palette[765:768] = [255, 255, 255]
    return palette


def write_davis(root: Path, year: str, frames: int = 3) -> Path:
    """A DAVIS-layout folder: ``len(SEQUENCES)`` sequences of ``frames`` 64x48 JPEGs with their annotations.

    Object 1 is a red 16x16 square moving 4 px right per frame; with ``year="2017"`` object 2, a blue 12x12 square,
    moves 4 px down. 2016 masks are binary 0/255 grayscale PNGs; 2017 masks are palette PNGs of object ids.
    """
    height, width = SIZE
    for name, background in zip(SEQUENCES, BACKGROUNDS):
        frame_dir = root / "JPEGImages" / "480p" / name
        mask_dir = root / "Annotations" / "480p" / name
        frame_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        for t in range(frames):
            image = np.empty((height, width, 3), np.uint8)
            image[:] = background
            labels = np.zeros((height, width), np.uint8)
            image[8:24, 4 + 4 * t:20 + 4 * t] = (230, 20, 20)
            labels[8:24, 4 + 4 * t:20 + 4 * t] = 1
            if year == "2017":
                image[4 + 4 * t:16 + 4 * t, 40:52] = (20, 20, 230)
                labels[4 + 4 * t:16 + 4 * t, 40:52] = 2
            Image.fromarray(image).save(frame_dir / f"{t:05d}.jpg", quality=95)
            if year == "2016":
                Image.fromarray(labels * 255).save(mask_dir / f"{t:05d}.png")
            else:
                mask = Image.fromarray(labels)
                mask.putpalette(davis_palette())
                mask.save(mask_dir / f"{t:05d}.png")
    (root / "ImageSets" / year).mkdir(parents=True)
    (root / "ImageSets" / year / "val.txt").write_text("\n".join(SEQUENCES) + "\n")
    return root
