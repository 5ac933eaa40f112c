"""Pretraining data: image folders, the embedded synthetic scenes, multi-crop wrapping and a resumable sampler.

Reproducibility: a sample's views depend only on ``(seed, epoch, index)`` (a per-sample ``torch.Generator``), and the
sampler's order only on ``(seed, epoch)``, so a resumed run sees exactly the batches an uninterrupted run would, with
any number of workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from PIL import Image

from densessl.data.images import IMAGE_EXTENSIONS, ImageLoadError, ReducedImage, load_image, load_image_reduced
from densessl.data.transforms import CropPlan, CropViews, MultiCrop
from densessl.dist import derive_seed

__all__ = ["ImageFolder", "SyntheticImages", "PretrainDataset", "ResumableSampler", "sample_seed"]

logger = logging.getLogger("densessl")


class ImageFolder(torch.utils.data.Dataset):
    """Every image file under ``root``, recursively, in sorted path order (ImageNet's ``train/<class>/*.JPEG`` works).

    Symlinked folders are followed (a folder of links is a common way to build an ImageNet subset), each real folder
    once: a folder reached again (a symlink loop, or a second link to it) is skipped with a warning. Folders that
    cannot be listed (permission denied) are skipped with a warning naming them; the number of images found is
    logged.

    Args:
        root: Folder to scan.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
        ValueError: No image file was found (the message says how many other files and unreadable folders there
            were).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {str(self.root)!r}")
        scan = _scan_images(self.root)
        self.paths = sorted(scan.images)
        if not self.paths:
            raise ValueError(scan.no_images_message(self.root))
        logger.info("found %d images under %s", len(self.paths), self.root)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:
        return load_image(self.paths[index])

    def load_reduced(self, index: int, choose_scale: Callable[[int, int], int]) -> ReducedImage:
        """Image ``index``, a JPEG decoded at the reduction ``choose_scale(W, H)`` picks (``load_image_reduced``)."""
        return load_image_reduced(self.paths[index], choose_scale)


_WARN_FOLDERS = 5  # unreadable or repeated folders warned about one by one; the rest are summed up


class _Scan:
    """What ``_scan_images`` saw: image files, other files (count and a few names), folders it could not list."""

    def __init__(self) -> None:
        self.images: list[Path] = []
        self.other_count = 0
        self.other_examples: list[str] = []
        self.unreadable: list[tuple[Path, str]] = []
        self.repeated = 0

    def no_images_message(self, root: Path) -> str:
        message = f"no images under {str(root)!r} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})"
        if self.other_count:
            examples = ", ".join(repr(name) for name in self.other_examples)
            more = ", ..." if self.other_count > len(self.other_examples) else ""
            plural = "s" if self.other_count != 1 else ""
            message += (f"; it holds {self.other_count} other file{plural} without an image extension "
                        f"({examples}{more})")
        if self.unreadable:
            shown = ", ".join(f"{str(path)!r} ({reason})" for path, reason in self.unreadable[:3])
            more = ", ..." if len(self.unreadable) > 3 else ""
            plural = "s" if len(self.unreadable) != 1 else ""
            message += f"; {len(self.unreadable)} folder{plural} could not be read: {shown}{more}"
        return message + "; point data.root at a folder of images (subfolders allowed)"


def _scan_images(root: Path) -> _Scan:
    """Walk ``root`` depth first in sorted name order, following symlinked folders, each real folder once."""
    scan = _Scan()
    visited = {os.path.realpath(root)}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            reason = error.strerror or type(error).__name__
            scan.unreadable.append((folder, reason))
            if len(scan.unreadable) <= _WARN_FOLDERS:
                logger.warning("cannot read folder %s (%s): its images are left out", folder, reason)
            continue
        subfolders = []
        for entry in entries:
            path = folder / entry.name
            try:
                is_dir = entry.is_dir()  # follows symlinks
                is_file = not is_dir and entry.is_file()
            except OSError:
                is_dir = is_file = False
            if is_dir:
                real = os.path.realpath(path)
                if real in visited:
                    scan.repeated += 1
                    if scan.repeated <= _WARN_FOLDERS:
                        logger.warning("skipping folder %s: it is %s, already scanned (a symlink loop or a second "
                                       "link to one folder)", path, real)
                    continue
                visited.add(real)
                subfolders.append(path)
            elif is_file and path.suffix.lower() in IMAGE_EXTENSIONS:
                scan.images.append(path)
            elif is_file:
                scan.other_count += 1
                if len(scan.other_examples) < 3:
                    scan.other_examples.append(path.relative_to(root).as_posix())
        stack.extend(reversed(subfolders))  # pop() takes them in sorted order
    if len(scan.unreadable) > _WARN_FOLDERS:
        logger.warning("%d folders under %s could not be read; their images are left out", len(scan.unreadable), root)
    if scan.repeated > _WARN_FOLDERS:
        logger.warning("%d folders under %s were reached twice and scanned once", scan.repeated, root)
    return scan


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
    return derive_seed(seed, epoch, index)


class PretrainDataset(torch.utils.data.Dataset):
    """Images -> ``CropViews``, reproducibly, skipping unreadable files unless ``strict``.

    A skipped file is replaced by the next readable index, and its dataset index is recorded in
    ``views.extras["skipped"]`` (a ``(MAX_ATTEMPTS,)`` long tensor padded with -1) so the training loop can report
    which files were skipped. With ``strict=True`` the first unreadable file stops the run. A sample that finds no
    readable image in ``MAX_ATTEMPTS`` consecutive files raises ``ImageLoadError``.

    At construction a few images (spread over the dataset) are decoded; if none can be, every image is tried (up to
    ``check_tries``) and a folder where none of them reads fails right away, before any training.

    Args:
        images: A dataset of PIL images (an ``ImageFolder``'s ``root`` and ``paths`` name the files in messages).
        multicrop: The view transform.
        seed: Run seed.
        strict: Raise on unreadable files instead of skipping them.
        check_tries: Most images decoded by the construction check when they all fail (0 = no check).
        fast_decode: Decode JPEGs at the largest reduction (1/2, 1/4, 1/8) that keeps every crop window at least as
            large as its output crop (``MultiCrop.decode_scale``); only for datasets with ``load_reduced``
            (``ImageFolder``). Boxes and flips are unchanged, pixels change slightly. Off: crops are bit-exact.

    Raises:
        ImageLoadError: None of the images tried at construction could be read.
    """

    MAX_ATTEMPTS = 32

    def __init__(self, images: torch.utils.data.Dataset, multicrop: MultiCrop, seed: int = 0,
                 strict: bool = False, check_tries: int = 256, fast_decode: bool = False) -> None:
        self.images = images
        self.multicrop = multicrop
        self.seed = seed
        self.strict = strict
        self.fast_decode = fast_decode and hasattr(images, "load_reduced")
        self.epoch = 0
        if check_tries:
            self.check_readable(check_tries)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations of ``epoch`` (call before creating the epoch's DataLoader iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def describe(self, index: int) -> str:
        """The file of image ``index`` (or ``image #index`` for images without files), for messages."""
        paths = getattr(self.images, "paths", None)
        return str(paths[index]) if paths is not None else f"image #{index}"

    def _where(self) -> str:
        root = getattr(self.images, "root", None)
        return f" under {str(root)!r}" if root is not None else ""

    def check_readable(self, max_tries: int = 256) -> None:
        """Fail fast when no image can be read: decode a few spread-out images, then (if all fail) more.

        Returns at the first readable image, so a healthy dataset costs one decode.

        Args:
            max_tries: Most images decoded in all.

        Raises:
            ImageLoadError: None of the images tried could be read; the message names the folder, how many were
                tried and the first failure.
        """
        count = len(self)
        if count == 0:
            return
        spread = np.linspace(0, count - 1, num=min(count, 8)).round().astype(int).tolist()
        order = list(dict.fromkeys([*spread, *range(min(count, max_tries))]))[:max(max_tries, 1)]
        first: ImageLoadError | None = None
        for index in order:
            try:
                self.images[index]
                return
            except ImageLoadError as error:
                first = first or error
        assert first is not None
        tried = f"none of the {count} images" if len(order) == count else \
            f"none of the {len(order)} images tried (of {count})"
        raise ImageLoadError(
            f"{tried}{self._where()} could be read (first: {first.path!r}: {first.reason}); replace or delete the "
            f"unreadable files, or point data.root at a folder of readable images")

    def __getitem__(self, index: int) -> CropViews:
        skipped: list[int] = []
        first: ImageLoadError | None = None
        attempts = min(len(self), self.MAX_ATTEMPTS)
        for attempt in range(attempts):
            current = (index + attempt) % len(self)
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
            plans: list[CropPlan] = []
            try:
                if self.fast_decode:
                    choose = partial(self._decode_scale, generator=generator, plans=plans)
                    decoded = self.images.load_reduced(current, choose)
                else:
                    image = self.images[current]
            except ImageLoadError as error:
                if self.strict:
                    raise
                logger.warning("skipping unreadable image: %s", error)
                skipped.append(current)
                first = first or error
                continue
            if self.fast_decode:
                views = self.multicrop.apply(decoded.image, plans[0], decoded.scale)
            else:
                views = self.multicrop(image, generator)
            record = torch.full((self.MAX_ATTEMPTS,), -1, dtype=torch.long)
            record[: len(skipped)] = torch.tensor(skipped, dtype=torch.long)
            views.extras["skipped"] = record
            return views
        assert first is not None
        if attempts == len(self):
            what = f"none of the {attempts} images{self._where()} could be read"
        else:
            what = f"{attempts} consecutive images{self._where()} could not be read"
        raise ImageLoadError(f"{what} (first: {first.path!r}: {first.reason}); replace or delete the unreadable "
                             f"files, or point data.root at a folder of readable images")

    def _decode_scale(self, width: int, height: int, generator: torch.Generator, plans: list[CropPlan]) -> int:
        """Draw the views' plan from the file's size (before decoding) and pick the JPEG decode reduction."""
        plans.append(self.multicrop.plan(width, height, generator))
        return self.multicrop.decode_scale(plans[0])


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
