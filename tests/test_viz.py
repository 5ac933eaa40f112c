"""PCA-to-RGB maps and the two-view match figure (needs matplotlib, the ``viz`` extra)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densessl.data.synthetic import SyntheticScenes
from densessl.data.transforms import CropViews, MultiCrop, MultiCropConfig
from densessl.diagnostics import match_precision

pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'densessl[viz]')")

from densessl.viz import draw_match_figure, fit_pca_coloring, pca_rgb, pca_rgb_joint  # noqa: E402

GEOMETRY_ONLY = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))


def test_pca_rgb_shape_range_and_structure() -> None:
    feats = torch.zeros(16, 4, 6)
    feats[0, :, :3] = 1.0  # left half one direction, right half another
    feats[1, :, 3:] = 1.0
    feats += 0.01 * torch.randn(16, 4, 6)
    rgb = pca_rgb(feats)
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.float32
    assert np.isfinite(rgb).all() and rgb.min() >= 0.0 and rgb.max() <= 1.0
    left, right = rgb[:, :3].reshape(-1, 3).mean(0), rgb[:, 3:].reshape(-1, 3).mean(0)
    assert np.abs(left - right).max() > 0.5
    assert np.allclose(pca_rgb(feats[None]), rgb)  # (1, C, h, w) accepted


def test_joint_pca_gives_comparable_colours() -> None:
    a = torch.randn(8, 5, 5)
    b = a.flip(-1)  # same cells, mirrored
    rgb_a, rgb_b = pca_rgb_joint([a, b])
    assert np.allclose(rgb_a, rgb_b[:, ::-1], atol=1e-6)
    assert np.allclose(pca_rgb(a, fit_on=[a, b]), rgb_a)
    smaller = pca_rgb_joint([a, torch.randn(8, 2, 3)])  # sizes may differ
    assert [m.shape for m in smaller] == [(5, 5, 3), (2, 3, 3)]
    assert all(np.isfinite(m).all() and m.min() >= 0.0 and m.max() <= 1.0 for m in (*smaller, rgb_a, rgb_b))
    few = pca_rgb(torch.randn(2, 3, 3))  # fewer than 3 channels
    assert few.shape == (3, 3, 3) and np.isfinite(few).all()
    with pytest.raises(ValueError, match=r"\(8, 5, 5\).*\(7, 5, 5\)"):
        fit_pca_coloring([a, torch.randn(7, 5, 5)])
    with pytest.raises(ValueError, match=r"\(5, 5\)"):
        pca_rgb(torch.randn(5, 5))


def _views(seed: int = 1, size: int = 64) -> tuple[Image.Image, CropViews]:
    image = SyntheticScenes(1, size=(96, 128), seed=0, split="val")[0].image
    multicrop = MultiCrop(MultiCropConfig(n_global=2, n_local=0, global_size=size, flip_p=0.5, **GEOMETRY_ONLY))
    return image, multicrop(image, torch.Generator().manual_seed(seed))


def test_match_figure_is_written_at_figsize_times_dpi(tmp_path: Path) -> None:
    image, views = _views()
    feats_a, feats_b = torch.randn(16, 4, 4), torch.randn(16, 4, 4)
    out = tmp_path / "sub" / "fig.png"
    summary = draw_match_figure(image, views, feats_a, feats_b, out, label="test", figsize=(14.0, 7.0), dpi=50)
    assert summary.out_path == str(out)
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (700, 350)
    expected = match_precision(feats_a[None], feats_b[None], views.boxes[:1], views.flipped[:1], views.boxes[1:],
                               views.flipped[1:], views.image_size[None])
    assert (summary.num_valid, summary.num_correct) == (expected.num_valid, expected.num_correct)
    assert expected.num_valid > 0  # the two views overlap: precision and chance are numbers, never NaN
    assert math.isfinite(summary.precision) and summary.precision == expected.precision
    assert math.isfinite(summary.chance) and summary.chance == pytest.approx(expected.chance)


def test_match_figure_perfect_features_and_query(tmp_path: Path) -> None:
    image, views = _views(seed=4)
    same = CropViews([views.crops[0], views.crops[0].flip(-1)], torch.stack([views.boxes[0]] * 2),
                     torch.tensor([bool(views.flipped[0]), not bool(views.flipped[0])]), views.image_size)
    feats = torch.eye(16).reshape(16, 4, 4)
    x1, y1, x2, y2 = same.boxes[0].tolist()
    query = ((x1 + x2) / 2, (y1 + y2) / 2)
    summary = draw_match_figure(image, same, feats, feats.flip(-1), tmp_path / "perfect.png", query_point=query,
                                dpi=40)
    assert summary.precision == 1.0 and summary.num_valid == 16
    assert summary.query_error_cells == pytest.approx(0.0)
    assert abs(summary.query_xy[0] - query[0]) <= (x2 - x1) / 4 and abs(summary.query_xy[1] - query[1]) <= (y2 - y1) / 4
    with pytest.raises(ValueError, match="outside view A"):
        draw_match_figure(image, same, feats, feats, tmp_path / "bad.png", query_point=(x2 + 0.01, y1) if x2 < 0.99
                          else (x1 - 0.01, y1), dpi=40)


def test_match_figure_without_overlap(tmp_path: Path) -> None:
    image, views = _views()
    apart = CropViews(views.crops, torch.tensor([[0.0, 0.0, 0.4, 0.4], [0.6, 0.6, 1.0, 1.0]]),
                      torch.tensor([False, True]), views.image_size)
    summary = draw_match_figure(image, apart, torch.randn(8, 4, 4), torch.randn(8, 4, 4), tmp_path / "apart.png",
                                dpi=40)
    assert summary.num_valid == 0 and math.isnan(summary.precision) and math.isnan(summary.query_error_cells)
    assert (tmp_path / "apart.png").stat().st_size > 0


def test_match_figure_rejects_wrong_image_or_pair(tmp_path: Path) -> None:
    image, views = _views()
    feats = torch.randn(8, 4, 4)
    with pytest.raises(ValueError, match="image is"):
        draw_match_figure(image.resize((50, 50)), views, feats, feats, tmp_path / "x.png")
    with pytest.raises(ValueError, match="pair"):
        draw_match_figure(image, views, feats, feats, tmp_path / "x.png", pair=(0, 0))
    with pytest.raises(ValueError, match=r"\(8, 4, 4\).*\(4, 4, 4\)"):
        draw_match_figure(image, views, feats, torch.randn(4, 4, 4), tmp_path / "x.png")
