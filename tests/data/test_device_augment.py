"""DeviceAugment (data.augment_on=device): the official per-view distributions, output format, PIL agreement per
operation, identity, determinism, resolution groups, and two seeded training runs giving the same losses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter

from densessl.data.collate import Views, collate_views
from densessl.data.device_augment import (
    DeviceAugment,
    PhotometricParams,
    augment_seed,
    gaussian_blur,
    sample_params,
    view_parity,
)
from densessl.data.synthetic import render_scene
from densessl.data.transforms import MultiCrop, MultiCropConfig, _Photometric

OFFICIAL = MultiCropConfig()  # 2 x 224 + 6 x 96, the official VICRegL probabilities
SMALL = MultiCropConfig(global_size=32, local_size=16, n_local=4)
ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "pretrain" / "_tiny_test.yaml"


def _params(batch: int = 1, views: int = 1, **values) -> PhotometricParams:
    """Neutral parameters (nothing applied) with ``values`` set on every view."""
    shape = (batch, views)
    no = torch.zeros(shape, dtype=torch.bool)
    fields = {"jitter": no, "order": torch.arange(4).expand(*shape, 4), "brightness": torch.ones(shape),
              "contrast": torch.ones(shape), "saturation": torch.ones(shape), "hue": torch.zeros(shape),
              "grayscale": no, "blur": no, "sigma": torch.ones(shape), "solarize": no}
    for key, value in values.items():
        fields[key] = torch.as_tensor(value).expand_as(fields[key]) if key != "order" else \
            torch.as_tensor(value).expand(*shape, 4)
    return PhotometricParams(**fields)


def _single(image: Image.Image) -> Views:
    """One uint8 view of ``image`` (batch 1)."""
    return Views([TF.pil_to_tensor(image)[None, None]], torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.bool),
                 torch.ones(1, 2), 1)


def _levels(a: torch.Tensor, b: torch.Tensor, config: MultiCropConfig) -> torch.Tensor:
    """|a - b| of two normalized images in uint8 levels."""
    return ((a - b) * torch.tensor(config.std).view(3, 1, 1) * 255).abs()


def test_view_parity_follows_multicrop_groups() -> None:
    assert view_parity(2, 8).tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert view_parity(3, 6).tolist() == [0, 1, 0, 0, 1, 0]  # parity restarts in the local group


def test_sampled_distributions_match_the_official_recipe() -> None:
    """4000 images x 8 views: per-view probabilities and factor ranges of MultiCropConfig (3-4 sigma bounds)."""
    n = 4000
    params = sample_params(OFFICIAL, n, 8, 2, torch.Generator().manual_seed(0))

    def near(fraction: torch.Tensor, p: float) -> bool:
        return abs(float(fraction) - p) <= 4 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-9

    parity = view_parity(2, 8)
    for v in range(8):
        assert near(params.jitter[:, v].float().mean(), OFFICIAL.jitter_p), v
        assert near(params.grayscale[:, v].float().mean(), OFFICIAL.grayscale_p), v
        assert near(params.blur[:, v].float().mean(), OFFICIAL.blur_p[parity[v]]), v
        assert near(params.solarize[:, v].float().mean(), OFFICIAL.solarize_p[parity[v]]), v
    # Official per-view values: global view 1 always blurred and never solarized, view 2 blur 0.1 / solarize 0.2.
    assert bool(params.blur[:, 0].all()) and not bool(params.solarize[:, 0].any())
    assert near(params.blur[:, 1].float().mean(), 0.1) and near(params.solarize[:, 1].float().mean(), 0.2)
    # Factors: uniform on [1 - x, 1 + x] (hue on [-h, h]): range, mean and variance of a uniform, per view pooled.
    for name, low, high in (("brightness", 0.6, 1.4), ("contrast", 0.6, 1.4), ("saturation", 0.8, 1.2),
                            ("hue", -0.1, 0.1), ("sigma", 0.1, 2.0)):
        values = getattr(params, name).flatten()
        assert low <= float(values.min()) and float(values.max()) <= high, name
        assert abs(float(values.mean()) - (low + high) / 2) < 0.01 * (high - low), name
        assert abs(float(values.var()) - (high - low) ** 2 / 12) < 0.02 * (high - low) ** 2 / 12 * 4, name
        hist = torch.histc(values, bins=10, min=low, max=high) / values.numel()
        assert float((hist - 0.1).abs().max()) < 0.01, name
    # Jitter order: a uniform random permutation of the four ops (24 permutations equally likely).
    codes = (params.order * torch.tensor([64, 16, 4, 1])).sum(-1).flatten()
    counts = torch.bincount(codes, minlength=256)
    counts = counts[counts > 0].float()
    assert counts.numel() == 24 and float((counts / codes.numel() - 1 / 24).abs().max()) < 0.01


def test_applied_fractions_on_constant_images_match_the_probabilities() -> None:
    """Pixels, not parameters: 2000 images x 4 views of a constant colour through the real DeviceAugment."""
    config = MultiCropConfig(global_size=8, local_size=8, n_global=2, n_local=2, jitter_p=0.0, blur_p=(0.0, 0.0),
                             grayscale_p=0.3, solarize_p=(0.1, 0.6))
    n = 2000
    color = torch.tensor([250, 200, 150], dtype=torch.uint8).view(1, 1, 3, 1, 1)
    group = color.expand(n, 4, 3, 8, 8).contiguous()
    views = Views([group], torch.zeros(n, 4, 4), torch.zeros(n, 4, dtype=torch.bool), torch.ones(n, 2), 2)
    out = DeviceAugment(config)(views, torch.Generator().manual_seed(1)).images[0]
    pixels = out[..., 0, 0] * torch.tensor(config.std) + torch.tensor(config.mean)  # (n, 4, 3) in [0, 1]
    gray = (pixels[..., 0] - pixels[..., 1]).abs() < 1e-4
    solarized = pixels.max(dim=-1).values < 0.5  # every channel (and the gray, 209) is >= 128 and flips
    for v, p_solar in enumerate((0.1, 0.6, 0.1, 0.6)):
        tolerance = 4 * math.sqrt(0.25 / n)
        assert abs(float(gray[:, v].float().mean()) - 0.3) < tolerance
        assert abs(float(solarized[:, v].float().mean()) - p_solar) < tolerance


def test_output_dtype_shape_normalization_and_groups() -> None:
    images = [render_scene(i, (80, 64)).image for i in range(3)]
    config = MultiCropConfig(global_size=48, local_size=24, n_local=3)
    multicrop = MultiCrop(config, augment_on="device")
    views = collate_views([multicrop(image, torch.Generator().manual_seed(i)) for i, image in enumerate(images)])
    assert [g.dtype for g in views.images] == [torch.uint8, torch.uint8]
    out = DeviceAugment(config)(views, torch.Generator().manual_seed(0))
    assert [tuple(g.shape) for g in out.images] == [(3, 2, 3, 48, 48), (3, 3, 3, 24, 24)]
    assert all(g.dtype == torch.float32 and g.is_contiguous() for g in out.images)
    assert torch.equal(out.boxes, views.boxes) and torch.equal(out.flipped, views.flipped)
    low = (0 - torch.tensor(config.mean)) / torch.tensor(config.std)
    high = (1 - torch.tensor(config.mean)) / torch.tensor(config.std)
    for group in out.images:
        per_channel = group.transpose(0, 2).flatten(1)
        assert torch.all(per_channel.min(1).values >= low - 1e-5) and torch.all(per_channel.max(1).values <= high + 1e-5)
    with pytest.raises(ValueError, match="uint8"):
        DeviceAugment(config)(out, torch.Generator())


def test_no_augmentation_equals_the_loader_path() -> None:
    """All probabilities 0: the device output is the loader path's normalized crop (same geometry, float rounding)."""
    config = MultiCropConfig(global_size=40, local_size=24, n_local=3, jitter_p=0.0, grayscale_p=0.0,
                             blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))
    images = [render_scene(i, (90, 70)).image for i in range(2)]
    loader = collate_views([MultiCrop(config)(im, torch.Generator().manual_seed(i)) for i, im in enumerate(images)])
    device = collate_views([MultiCrop(config, augment_on="device")(im, torch.Generator().manual_seed(i))
                            for i, im in enumerate(images)])
    out = DeviceAugment(config)(device, torch.Generator().manual_seed(5))
    for a, b in zip(out.images, loader.images):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_each_operation_agrees_with_the_loader_path_pil_op() -> None:
    """Same factor, same op: device float result vs the loader's PIL result, within PIL's uint8 rounding."""
    image = render_scene(3, (64, 64)).image
    cases = [  # (config override, device params, loader draws, max mean |diff| in levels, max |diff|)
        ({"contrast": 0.0, "saturation": 0.0, "hue": 0.0}, {"jitter": True, "order": [0, 1, 2, 3], "brightness": 1.3},
         _Photometric(([0, 1, 2, 3], [1.3, 1, 1, 0]), False, None, False), 0.6, 1.01),
        ({"brightness": 0.0, "saturation": 0.0, "hue": 0.0}, {"jitter": True, "order": [1, 0, 2, 3], "contrast": 0.6},
         _Photometric(([1, 0, 2, 3], [1, 0.6, 1, 0]), False, None, False), 0.6, 1.01),
        ({"brightness": 0.0, "contrast": 0.0, "hue": 0.0}, {"jitter": True, "order": [2, 0, 1, 3], "saturation": 1.2},
         _Photometric(([2, 0, 1, 3], [1, 1, 1.2, 0]), False, None, False), 0.6, 1.5),
        ({"brightness": 0.0, "contrast": 0.0, "saturation": 0.0}, {"jitter": True, "order": [3, 0, 1, 2], "hue": 0.08},
         _Photometric(([3, 0, 1, 2], [1, 1, 1, 0.08]), False, None, False), 2.0, 12.0),  # PIL's 8-bit HSV
        ({}, {"grayscale": True}, _Photometric(None, True, None, False), 0.5, 1.01),
        ({}, {"blur": True, "sigma": 0.3}, _Photometric(None, False, 0.3, False), 1.2, 3.5),
        ({}, {"blur": True, "sigma": 1.7}, _Photometric(None, False, 1.7, False), 1.2, 3.5),
        ({}, {"solarize": True}, _Photometric(None, False, None, True), 0.5, 1.01),
        ({}, {"grayscale": True, "solarize": True}, _Photometric(None, True, None, True), 0.5, 1.01),
    ]
    for override, device_params, draws, mean_tol, max_tol in cases:
        config = MultiCropConfig(**{**OFFICIAL.__dict__, **override})
        loader = MultiCrop(config)
        expected = loader._to_tensor(loader._photometric(image, draws))
        got = DeviceAugment(config).apply(_single(image), _params(**device_params)).images[0][0, 0]
        diff = _levels(got, expected, config)
        assert float(diff.mean()) <= mean_tol and float(diff.max()) <= max_tol, (device_params, diff.mean(), diff.max())


def test_blur_is_pillows_gaussian_blur_including_borders() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (30, 41), dtype=np.uint8)
    array[-1] = 255
    for sigma in (0.1, 0.5, 1.0, 2.0):
        expected = np.asarray(Image.fromarray(array).filter(ImageFilter.GaussianBlur(sigma))).astype(np.float32)
        got = gaussian_blur(torch.tensor(array, dtype=torch.float32)[None, None], torch.tensor([sigma]), 2)
        assert float(np.abs(got[0, 0].numpy() - expected).max()) < 3.0, sigma  # Pillow rounds after each of 6 passes


def test_determinism_and_generator_dependence() -> None:
    images = [render_scene(i, (64, 64)).image for i in range(4)]
    multicrop = MultiCrop(SMALL, augment_on="device")
    views = collate_views([multicrop(im, torch.Generator().manual_seed(i)) for i, im in enumerate(images)])
    augment = DeviceAugment(SMALL)
    a = augment(views, torch.Generator().manual_seed(augment_seed(0, 1, 7)))
    b = augment(views, torch.Generator().manual_seed(augment_seed(0, 1, 7)))
    c = augment(views, torch.Generator().manual_seed(augment_seed(0, 1, 8)))
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images))
    assert not all(torch.equal(x, y) for x, y in zip(a.images, c.images))
    seeds = {augment_seed(0, 0, 0), augment_seed(0, 0, 1), augment_seed(0, 0, 0, rank=1), augment_seed(0, 0, 0, 0, 1),
             augment_seed(1, 0, 0)}
    assert len(seeds) == 5


def test_same_resolution_for_global_and_local_views_keeps_per_view_parity() -> None:
    """One resolution group holding global and local views: parameters still follow the view index."""
    config = MultiCropConfig(global_size=16, local_size=16, n_global=2, n_local=3, jitter_p=0.0, grayscale_p=0.0,
                             blur_p=(0.0, 0.0), solarize_p=(1.0, 0.0))
    views = collate_views([MultiCrop(config, augment_on="device")(render_scene(0, (40, 40)).image,
                                                                   torch.Generator().manual_seed(0))] * 2)
    assert views.group_counts == [5]
    out = DeviceAugment(config)(views, torch.Generator().manual_seed(0))
    plain = DeviceAugment(MultiCropConfig(**{**config.__dict__, "solarize_p": (0.0, 0.0)}))(views, torch.Generator())
    changed = [not torch.equal(out.view(v), plain.view(v)) for v in range(5)]
    assert changed == [True, False, True, False, True]  # global 0, local 0 and local 2 have parity 0


def test_two_device_augment_runs_with_one_seed_give_identical_losses(tmp_path: Path) -> None:
    from densessl.train.config import load_config
    from densessl.train.pretrain import train

    losses = []
    for name in ("a", "b"):
        cfg = load_config(TINY, ["train.max_iters=2", "data.augment_on=device", "train.device=cpu",
                                 "data.synthetic_images=8", "model.arch=resnet10t"])
        train(cfg, tmp_path / name)
        losses.append([json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
    assert len(losses[0]) == 2 and all(math.isfinite(x) for x in losses[0])
    assert losses[0] == losses[1]
