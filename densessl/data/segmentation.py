"""Semantic-segmentation datasets: one sample type and one factory for every layout densessl reads.

Every dataset yields ``SegSample(image, mask, name)``: an RGB ``PIL.Image`` and an ``(H, W)`` uint8 class-index mask of
the same size, where ``ignore_index`` (255) marks pixels that count in no metric and no loss.

``build_segmentation_dataset`` picks a dataset by name; the on-disk readers (Pascal VOC, ADE20K, Cityscapes,
COCO-Stuff, your own folder) live in ``densessl.data.seg_readers``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image

__all__ = [
    "IGNORE_INDEX",
    "SEGMENTATION_DATASETS",
    "SegSample",
    "SegmentationDataset",
    "SyntheticSegmentation",
    "build_segmentation_dataset",
]

IGNORE_INDEX = 255

SEGMENTATION_DATASETS = ("voc", "ade20k", "cityscapes", "coco_stuff", "synthetic", "folder")


@dataclass
class SegSample:
    """One image with its label mask.

    Attributes:
        image: RGB image, size ``(W, H)``.
        mask: ``(H, W)`` uint8 class indices in ``[0, num_classes)``, or ``IGNORE_INDEX``.
        name: An identifier (file stem or index) for error messages and outputs.
    """

    image: Image.Image
    mask: np.ndarray
    name: str


class SegmentationDataset(torch.utils.data.Dataset):
    """Base class: subclasses set ``num_classes``, ``class_names`` and implement ``__len__``/``__getitem__``."""

    num_classes: int
    class_names: tuple[str, ...]
    ignore_index: int = IGNORE_INDEX

    def __getitem__(self, index: int) -> SegSample:  # pragma: no cover - interface
        raise NotImplementedError


class SyntheticSegmentation(SegmentationDataset):
    """The embedded synthetic scenes as a segmentation dataset (class 0 = background is a real class).

    Args:
        split: ``"train"`` or ``"val"`` (disjoint scene streams).
        num_images: Scenes in the split.
        size: ``(H, W)`` of each scene.
        seed: Dataset seed.
    """

    def __init__(self, split: str = "train", num_images: int = 500, size: tuple[int, int] = (128, 128),
                 seed: int = 0) -> None:
        from densessl.data.synthetic import CLASS_NAMES, SyntheticScenes

        self.scenes = SyntheticScenes(num_images=num_images, size=size, seed=seed, split=split)
        self.class_names = tuple(CLASS_NAMES)
        self.num_classes = len(CLASS_NAMES)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> SegSample:
        scene = self.scenes[index]
        return SegSample(image=scene.image, mask=scene.semantic_mask, name=f"synthetic_{index:06d}")


def build_segmentation_dataset(name: str, root: str | os.PathLike | None, split: str, *,
                               num_classes: int | None = None, ignore_index: int = IGNORE_INDEX,
                               **kwargs: Any) -> SegmentationDataset:
    """Build a segmentation dataset by name.

    Args:
        name: One of ``SEGMENTATION_DATASETS``: ``"voc"``, ``"ade20k"``, ``"cityscapes"``, ``"coco_stuff"``,
            ``"synthetic"`` (``root`` ignored) or ``"folder"`` (your own data).
        root: The dataset folder (see each reader in ``densessl.data.seg_readers`` for the layout it expects).
        split: ``"train"`` or ``"val"``, mapped to each dataset's own split names.
        num_classes: For ``"folder"``, the class count (with or instead of ``classes.txt``); for the others, an
            optional check against the dataset's fixed count.
        ignore_index: The value marking ignored pixels in the mask files; only ``"folder"`` accepts a value other
            than 255 (it is remapped to 255 in returned masks).
        **kwargs: Reader options: ``aug`` for ``"voc"``; ``check_values``/``max_report`` for ``"folder"``;
            ``num_images``/``size``/``seed`` for ``"synthetic"``.

    Returns:
        The dataset; its masks use 255 for ignored pixels.

    Raises:
        ValueError: Unknown ``name`` or ``split``, a ``num_classes`` that contradicts the dataset, an unsupported
            ``ignore_index``, or a malformed dataset.
        FileNotFoundError: A folder or file the dataset needs is missing (the message names it).
    """
    from densessl.data import seg_readers
    from densessl.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES

    if name not in SEGMENTATION_DATASETS:
        raise ValueError(f"unknown segmentation dataset {name!r}; valid names: {', '.join(SEGMENTATION_DATASETS)}")
    if split not in seg_readers.SPLITS:
        raise ValueError(f"split must be one of {seg_readers.SPLITS}, got {split!r}")
    if name == "folder":
        return seg_readers.FolderSegmentation(root, split, num_classes=num_classes, ignore_index=ignore_index,
                                              **kwargs)
    if ignore_index != IGNORE_INDEX:
        raise ValueError(f"ignore_index={ignore_index} is only supported for the 'folder' dataset; {name!r} masks "
                         f"always use {IGNORE_INDEX} for ignored pixels (drop the option)")
    fixed_classes = {"voc": seg_readers.VOC_CLASSES, "ade20k": seg_readers.ADE20K_CLASSES,
                     "cityscapes": seg_readers.CITYSCAPES_CLASSES, "coco_stuff": seg_readers.COCO_STUFF_CLASSES,
                     "synthetic": SYNTHETIC_CLASSES}[name]
    if num_classes is not None and num_classes != len(fixed_classes):
        raise ValueError(f"dataset {name!r} has {len(fixed_classes)} classes, but num_classes={num_classes} was "
                         f"given; drop the option or set it to {len(fixed_classes)}")
    if name == "synthetic":
        return SyntheticSegmentation(split=split, **kwargs)
    readers = {"voc": seg_readers.VOCSegmentation, "ade20k": seg_readers.ADE20KSegmentation,
               "cityscapes": seg_readers.CityscapesSegmentation, "coco_stuff": seg_readers.COCOStuffSegmentation}
    return readers[name](root, split, **kwargs)
