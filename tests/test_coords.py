"""Crop geometry, checked to the pixel with coordinate-encoded images cropped by the real MultiCrop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from densessl import coords
from densessl.data.transforms import MultiCrop, MultiCropConfig

GEOMETRY_ONLY = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))


def test_grid_matches_official_oracle() -> None:
    # Crop top i=10, left j=20, h=70, w=140 of a 200 x 300 (H x W) image, 7 x 7 grid:
    # rows 15, 25, ..., 75 and columns 30, 50, ..., 150 in pixels (METHODS.md section 6).
    box = coords.crop_to_box(10, 20, 70, 140, 200, 300)[None]
    grid = coords.to_pixels(coords.cell_centers(box, torch.tensor([False]), 7, 7), torch.tensor([[300.0, 200.0]]))
    assert grid.shape == (1, 7, 7, 2)
    torch.testing.assert_close(grid[0, :, 0, 1], torch.arange(15.0, 76.0, 10.0))
    torch.testing.assert_close(grid[0, 0, :, 0], torch.arange(30.0, 151.0, 20.0))
    flipped = coords.to_pixels(coords.cell_centers(box, torch.tensor([True]), 7, 7), torch.tensor([[300.0, 200.0]]))
    torch.testing.assert_close(flipped[0, 0, :, 0], torch.arange(150.0, 29.0, -20.0))
    torch.testing.assert_close(flipped[..., 1], grid[..., 1])


def test_cell_centers_non_square_grid() -> None:
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    grid = coords.cell_centers(box, torch.tensor([False]), 2, 4)
    torch.testing.assert_close(grid[0, 0, :, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    torch.testing.assert_close(grid[0, :, 0, 1], torch.tensor([0.25, 0.75]))


def _sample(image: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear value of a (C, S, S) image at continuous pixel coordinates (pixel p's centre is p + 0.5)."""
    size = image.shape[-1]
    grid = torch.stack([x / size * 2 - 1, y / size * 2 - 1], dim=-1)[None, None]  # (1, 1, K, 2)
    return F.grid_sample(image[None].double(), grid.double(), align_corners=False)[0, :, 0]  # (C, K)


def _check_views_against_grid(views, width: int, height: int, decode, tolerance: float) -> None:
    image_size = views.image_size[None]
    for v, crop in enumerate(views.crops):
        size = crop.shape[-1]
        for cells in (1, 3, 7):
            grid = coords.to_pixels(
                coords.cell_centers(views.boxes[v : v + 1], views.flipped[v : v + 1], cells, cells), image_size
            )[0]
            # Where the centre of cell (r, c) lies inside the crop, in crop pixels.
            u = (torch.arange(cells) + 0.5) * size / cells
            uu, vv = torch.meshgrid(u, u, indexing="xy")
            values = decode(_sample(crop, uu.flatten(), vv.flatten()))  # (2, K): encoded (x, y) of the source pixel
            # A pixel stores its own index, so the value at continuous coordinate t is t - 0.5.
            expected = grid.reshape(-1, 2).T.double() - 0.5
            error = (values - expected).abs().max().item()
            assert error < tolerance, f"view {v} ({size}px, flipped={bool(views.flipped[v])}), {cells}x{cells}: {error}"


@pytest.mark.parametrize("seed", range(4))
def test_grid_to_the_pixel_float_image(seed: int) -> None:
    """A float image whose channels hold each pixel's own (x, y), cropped, resized and flipped by MultiCrop."""
    height, width = 180, 300
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    image = torch.stack([xs, ys, torch.zeros_like(xs)]).float() / 1000.0
    config = MultiCropConfig(global_size=96, local_size=48, n_local=4, flip_p=0.5, mean=(0, 0, 0), std=(1, 1, 1),
                             global_scale=(0.3, 1.0), local_scale=(0.2, 0.5), **GEOMETRY_ONLY)
    views = MultiCrop(config)(image, torch.Generator().manual_seed(seed))
    _check_views_against_grid(views, width, height, lambda v: v[:2] * 1000.0, tolerance=0.05)


@pytest.mark.parametrize("seed", range(3))
def test_grid_to_the_pixel_uint8_pil_image(seed: int) -> None:
    """The PIL path (bicubic, 8-bit rounding, normalization) lands within a pixel of the grid."""
    height, width = 160, 240
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    array = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    config = MultiCropConfig(global_size=96, local_size=48, n_local=2, global_scale=(0.5, 1.0),
                             local_scale=(0.3, 0.6), flip_p=0.5, **GEOMETRY_ONLY)
    views = MultiCrop(config)(Image.fromarray(array), torch.Generator().manual_seed(seed))
    mean = torch.tensor(config.mean, dtype=torch.float64)[:, None]
    std = torch.tensor(config.std, dtype=torch.float64)[:, None]
    _check_views_against_grid(views, width, height, lambda v: ((v * std + mean) * 255.0)[:2], tolerance=1.0)


def test_flip_is_exercised() -> None:
    config = MultiCropConfig(global_size=32, local_size=16, flip_p=0.5, **GEOMETRY_ONLY)
    flips = torch.cat([MultiCrop(config)(torch.rand(3, 40, 40), torch.Generator().manual_seed(s)).flipped
                       for s in range(4)])
    assert flips.any() and not flips.all()


def test_pairwise_distances_and_ties_are_exact() -> None:
    a = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])
    b = torch.tensor([[[0.0, 0.0], [6.0, 8.0], [3.0, 4.0]]])
    d = coords.pairwise_distances(a, b)
    torch.testing.assert_close(d, torch.tensor([[[0.0, 10.0, 5.0], [5.0, 5.0, 0.0]]]))
    grid = torch.rand(2, 3, 4, 2)
    assert coords.pairwise_distances(grid, grid).shape == (2, 12, 12)


def test_box_overlap() -> None:
    a = torch.tensor([0.0, 0.0, 0.5, 0.5])
    b = torch.tensor([0.25, 0.25, 0.75, 0.75])
    assert coords.box_area(coords.box_intersection(a, b)).item() == pytest.approx(0.0625)
    assert coords.box_iou(a, b).item() == pytest.approx(0.0625 / (0.25 + 0.25 - 0.0625))
    c = torch.tensor([0.6, 0.6, 0.9, 0.9])
    assert coords.box_area(coords.box_intersection(a, c)).item() == 0.0
    assert coords.box_iou(a, c).item() == 0.0
    assert coords.box_iou(a, a).item() == pytest.approx(1.0)


def test_bin_diagonal() -> None:
    boxes = torch.tensor([[0.0, 0.0, 0.7, 0.7]])
    assert coords.bin_diagonal(boxes, 7, 7).item() == pytest.approx((2 * 0.1**2) ** 0.5)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="boxes"):
        coords.cell_centers(torch.zeros(2, 3), torch.zeros(2, dtype=torch.bool), 3, 3)
    with pytest.raises(ValueError, match="flipped"):
        coords.cell_centers(torch.zeros(2, 4), torch.zeros(3, dtype=torch.bool), 3, 3)
    with pytest.raises(ValueError, match="grid size"):
        coords.cell_centers(torch.zeros(2, 4), torch.zeros(2, dtype=torch.bool), 0, 3)
    with pytest.raises(ValueError, match="image_size"):
        coords.to_pixels(torch.zeros(2, 3, 3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="crop size"):
        coords.crop_to_box(0, 0, 0, 5, 10, 10)
