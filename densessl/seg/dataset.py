"""Semantic-segmentation sample type and dataset base class, and the embedded synthetic scenes as such a dataset.

Every segmentation dataset derives from ``SegmentationDataset`` and yields ``SegSample(image, mask, name)``: an RGB
``PIL.Image`` and an ``(H, W)`` uint8 class-index mask of the same size, where ``IGNORE_INDEX`` (255) marks pixels that
count in no metric and no loss.

The readers for datasets on disk (Pascal VOC, ADE20K, Cityscapes, COCO-Stuff, your own folder) and
``build_segmentation_dataset``, which picks any dataset by name, live in ``densessl.seg.readers``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch.utils.data
from PIL import Image

__all__ = ["IGNORE_INDEX", "SegSample", "SegmentationDataset", "SyntheticSegmentation"]

IGNORE_INDEX = 255


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
