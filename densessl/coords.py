"""Crop geometry: the single home of every coordinate conversion in densessl.

Conventions (see DESIGN.md section 3):

* ``boxes`` are ``(x1, y1, x2, y2)`` normalized to ``[0, 1]`` of the *original* image, torchvision order. A crop of
  ``height x width`` pixels whose top-left pixel is ``(top, left)`` has the box
  ``(left / W, top / H, (left + width) / W, (top + height) / H)``: pixel ``p`` covers the continuous interval
  ``[p, p + 1)``, so its centre is at ``p + 0.5``.
* ``flipped`` is a separate bool per view: the crop was mirrored horizontally *after* cropping, so output column
  ``c`` of a flipped view shows what sat at column ``w - 1 - c`` of the unflipped crop.
* ``grids`` are ``(B, h, w, 2)`` with the last dim ``(x, y)`` like ``F.grid_sample``; ``grid[b, r, c]`` is where the
  centre of feature cell ``(r, c)`` of view ``b`` sits in the original image. Normalized grids are in ``[0, 1]``;
  pixel grids are those multiplied by the original ``(W, H)``.
* ``image_size`` is ``(B, 2)`` holding ``(W, H)`` of the original image in pixels.

A feature map of ``h x w`` cells is taken to tile its crop uniformly: cell ``(r, c)`` covers rows
``[r, r + 1) * crop_h / h`` and columns ``[c, c + 1) * crop_w / w`` of the crop. This is the convention of the official
VICRegL grid (``transforms.py``, ``_location_to_NxN_grid``) and of PixPro's coordinate maps.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

__all__ = [
    "crop_to_box",
    "cell_centers",
    "to_pixels",
    "pairwise_distances",
    "box_area",
    "box_intersection",
    "box_iou",
    "bin_diagonal",
    "match_indices",
    "select_matches",
]


def _check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    if boxes.shape[-1] != 4:
        raise ValueError(f"{name} must end in a dimension of 4 (x1, y1, x2, y2); got shape {tuple(boxes.shape)}")


def crop_to_box(top: int, left: int, height: int, width: int, image_height: int, image_width: int) -> Tensor:
    """Convert a pixel crop ``(top, left, height, width)`` into a normalized box.

    Args:
        top: Row of the crop's top-left pixel in the original image.
        left: Column of the crop's top-left pixel.
        height: Crop height in original pixels.
        width: Crop width in original pixels.
        image_height: Original image height ``H`` in pixels.
        image_width: Original image width ``W`` in pixels.

    Returns:
        ``(4,)`` float32 tensor ``(x1, y1, x2, y2)`` in ``[0, 1]`` of the original image.
    """
    if image_height <= 0 or image_width <= 0:
        raise ValueError(f"image size must be positive, got H={image_height}, W={image_width}")
    if height <= 0 or width <= 0:
        raise ValueError(f"crop size must be positive, got height={height}, width={width}")
    return torch.tensor(
        [left / image_width, top / image_height, (left + width) / image_width, (top + height) / image_height],
        dtype=torch.float32,
    )


def cell_centers(boxes: Tensor, flipped: Tensor, h: int, w: int) -> Tensor:
    """Centres of the ``h x w`` feature cells of each view, in normalized original-image coordinates.

    Cell ``(r, c)`` of an unflipped view sits at ``x = x1 + (c + 0.5) (x2 - x1) / w``,
    ``y = y1 + (r + 0.5) (y2 - y1) / h``. For a flipped view the columns are mirrored:
    ``x = x2 - (c + 0.5) (x2 - x1) / w``.

    Args:
        boxes: ``(B, 4)`` normalized ``(x1, y1, x2, y2)`` crop boxes.
        flipped: ``(B,)`` bool, whether each view was flipped horizontally after cropping.
        h: Feature-grid height (rows).
        w: Feature-grid width (columns).

    Returns:
        ``(B, h, w, 2)`` grid of ``(x, y)`` cell centres, normalized to the original image.
    """
    _check_boxes(boxes)
    if boxes.dim() != 2:
        raise ValueError(f"boxes must be (B, 4), got shape {tuple(boxes.shape)}")
    if flipped.shape != boxes.shape[:1]:
        raise ValueError(f"flipped must be (B,) = {tuple(boxes.shape[:1])}, got shape {tuple(flipped.shape)}")
    if h <= 0 or w <= 0:
        raise ValueError(f"grid size must be positive, got h={h}, w={w}")
    boxes = boxes.float()
    x1, y1, x2, y2 = boxes.unbind(-1)
    frac_x = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) / w  # (w,)
    frac_y = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) / h  # (h,)
    frac_x = torch.where(flipped.bool()[:, None], 1.0 - frac_x[None, :], frac_x[None, :])  # (B, w)
    xs = x1[:, None] + frac_x * (x2 - x1)[:, None]  # (B, w)
    ys = y1[:, None] + frac_y[None, :] * (y2 - y1)[:, None]  # (B, h)
    grid_x = xs[:, None, :].expand(-1, h, -1)
    grid_y = ys[:, :, None].expand(-1, -1, w)
    return torch.stack([grid_x, grid_y], dim=-1)


def to_pixels(grid: Tensor, image_size: Tensor) -> Tensor:
    """Scale a normalized ``(x, y)`` grid to original-image pixels.

    Args:
        grid: ``(B, ..., 2)`` normalized ``(x, y)`` coordinates.
        image_size: ``(B, 2)`` original ``(W, H)`` in pixels.

    Returns:
        Tensor shaped like ``grid`` in pixel units (``x * W``, ``y * H``).
    """
    if image_size.dim() != 2 or image_size.shape[-1] != 2 or image_size.shape[0] != grid.shape[0]:
        raise ValueError(
            f"image_size must be (B, 2) = ({grid.shape[0]}, 2) holding (W, H), got shape {tuple(image_size.shape)}"
        )
    scale = image_size.to(grid.dtype).view(grid.shape[0], *([1] * (grid.dim() - 2)), 2)
    return grid * scale


def pairwise_distances(grid_a: Tensor, grid_b: Tensor) -> Tensor:
    """Euclidean distances between every cell of view a and every cell of view b.

    Args:
        grid_a: ``(B, h_a, w_a, 2)`` or ``(B, N_a, 2)`` coordinates.
        grid_b: ``(B, h_b, w_b, 2)`` or ``(B, N_b, 2)`` coordinates, same unit as ``grid_a``.

    Returns:
        ``(B, N_a, N_b)`` distances, cells in raster order (``N = h * w``).
    """
    if grid_a.dim() == 4:
        grid_a = rearrange(grid_a, "b h w t -> b (h w) t")
    if grid_b.dim() == 4:
        grid_b = rearrange(grid_b, "b h w t -> b (h w) t")
    if grid_a.dim() != 3 or grid_b.dim() != 3 or grid_a.shape[0] != grid_b.shape[0] or grid_a.shape[-1] != 2:
        raise ValueError(f"grids must be (B, N, 2) with equal B; got {tuple(grid_a.shape)} and {tuple(grid_b.shape)}")
    # Explicit difference rather than cdist's matmul path: exact zeros for coincident cells, which matters for ties.
    return (grid_a[:, :, None, :] - grid_b[:, None, :, :]).pow(2).sum(-1).sqrt()


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``(..., 4)`` boxes (zero for empty boxes). Returns ``(...)``."""
    _check_boxes(boxes)
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_intersection(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Intersection box of ``(..., 4)`` boxes (broadcasting). Empty intersections have ``x2 <= x1`` or ``y2 <= y1``.

    Returns:
        ``(..., 4)`` boxes; use :func:`box_area` for the overlap area (0 when empty).
    """
    _check_boxes(boxes_a, "boxes_a")
    _check_boxes(boxes_b, "boxes_b")
    top_left = torch.maximum(boxes_a[..., :2], boxes_b[..., :2])
    bottom_right = torch.minimum(boxes_a[..., 2:], boxes_b[..., 2:])
    return torch.cat([top_left, bottom_right], dim=-1)


def box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Intersection over union of ``(..., 4)`` boxes (broadcasting); 0 where both are empty. Returns ``(...)``."""
    inter = box_area(box_intersection(boxes_a, boxes_b))
    union = box_area(boxes_a) + box_area(boxes_b) - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))


def bin_diagonal(boxes: Tensor, h: int, w: int) -> Tensor:
    """Diagonal length of one feature bin of each view, in normalized original-image units.

    PixPro measures the distance between cells in units of this diagonal.

    Args:
        boxes: ``(B, 4)`` normalized crop boxes.
        h: Feature-grid height.
        w: Feature-grid width.

    Returns:
        ``(B,)`` bin diagonals.
    """
    _check_boxes(boxes)
    return torch.sqrt(((boxes[:, 2] - boxes[:, 0]) / w) ** 2 + ((boxes[:, 3] - boxes[:, 1]) / h) ** 2)


# Matching primitives: pairs of cells from a distance matrix (VICRegL's local term, the match diagnostics).

SelectionOrder = Literal["raster", "distance"]


def match_indices(distances: Tensor, k: int | None, order: SelectionOrder = "raster") -> tuple[Tensor, Tensor]:
    """Nearest-neighbour matching with top-k filtering (VICRegL's reference ``neirest_neighbores``).

    Every source cell ``p`` takes its nearest target cell ``nn(p) = argmin_q distances[p, q]``; the ``k`` source cells
    with the smallest ``min_q distances[p, q]`` are kept.

    Args:
        distances: ``(B, N_src, N_tgt)``.
        k: Cells to keep; ``None`` (or ``-1``) keeps all ``N_src``; capped at ``N_src``.
        order: ``"raster"`` returns kept cells in increasing index order (reference); ``"distance"`` closest first.

    Returns:
        ``(src_index, tgt_index)``, each ``(B, k)`` int64: matched pairs ``(src_index[b, s], tgt_index[b, s])``.
    """
    if distances.dim() != 3:
        raise ValueError(f"distances must be (B, N_src, N_tgt), got shape {tuple(distances.shape)}")
    if order not in ("raster", "distance"):
        raise ValueError(f"order must be 'raster' or 'distance', got {order!r}")
    batch, num_src, _ = distances.shape
    best, nearest = distances.min(dim=2)  # (B, N_src)
    if k is None or k == -1 or k >= num_src:
        if order == "raster":
            src = torch.arange(num_src, device=distances.device).expand(batch, -1)
        else:
            src = torch.argsort(best, dim=1, stable=True)
    else:
        if k < 1:
            raise ValueError(f"k must be >= 1, None or -1, got {k}")
        src = torch.argsort(best, dim=1, stable=True)[:, :k]
        if order == "raster":
            src = src.sort(dim=1).values
    return src, nearest.gather(1, src)


def select_matches(z_src: Tensor, z_tgt: Tensor, src_index: Tensor, tgt_index: Tensor) -> tuple[Tensor, Tensor]:
    """Gather matched embeddings. ``z_*``: ``(B, N, D)``; indices ``(B, k)``. Returns two ``(B, k, D)`` tensors."""
    dim = z_src.shape[-1]
    x = z_src.gather(1, src_index[..., None].expand(-1, -1, dim))
    y = z_tgt.gather(1, tgt_index[..., None].expand(-1, -1, dim))
    return x, y
