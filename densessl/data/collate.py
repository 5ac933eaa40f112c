"""Batching ``CropViews`` into ``Views``: one tensor per crop resolution, so each resolution is one forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from densessl.coords import cell_centers, to_pixels
from densessl.data.transforms import CropViews

__all__ = ["Views", "collate_views"]


@dataclass
class Views:
    """A batch of multi-crop views.

    Views are ordered as ``MultiCrop`` makes them (global first). Consecutive views of one resolution form a group.

    Attributes:
        images: One tensor per resolution group, ``(B, V_g, 3, S_g, S_g)``.
        boxes: ``(B, V, 4)`` normalized ``(x1, y1, x2, y2)`` crop boxes in the original images.
        flipped: ``(B, V)`` bool horizontal-flip flags.
        image_size: ``(B, 2)`` original ``(W, H)`` in pixels.
        n_global: Number of global views (views ``0 .. n_global - 1``).
        extras: Optional per-sample tensors (e.g. labels), batched on dim 0.
    """

    images: list[Tensor]
    boxes: Tensor
    flipped: Tensor
    image_size: Tensor
    n_global: int
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.boxes.shape[0]

    @property
    def num_views(self) -> int:
        return self.boxes.shape[1]

    @property
    def group_counts(self) -> list[int]:
        """Number of views in each resolution group."""
        return [group.shape[1] for group in self.images]

    def view(self, index: int) -> Tensor:
        """Images of view ``index`` as ``(B, 3, S, S)``."""
        if not 0 <= index < self.num_views:
            raise IndexError(f"view index {index} out of range for {self.num_views} views")
        for group in self.images:
            if index < group.shape[1]:
                return group[:, index]
            index -= group.shape[1]
        raise AssertionError("unreachable: group counts sum to num_views")

    def grids(self, shapes: Sequence[tuple[int, int]], flips: bool = True) -> list[Tensor]:
        """Where every feature cell of every view sits in its original image: one ``(B, h*w, 2)`` grid of ``(x, y)``
        pixel centres per view, raster order (row by row, as ``rearrange(map, "b d h w -> b (h w) d")``).

        Args:
            shapes: ``(h, w)`` of each view's feature map, in view order (``[m.shape[-2:] for m in maps]``).
            flips: Honour the horizontal flips (``False``: the official VICRegL code's grids, which ignore them).
        """
        if len(shapes) != self.num_views:
            raise ValueError(f"got {len(shapes)} map shapes for {self.num_views} views")
        return [self.grid(view, int(h), int(w), flips) for view, (h, w) in enumerate(shapes)]

    def grid(self, view: int, h: int, w: int, flips: bool = True) -> Tensor:
        """:meth:`grids` for one view: ``(B, h*w, 2)`` pixel centres of an ``h x w`` map of view ``view``."""
        flipped = self.flipped[:, view] if flips else torch.zeros_like(self.flipped[:, view])
        cells = cell_centers(self.boxes[:, view], flipped, h, w)  # (B, h, w, 2) in [0, 1] of the original image
        return to_pixels(cells, self.image_size).flatten(1, 2)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Views":
        """Copy every tensor to ``device``."""
        return Views(
            images=[group.to(device, non_blocking=non_blocking) for group in self.images],
            boxes=self.boxes.to(device, non_blocking=non_blocking),
            flipped=self.flipped.to(device, non_blocking=non_blocking),
            image_size=self.image_size.to(device, non_blocking=non_blocking),
            n_global=self.n_global,
            extras={k: v.to(device, non_blocking=non_blocking) for k, v in self.extras.items()},
        )

    def pin_memory(self) -> "Views":
        """Pinned copy, so a ``DataLoader(pin_memory=True)`` can use this batch type."""
        return Views(
            images=[group.pin_memory() for group in self.images],
            boxes=self.boxes.pin_memory(),
            flipped=self.flipped.pin_memory(),
            image_size=self.image_size.pin_memory(),
            n_global=self.n_global,
            extras={k: v.pin_memory() for k, v in self.extras.items()},
        )


def collate_views(samples: Sequence[CropViews | tuple[CropViews, Any]]) -> Views:
    """Stack per-image views into a batch, grouping consecutive views of equal size.

    Args:
        samples: ``B`` results of ``MultiCrop``, all with the same view sizes; or ``(views, target)`` pairs, as a
            torchvision / lightly dataset with ``transform=MultiCrop(...)`` yields them: the targets are batched
            into ``extras["target"]`` (``torch.as_tensor`` of the list; class indices give ``(B,)``).

    Returns:
        The batched ``Views``.
    """
    if not samples:
        raise ValueError("collate_views got an empty list of samples")
    if isinstance(samples[0], (tuple, list)):
        if not all(isinstance(s, (tuple, list)) and len(s) == 2 and isinstance(s[0], CropViews) for s in samples):
            raise ValueError("collate_views takes MultiCrop results or (views, target) pairs of them; got "
                             f"{type(samples[0][0]).__name__} in a pair (is the dataset's transform a MultiCrop?)")
        views = collate_views([s[0] for s in samples])
        views.extras["target"] = torch.as_tensor([s[1] for s in samples])
        return views
    sizes = [tuple(crop.shape) for crop in samples[0].crops]
    for index, sample in enumerate(samples):
        other = [tuple(crop.shape) for crop in sample.crops]
        if other != sizes:
            raise ValueError(f"sample {index} has view shapes {other}, sample 0 has {sizes}; all must match")
        if sample.n_global != samples[0].n_global:
            raise ValueError(f"sample {index} has n_global={sample.n_global}, sample 0 has {samples[0].n_global}")
    groups: list[list[int]] = []
    for view, size in enumerate(sizes):
        if groups and sizes[groups[-1][0]] == size:
            groups[-1].append(view)
        else:
            groups.append([view])
    images = [torch.stack([torch.stack([s.crops[v] for v in group]) for s in samples]) for group in groups]
    extras = {key: torch.stack([s.extras[key] for s in samples]) for key in samples[0].extras}
    return Views(
        images=images,
        boxes=torch.stack([s.boxes for s in samples]),
        flipped=torch.stack([s.flipped for s in samples]),
        image_size=torch.stack([s.image_size for s in samples]),
        n_global=samples[0].n_global,
        extras=extras,
    )
