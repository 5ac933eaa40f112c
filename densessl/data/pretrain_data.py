"""Pretraining data: image folders, the embedded synthetic scenes, multi-crop wrapping and a resumable sampler.

Reproducibility: a sample's views depend only on ``(seed, epoch, index)`` (a per-sample ``torch.Generator``), and the
sampler's order only on ``(seed, epoch)``, so a resumed run sees exactly the batches an uninterrupted run would, with
any number of workers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.utils.data
from PIL import Image

from densessl.data.images import IMAGE_EXTENSIONS, ImageLoadError, load_image
from densessl.data.transforms import CropViews, MultiCrop

__all__ = ["ImageFolder", "SyntheticImages", "PretrainDataset", "ResumableSampler", "sample_seed"]

logger = logging.getLogger("densessl")


class ImageFolder(torch.utils.data.Dataset):
    """Every image file under ``root``, recursively, in sorted path order (ImageNet's ``train/<class>/*.JPEG`` works).

    Args:
        root: Folder to scan.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
        ValueError: No image file was found.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {str(self.root)!r}")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.paths:
            raise ValueError(
                f"no images under {str(self.root)!r} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:
        return load_image(self.paths[index])


class SyntheticImages(torch.utils.data.Dataset):
    """The embedded synthetic scenes, images only (see ``densessl.data.synthetic``)."""

    def __init__(self, num_images: int, size: int, seed: int = 0) -> None:
        from densessl.data.synthetic import SyntheticScenes

        self.scenes = SyntheticScenes(num_images=num_images, size=(size, size), seed=seed, split="train")

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> Image.Image:
        return self.scenes[index].image


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentations, from ``(seed, epoch, index)``."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class PretrainDataset(torch.utils.data.Dataset):
    """Images -> ``CropViews``, reproducibly, skipping unreadable files unless ``strict``.

    A skipped file is replaced by the next readable index and counted in ``views.extras["skipped"]`` so the training
    loop can report how many were skipped. With ``strict=True`` the first unreadable file stops the run.

    Args:
        images: A dataset of PIL images.
        multicrop: The view transform.
        seed: Run seed.
        strict: Raise on unreadable files instead of skipping them.
    """

    def __init__(self, images: torch.utils.data.Dataset, multicrop: MultiCrop, seed: int = 0,
                 strict: bool = False) -> None:
        self.images = images
        self.multicrop = multicrop
        self.seed = seed
        self.strict = strict
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations of ``epoch`` (call before creating the epoch's DataLoader iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> CropViews:
        skipped = 0
        for attempt in range(min(len(self), 32)):
            current = (index + attempt) % len(self)
            try:
                image = self.images[current]
            except ImageLoadError as error:
                if self.strict:
                    raise
                logger.warning("skipping unreadable image: %s", error)
                skipped += 1
                continue
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
            views = self.multicrop(image, generator)
            views.extras["skipped"] = torch.tensor(skipped)
            return views
        raise RuntimeError(f"{skipped} consecutive unreadable images starting at index {index}; is the folder corrupt?")


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Shuffled, rank-sharded sampling that can start mid-epoch.

    Like ``DistributedSampler(shuffle=True, drop_last=True)``: each epoch a permutation seeded by ``seed + epoch`` is
    cut to a multiple of ``num_replicas`` and rank ``r`` takes every ``num_replicas``-th index from ``r``. Indices
    before ``start`` (in this rank's order) are skipped, which is how a resumed run continues inside an epoch.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        if num_samples < num_replicas:
            raise ValueError(f"{num_samples} samples cannot be split over {num_replicas} processes")
        self.num_samples = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    @property
    def per_rank(self) -> int:
        """Indices per rank per epoch, before skipping."""
        return self.num_samples // self.num_replicas

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` indices."""
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.num_samples)
        mine = order[: self.per_rank * self.num_replicas][self.rank :: self.num_replicas]
        return iter(mine[self.start :].tolist())

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)
