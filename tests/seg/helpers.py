"""Fixtures for the segmentation-evaluation tests: a trivially separable colour dataset and a mean-colour backbone."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from densessl.backbones import DenseFeatures
from densessl.seg.dataset import SegmentationDataset, SegSample

COLOURS = ((40, 200, 40), (220, 30, 30), (30, 30, 220))  # class 0 green, 1 red, 2 blue


class SplitColours(SegmentationDataset):
    """``size x size`` images split at a random column (a multiple of 8) into two solid colours of distinct classes.

    The class of every pixel is its colour. The top row is ``ignore_index`` (255).
    """

    num_classes = 3
    class_names = ("green", "red", "blue")

    def __init__(self, num_images: int, size: int = 32, seed: int = 0) -> None:
        self.size = size
        rng = np.random.default_rng(seed)
        self.layout = []
        for _ in range(num_images):
            left, right = rng.choice(3, size=2, replace=False)
            split = int(rng.integers(1, size // 8)) * 8
            self.layout.append((int(left), int(right), split))

    def __len__(self) -> int:
        return len(self.layout)

    def __getitem__(self, index: int) -> SegSample:
        left, right, split = self.layout[index]
        mask = np.full((self.size, self.size), right, dtype=np.uint8)
        mask[:, :split] = left
        image = np.asarray(COLOURS, dtype=np.uint8)[mask]
        mask[0] = 255
        return SegSample(image=Image.fromarray(image), mask=mask, name=f"split_{index}")


class MeanColourBackbone(nn.Module):
    """Deterministic stub backbone: the mean colour of every ``stride x stride`` patch, as ``DenseFeatures``."""

    def __init__(self, stride: int = 8) -> None:
        super().__init__()
        self.channels = [3]
        self.strides = [stride]
        self.num_features = 3
        self.arch = "mean_colour_stub"

    def forward(self, images: Tensor) -> DenseFeatures:
        maps = F.avg_pool2d(images, self.strides[0])
        return DenseFeatures(maps=[maps], pooled=maps.mean(dim=(2, 3)))


