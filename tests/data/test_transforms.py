"""MultiCrop: view counts and sizes, boxes inside the image, determinism, odd inputs, per-view augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from densessl.data.collate import collate_views
from densessl.data.transforms import MultiCrop, MultiCropConfig, sample_crop

SMALL = MultiCropConfig(global_size=64, local_size=32, n_global=2, n_local=3)


def _image(width: int = 120, height: int = 90, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).convert(mode)


def test_views_have_the_configured_sizes_and_boxes() -> None:
    views = MultiCrop(SMALL)(_image(), torch.Generator().manual_seed(0))
    assert [tuple(c.shape) for c in views.crops] == [(3, 64, 64)] * 2 + [(3, 32, 32)] * 3
    assert views.boxes.shape == (5, 4) and views.flipped.shape == (5,) and views.n_global == 2
    assert torch.all(views.boxes[:, :2] >= 0) and torch.all(views.boxes[:, 2:] <= 1)
    assert torch.all(views.boxes[:, 2:] > views.boxes[:, :2])
    assert views.image_size.tolist() == [120.0, 90.0]


def test_scale_ranges_are_respected() -> None:
    multicrop = MultiCrop(SMALL)
    for seed in range(10):
        views = multicrop(_image(), torch.Generator().manual_seed(seed))
        area = (views.boxes[:, 2] - views.boxes[:, 0]) * (views.boxes[:, 3] - views.boxes[:, 1])
        assert torch.all(area[:2] >= 0.4 - 0.03) and torch.all(area[2:] <= 0.4 + 0.03)


def test_same_generator_seed_gives_identical_views() -> None:
    multicrop = MultiCrop(SMALL)
    a = multicrop(_image(), torch.Generator().manual_seed(7))
    b = multicrop(_image(), torch.Generator().manual_seed(7))
    c = multicrop(_image(), torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a.crops, b.crops)) and torch.equal(a.boxes, b.boxes)
    assert not torch.equal(a.boxes, c.boxes)


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (20, 20), (500, 7)])
def test_tiny_and_extreme_images_work(size: tuple[int, int]) -> None:
    views = MultiCrop(SMALL)(_image(*size), torch.Generator().manual_seed(0))
    assert [tuple(c.shape) for c in views.crops] == [(3, 64, 64)] * 2 + [(3, 32, 32)] * 3
    assert torch.isfinite(torch.stack([c.mean() for c in views.crops])).all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_non_rgb_images_are_converted(mode: str) -> None:
    views = MultiCrop(SMALL)(_image(mode=mode), torch.Generator().manual_seed(0))
    assert views.crops[0].shape == (3, 64, 64)


def test_sample_crop_stays_inside_and_falls_back() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        top, left, h, w = sample_crop(37, 91, (0.08, 1.0), (0.75, 4 / 3), g)
        assert 0 <= top and top + h <= 37 and 0 <= left and left + w <= 91 and h > 0 and w > 0
    # A very wide image cannot fit the ratio range: the fallback is a centred crop at the closest ratio.
    top, left, h, w = sample_crop(10, 1000, (0.9, 1.0), (0.75, 4 / 3), g)
    assert (h, w) == (10, 13) and left == (1000 - 13) // 2


def test_photometric_asymmetry_per_view() -> None:
    """Even views of each size group are always blurred (p=1), odd views are never solarized when p=0."""
    config = MultiCropConfig(global_size=32, local_size=16, n_local=2, jitter_p=0.0, grayscale_p=0.0,
                             blur_p=(1.0, 0.0), solarize_p=(0.0, 0.0), flip_p=0.0, global_scale=(1.0, 1.0),
                             local_scale=(1.0, 1.0), ratio=(1.0, 1.0))
    image = _image(32, 32)
    views = MultiCrop(config)(image, torch.Generator().manual_seed(0))
    sharp = MultiCrop(MultiCropConfig(**{**config.__dict__, "blur_p": (0.0, 0.0)}))(image, torch.Generator())
    assert not torch.equal(views.crops[0], sharp.crops[0])  # blurred
    assert torch.equal(views.crops[1], sharp.crops[1])  # odd view: blur p = 0


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="global_scale"):
        MultiCrop(MultiCropConfig(global_scale=(0.5, 0.2)))
    with pytest.raises(ValueError, match="n_global"):
        MultiCrop(MultiCropConfig(n_global=0))
    with pytest.raises(ValueError, match="probabilities"):
        MultiCrop(MultiCropConfig(flip_p=1.5))
    with pytest.raises(TypeError, match="PIL image or a tensor"):
        MultiCrop(SMALL)(np.zeros((4, 4, 3)))


def test_collate_groups_views_by_resolution() -> None:
    multicrop = MultiCrop(SMALL)
    batch = collate_views([multicrop(_image(), torch.Generator().manual_seed(s)) for s in range(3)])
    assert [tuple(g.shape) for g in batch.images] == [(3, 2, 3, 64, 64), (3, 3, 3, 32, 32)]
    assert batch.boxes.shape == (3, 5, 4) and batch.flipped.shape == (3, 5) and batch.image_size.shape == (3, 2)
    assert batch.group_counts == [2, 3] and batch.num_views == 5 and batch.batch_size == 3
    assert torch.equal(batch.view(3), batch.images[1][:, 1])
    with pytest.raises(IndexError):
        batch.view(5)


def test_collate_rejects_mismatched_samples() -> None:
    a = MultiCrop(SMALL)(_image(), torch.Generator().manual_seed(0))
    b = MultiCrop(MultiCropConfig(global_size=48, local_size=32, n_local=3))(_image(), torch.Generator())
    with pytest.raises(ValueError, match="view shapes"):
        collate_views([a, b])
    with pytest.raises(ValueError, match="empty"):
        collate_views([])


def test_fast_pil_photometrics_equal_torchvision() -> None:
    """The LUT hue shift, the C grayscale and the fused normalization are pixel-identical to torchvision's."""
    from densessl.data.transforms import adjust_hue_pil, grayscale_pil

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8), "RGB")
    for hue in (-0.5, -0.1, -0.003, 0.0, 0.004, 0.07, 0.1, 0.5):
        assert np.array_equal(np.asarray(adjust_hue_pil(image, hue)), np.asarray(TF.adjust_hue(image, hue))), hue
    expected = np.asarray(TF.rgb_to_grayscale(image, num_output_channels=3))
    assert np.array_equal(np.asarray(grayscale_pil(image)), expected)
    config = MultiCropConfig()
    reference = TF.normalize(TF.pil_to_tensor(image).float() / 255.0, config.mean, config.std)
    torch.testing.assert_close(MultiCrop(config)._to_tensor(image), reference, atol=1e-5, rtol=0)
