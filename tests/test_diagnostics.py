"""Label-free match precision and collapse monitors (RankMe, per-dimension std)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from densessl import coords
from densessl.backbones import DenseBackbone
from densessl.data.transforms import MultiCrop, MultiCropConfig
from densessl.diagnostics import (
    collapse_summary,
    dense_rankme,
    geometric_matches,
    learned_matches,
    match_precision,
    match_precision_over_dataset,
    per_dim_std,
    rankme,
)

GEOMETRY_ONLY = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))
NO_FLIP = torch.tensor([False])
FLIP = torch.tensor([True])
SIZE = torch.tensor([[200.0, 200.0]])  # (W, H)


def _one_hot(h: int, w: int) -> torch.Tensor:
    """(1, h*w, h, w): every cell has its own direction."""
    return torch.eye(h * w).reshape(h * w, h, w)[None]


def _position_features(xy: torch.Tensor, dim: int = 2048, bandwidth: float = 20.0) -> torch.Tensor:
    """Random Fourier features of pixel positions ``(B, h, w, 2) -> (B, dim, h, w)``: dot product ~ Gaussian kernel."""
    generator = torch.Generator().manual_seed(123)
    freqs = torch.randn(2, dim, generator=generator) / bandwidth
    phase = torch.rand(dim, generator=generator) * 2 * math.pi
    return torch.cos(xy @ freqs + phase).permute(0, 3, 1, 2)


def _position_features_of(boxes: torch.Tensor, flipped: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return _position_features(coords.to_pixels(coords.cell_centers(boxes, flipped, h, w), SIZE.expand(len(boxes), 2)))


def test_identical_views_with_distinctive_features_score_one() -> None:
    box = torch.tensor([[0.1, 0.2, 0.8, 0.9]])
    feats = _one_hot(7, 7)
    result = match_precision(feats, feats, box, NO_FLIP, box, NO_FLIP, SIZE)
    assert result.precision == 1.0
    assert result.num_valid == result.num_correct == result.num_matches == 49
    # Chance with square cells and a 1-cell radius: the cell and its 4-neighbours (fewer at the border).
    expected_chance = sum(
        sum(1 for r2 in range(7) for c2 in range(7) if abs(r - r2) + abs(c - c2) <= 1)
        for r in range(7)
        for c in range(7)
    ) / 49**2
    assert result.chance == pytest.approx(expected_chance)


def test_flipped_identical_crop_needs_flipped_features() -> None:
    box = torch.tensor([[0.2, 0.2, 0.9, 0.9]])
    feats = _one_hot(7, 7)
    # The flipped view's column c shows column w - 1 - c of the unflipped crop, and so do its features.
    good = match_precision(feats, feats.flip(-1), box, NO_FLIP, box, FLIP, SIZE)
    assert good.precision == 1.0
    # Same features but the view marked flipped: only the middle column (mirrored onto itself) is right.
    bad = match_precision(feats, feats, box, NO_FLIP, box, FLIP, SIZE)
    assert bad.precision == pytest.approx(1 / 7)
    # ...and ignoring a flip that happened is just as wrong.
    assert match_precision(feats, feats.flip(-1), box, NO_FLIP, box, NO_FLIP, SIZE).precision == pytest.approx(1 / 7)


@pytest.mark.parametrize("flip_a,flip_b", [(False, False), (False, True), (True, True)])
def test_different_overlapping_crops_with_position_features_score_one(flip_a: bool, flip_b: bool) -> None:
    boxes_a = torch.tensor([[0.0, 0.1, 0.7, 0.9], [0.3, 0.3, 0.7, 0.7]])
    boxes_b = torch.tensor([[0.25, 0.0, 1.0, 0.6], [0.1, 0.05, 0.95, 0.9]])  # scale differs too
    fa_flags, fb_flags = torch.tensor([flip_a, flip_a]), torch.tensor([flip_b, flip_b])
    size = SIZE.expand(2, 2)
    feats_a = _position_features_of(boxes_a, fa_flags, 7, 7)
    feats_b = _position_features_of(boxes_b, fb_flags, 5, 6)
    result = match_precision(feats_a, feats_b, boxes_a, fa_flags, boxes_b, fb_flags, size)
    assert 0 < result.num_valid < result.num_matches == 98
    assert result.precision == 1.0
    # Each learned match is the geometric (nearest-location) one, up to near-ties between equidistant cells.
    learned = learned_matches(feats_a, feats_b, boxes_a, fa_flags, boxes_b, fb_flags, size)
    geometric = geometric_matches(boxes_a, fa_flags, boxes_b, fb_flags, size, (7, 7), (5, 6))
    assert torch.equal(learned.valid, geometric.valid) and bool(geometric.correct[geometric.valid].all())
    same = (learned.tgt_index == geometric.tgt_index)[learned.valid].float().mean()
    assert same > 0.9
    excess = (learned.error_px - geometric.error_px)[learned.valid]
    assert excess.max() < 0.1 * learned.tolerance_px.min()
    # Features computed as if b were not flipped when it was (or vice versa) break the matches.
    if flip_b:
        wrong_b = _position_features_of(boxes_b, ~fb_flags, 5, 6)
        assert match_precision(feats_a, wrong_b, boxes_a, fa_flags, boxes_b, fb_flags, size).precision < 0.5


def test_real_multicrop_pixels_agree_with_the_geometry() -> None:
    """Features read from the crop pixels of a coordinate-encoded image give precision 1 through real MultiCrop."""
    height, width = 96, 128
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    image = torch.stack([xs / width, ys / height, torch.full_like(xs, 0.5)])  # (3, H, W) in [0, 1]
    config = MultiCropConfig(n_global=2, n_local=0, global_size=64, global_scale=(0.3, 0.8), flip_p=0.5,
                             **GEOMETRY_ONLY)
    multicrop = MultiCrop(config)
    flips_seen = set()
    for seed in range(8):
        views = multicrop(image, torch.Generator().manual_seed(seed))
        mean, std = torch.tensor(config.mean)[:, None, None], torch.tensor(config.std)[:, None, None]
        feats = []
        for crop in views.crops:
            pixels = F.adaptive_avg_pool2d((crop * std + mean)[None], (6, 6))  # (1, 3, 6, 6), cell averages
            xy = torch.stack([pixels[:, 0] * width, pixels[:, 1] * height], dim=-1)  # (1, 6, 6, 2) pixel positions
            feats.append(_position_features(xy))
        flips_seen.update(views.flipped.tolist())
        result = match_precision(feats[0], feats[1], views.boxes[:1], views.flipped[:1], views.boxes[1:],
                                 views.flipped[1:], views.image_size[None])
        if result.num_valid:
            assert result.precision == 1.0, (seed, result)
    assert flips_seen == {True, False}


def test_random_features_score_near_chance() -> None:
    batch = 200
    generator = torch.Generator().manual_seed(0)
    boxes_a = torch.tensor([[0.0, 0.0, 0.7, 0.7]]).expand(batch, 4)
    boxes_b = torch.tensor([[0.2, 0.1, 1.0, 0.9]]).expand(batch, 4)
    flips = torch.zeros(batch, dtype=torch.bool)
    feats_a = torch.randn(batch, 64, 7, 7, generator=generator)
    feats_b = torch.randn(batch, 64, 7, 7, generator=generator)
    result = match_precision(feats_a, feats_b, boxes_a, flips, boxes_b, flips, SIZE.expand(batch, 2))
    assert result.num_valid > 0
    # A uniformly random match is right for the fraction of b's cells within the radius.
    assert 0.05 < result.chance < 0.15
    assert result.precision == pytest.approx(result.chance, abs=0.02)


def test_radius_is_in_cells_of_view_b() -> None:
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    feats = _one_hot(4, 4)
    shifted = feats.roll(1, dims=-1)  # every match lands one column off
    assert match_precision(feats, shifted, box, NO_FLIP, box, NO_FLIP, SIZE, radius_cells=0.5).precision == 0.0
    # One column off is within 1 cell, except at the wrap-around (3 columns off).
    assert match_precision(feats, shifted, box, NO_FLIP, box, NO_FLIP, SIZE, radius_cells=1.0).precision == 0.75
    assert match_precision(feats, shifted, box, NO_FLIP, box, NO_FLIP, SIZE, radius_cells=3.0).precision == 1.0


def test_disjoint_views_have_no_valid_cells() -> None:
    feats = _one_hot(3, 3)
    result = match_precision(feats, feats, torch.tensor([[0.0, 0.0, 0.4, 0.4]]), NO_FLIP,
                             torch.tensor([[0.5, 0.5, 1.0, 1.0]]), NO_FLIP, SIZE)
    assert result.num_valid == 0 and result.num_matches == 9
    assert math.isnan(result.precision) and math.isnan(result.chance)


def test_bad_shapes_raise_with_the_shapes() -> None:
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"\(1, 9, 3, 3\).*\(1, 8, 3, 3\)"):
        match_precision(_one_hot(3, 3), torch.zeros(1, 8, 3, 3), box, NO_FLIP, box, NO_FLIP, SIZE)
    with pytest.raises(ValueError, match=r"boxes_b.*\(2, 4\)"):
        match_precision(_one_hot(3, 3), _one_hot(3, 3), box, NO_FLIP, box.expand(2, 4), NO_FLIP, SIZE)
    with pytest.raises(ValueError, match=r"radius_cells"):
        match_precision(_one_hot(3, 3), _one_hot(3, 3), box, NO_FLIP, box, NO_FLIP, SIZE, radius_cells=-1.0)


def test_match_precision_over_dataset_is_deterministic_and_restores_mode() -> None:
    images = [Image.new("RGB", (80, 64), (10 * i, 100, 200 - 10 * i)) for i in range(3)]
    images[1].paste((255, 0, 0), (10, 10, 40, 30))
    backbone = DenseBackbone("resnet18").train()
    multicrop = MultiCrop(MultiCropConfig(n_global=2, n_local=1, global_size=64, local_size=32, **GEOMETRY_ONLY))
    first = match_precision_over_dataset(backbone, images, multicrop, seed=3, batch_size=2)
    second = match_precision_over_dataset(backbone, images, multicrop, seed=3, batch_size=3, symmetric=True)
    assert backbone.training
    assert (first.num_matches, first.num_valid, first.num_correct) == (second.num_matches, second.num_valid,
                                                                       second.num_correct)
    assert first.chance == pytest.approx(second.chance)
    assert first.num_matches == 3 * 2 * 4  # images x directions x 2x2 cells
    assert 0 < first.num_valid <= first.num_matches and 0.0 <= first.precision <= 1.0
    one_way = match_precision_over_dataset(backbone, images, multicrop, seed=3, batch_size=3, symmetric=False)
    assert one_way.num_matches == first.num_matches // 2
    with pytest.raises(ValueError, match="n_global=1"):
        match_precision_over_dataset(backbone, images, MultiCrop(MultiCropConfig(n_global=1, n_local=0)))


def test_rankme_of_constructed_low_rank_data() -> None:
    generator = torch.Generator().manual_seed(0)
    for k in (1, 3, 8):
        left, _ = torch.linalg.qr(torch.randn(200, k, generator=generator, dtype=torch.float64))
        right, _ = torch.linalg.qr(torch.randn(32, k, generator=generator, dtype=torch.float64))
        equal = left @ right.T  # k equal singular values
        assert rankme(equal) == pytest.approx(k, rel=1e-3)
        assert rankme(5.0 * equal) == pytest.approx(rankme(equal))
    rank_one = torch.randn(100, 1, generator=generator) @ torch.randn(1, 64, generator=generator)
    assert rankme(rank_one) == pytest.approx(1.0, abs=0.01)
    full = torch.randn(500, 16, generator=generator)
    assert 14.0 < rankme(full) <= 16.0
    assert math.isnan(rankme(torch.zeros(4, 4)))
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        rankme(torch.zeros(2, 3, 4))


def test_dense_rankme_flattens_cells() -> None:
    maps = torch.randn(2, 8, 3, 4)
    assert dense_rankme(maps) == pytest.approx(rankme(maps.permute(0, 2, 3, 1).reshape(-1, 8)))
    constant = torch.ones(2, 8, 3, 4)  # every cell the same vector
    assert dense_rankme(constant) == pytest.approx(1.0, abs=0.01)


def test_per_dim_std_and_collapse_summary() -> None:
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(4000, 64, generator=generator)
    assert per_dim_std(spread).shape == (64,)
    assert per_dim_std(spread).mean().item() == pytest.approx(1 / 8, rel=0.05)
    collapsed = torch.randn(1, 64, generator=generator).expand(100, 64) * torch.rand(100, 1, generator=generator)
    assert per_dim_std(collapsed).abs().max().item() < 1e-5  # same direction, any norm
    summary = collapse_summary(spread[:256], torch.randn(2, 32, 4, 4, generator=generator))
    assert set(summary) == {"rankme_global", "rankme_local", "std_global", "std_local"}
    assert all(isinstance(v, float) for v in summary.values())
    assert summary["rankme_local"] > 20 and summary["std_local"] == pytest.approx(1 / math.sqrt(32), rel=0.2)
    with pytest.raises(ValueError, match=r"\(1, 64\)"):
        per_dim_std(spread[:1])


def test_core_modules_do_not_import_matplotlib() -> None:
    code = (
        "import sys, densessl, densessl.diagnostics, densessl.viz, densessl.backbones, densessl.coords\n"
        "import densessl.objectives, densessl.train.pretrain\n"
        "assert 'matplotlib' not in sys.modules, sorted(m for m in sys.modules if 'matplotlib' in m)[:3]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
