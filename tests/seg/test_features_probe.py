"""Eval transform, feature extraction and the linear probe (on a trivially separable fixture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from densessl.seg.dataset import SegSample, SyntheticSegmentation
from densessl.seg.features import (
    FeatureConfig,
    SegEvalTransform,
    extract_features,
    resize_concat,
    resolve_levels,
)
from densessl.seg.linear import LinearProbeConfig, LinearSegHead, run_linear_probe
from tests.seg.helpers import MeanColourBackbone, SplitColours


def _sample(width: int, height: int) -> SegSample:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, width // 2 :] = 1
    mask[:2] = 255
    image = Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8))
    return SegSample(image=image, mask=mask, name="s")


def test_shorter_side_crop_geometry_and_nearest_mask() -> None:
    image, mask = SegEvalTransform(16, "shorter_crop")(_sample(40, 20))  # resized to 32 x 16, crop x in [8, 24)
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert mask.shape == (16, 16) and mask.dtype == torch.uint8
    assert set(mask.unique().tolist()) == {0, 1, 255}
    assert mask[2:, :8].eq(0).all() and mask[2:, 8:].eq(1).all()
    # grey 128 normalized with ImageNet mean/std
    assert image[0, 0, 0].item() == pytest.approx((128 / 255 - 0.485) / 0.229, abs=1e-5)


def test_square_mode_keeps_everything_and_ignore_survives() -> None:
    _, mask = SegEvalTransform(20, "square")(_sample(40, 20))
    assert mask.shape == (20, 20)
    assert set(mask.unique().tolist()) == {0, 1, 255}


def test_transform_rejects_mismatched_mask() -> None:
    sample = _sample(8, 8)
    sample.mask = sample.mask[:4]
    with pytest.raises(ValueError, match=r"mask shape \(4, 8\)"):
        SegEvalTransform(8)(sample)
    with pytest.raises(ValueError, match="resize_mode"):
        FeatureConfig(resize_mode="stretch").validate()


def test_resolve_levels_and_resize_concat() -> None:
    stub = MeanColourBackbone()
    assert resolve_levels(stub, (-1,)) == [0]
    with pytest.raises(ValueError, match="not returned by the backbone"):
        resolve_levels(stub, (1,))
    maps = [torch.ones(2, 3, 8, 8), torch.zeros(2, 5, 4, 4)]
    assert resize_concat(maps).shape == (2, 8, 4, 4)


def test_resolve_levels_on_dense_backbone() -> None:
    from densessl.backbones import DenseBackbone

    backbone = DenseBackbone("resnet18", levels=(2, -1))
    assert resolve_levels(backbone, (-1,)) == [1]
    assert resolve_levels(backbone, (2, 4)) == [0, 1]
    with pytest.raises(ValueError, match=r"levels=\[3\]"):
        resolve_levels(backbone, (3,))


def test_extract_features_shapes_dtypes_and_mode_restored() -> None:
    stub = MeanColourBackbone()
    stub.train()
    bank = extract_features(stub, SplitColours(5), FeatureConfig(input_size=32, batch_size=2, progress=False))
    assert bank.features.shape == (5, 3, 4, 4) and bank.features.dtype == torch.float16
    assert bank.masks.shape == (5, 32, 32) and bank.masks.dtype == torch.uint8
    assert bank.names == [f"split_{i}" for i in range(5)] and stub.training


def test_extract_features_real_backbone_eval_mode() -> None:
    from densessl.backbones import DenseBackbone

    backbone = DenseBackbone("resnet18", levels=(3, 4))
    cfg = FeatureConfig(input_size=64, levels=(3, 4), batch_size=4, progress=False)
    bank = extract_features(backbone, SyntheticSegmentation("val", num_images=3, size=(48, 64)), cfg)
    assert bank.features.shape == (3, 256 + 512, 2, 2)
    assert bank.masks.shape == (3, 64, 64)
    again = extract_features(backbone, SyntheticSegmentation("val", num_images=3, size=(48, 64)), cfg)
    assert torch.equal(bank.features, again.features)  # eval mode: BN running stats, no batch dependence


def test_linear_head_layout() -> None:
    head = LinearSegHead(6, 4, dropout=0.2)
    assert [type(m).__name__ for m in head.children()] == ["BatchNorm2d", "Dropout2d", "Conv2d"]
    assert head(torch.randn(2, 6, 3, 3)).shape == (2, 4, 3, 3)


def test_linear_probe_separable_fixture_and_determinism() -> None:
    train, val = SplitColours(24, seed=0), SplitColours(8, seed=1)
    cfg = LinearProbeConfig(input_size=32, epochs=5, head_batch_size=8, progress=False, seed=3)
    state = torch.get_rng_state()
    first = run_linear_probe(MeanColourBackbone(), train, val, cfg)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert first.metrics.miou > 90.0
    assert first.class_names == ["green", "red", "blue"]
    settings = first.settings
    assert settings["protocol"] == "linear" and settings["input_size"] == 32 and settings["epochs"] == 5
    assert settings["feature_size"] == [4, 4] and settings["feature_channels"] == 3
    assert settings["num_train"] == 24 and settings["num_val"] == 8 and settings["steps"] == 15
    second = run_linear_probe(MeanColourBackbone(), train, val, cfg)
    assert second.metrics == first.metrics


def test_linear_probe_rejects_mismatched_splits() -> None:
    with pytest.raises(ValueError, match="3 classes but val has 7"):
        run_linear_probe(MeanColourBackbone(), SplitColours(2), SyntheticSegmentation("val", 2),
                         LinearProbeConfig(progress=False))
    with pytest.raises(ValueError, match="optimizer"):
        LinearProbeConfig(optimizer="lbfgs").validate()


@pytest.mark.parametrize(("h", "w", "H", "W"), [(7, 7, 224, 224), (4, 6, 64, 96), (5, 3, 5, 3), (3, 4, 10, 7)])
def test_matrix_upsampling_equals_bilinear_interpolate(h: int, w: int, H: int, W: int) -> None:
    """The probe's separable-matrix upsampling is torch's bilinear ``align_corners=False`` interpolation."""
    from densessl.seg.linear import interpolation_matrix

    x = torch.randn(2, 3, h, w)
    expected = torch.nn.functional.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    got = torch.einsum("bkhw,hH,wW->bkHW", x, interpolation_matrix(h, H), interpolation_matrix(w, W))
    assert torch.allclose(got, expected, atol=1e-5)
