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
    with pytest.raises(ValueError, match=r"flip_p: must be in \[0, 1\], got 1.5"):
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


def test_collate_takes_the_view_target_pairs_of_a_torchvision_dataset() -> None:
    """A torchvision (or lightly) dataset with transform=MultiCrop yields (views, target); the loader batches them."""
    from torchvision.datasets import FakeData

    dataset = FakeData(size=3, image_size=(3, 80, 80), num_classes=4, transform=MultiCrop(SMALL))
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_views)))
    assert [tuple(g.shape) for g in batch.images] == [(3, 2, 3, 64, 64), (3, 3, 3, 32, 32)]
    assert batch.extras["target"].tolist() == [int(dataset[i][1]) for i in range(3)]
    with pytest.raises(ValueError, match="is the dataset's transform a MultiCrop"):
        collate_views([(torch.zeros(3, 8, 8), 0)])


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


# ------------------------------------------------------------------------------- augment_on="device", fast_decode
def _smooth_jpeg(path, width: int = 2000, height: int = 1500) -> None:
    """A smooth, detailed colour image (gradients, sinusoids, blocks) saved as a quality-95 JPEG."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / 37.0) * np.cos(y / 53.0)
    g = 255 * x / width
    b = 128 + 90 * np.sin((x + y) / 71.0)
    array = np.stack([r, g, b], axis=-1)
    array[300:700, 400:900] = (30, 200, 90)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path, quality=95)


def test_device_mode_keeps_the_geometry_and_skips_the_photometric_part() -> None:
    """Same seed: identical boxes/flips; uint8 crops equal the loader's crops wherever the loader changed nothing."""
    config = MultiCropConfig(global_size=48, local_size=24, n_local=4, jitter_p=0.5, grayscale_p=0.2,
                             blur_p=(0.5, 0.1), solarize_p=(0.0, 0.2))
    loader, device = MultiCrop(config), MultiCrop(config, augment_on="device")
    image = _image(150, 110)
    compared = 0
    for seed in range(12):
        a = loader(image, torch.Generator().manual_seed(seed))
        b = device(image, torch.Generator().manual_seed(seed))
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.flipped, b.flipped)
        assert all(c.dtype == torch.uint8 for c in b.crops)
        assert [tuple(c.shape) for c in b.crops] == [tuple(c.shape) for c in a.crops]
        plan = loader.plan(150, 110, torch.Generator().manual_seed(seed))
        for v, draws in enumerate(plan.photometric):
            if draws.jitter is None and not draws.grayscale and draws.blur_sigma is None and not draws.solarize:
                torch.testing.assert_close(loader._to_tensor(TF.to_pil_image(b.crops[v])), a.crops[v], atol=0, rtol=0)
                compared += 1
    assert compared >= 5


def test_plan_then_apply_equals_one_call() -> None:
    multicrop = MultiCrop(SMALL)
    image = _image()
    direct = multicrop(image, torch.Generator().manual_seed(3))
    planned = multicrop.apply(image, multicrop.plan(120, 90, torch.Generator().manual_seed(3)))
    assert all(torch.equal(x, y) for x, y in zip(direct.crops, planned.crops))
    assert torch.equal(direct.boxes, planned.boxes)
    with pytest.raises(ValueError, match="does not match a plan"):
        multicrop.apply(_image(100, 90), multicrop.plan(120, 90, torch.Generator()))


def test_decode_scale_is_the_largest_power_of_two_keeping_windows_at_least_the_crop() -> None:
    multicrop = MultiCrop(MultiCropConfig(global_size=224, local_size=96, n_global=2, n_local=1))
    plan = multicrop.plan(2000, 1500, torch.Generator().manual_seed(0))

    def with_windows(windows):
        return type(plan)(2000, 1500, windows, plan.flips, plan.photometric)

    assert multicrop.decode_scale(with_windows([(0, 0, 900, 1000), (0, 0, 1500, 2000), (0, 0, 400, 390)])) == 4
    assert multicrop.decode_scale(with_windows([(0, 0, 896, 1000), (0, 0, 1500, 2000), (0, 0, 800, 800)])) == 4
    assert multicrop.decode_scale(with_windows([(0, 0, 895, 1000), (0, 0, 1500, 2000), (0, 0, 800, 800)])) == 2
    assert multicrop.decode_scale(with_windows([(0, 0, 1800, 1850), (0, 0, 1792, 2000), (0, 0, 800, 800)])) == 8
    assert multicrop.decode_scale(with_windows([(0, 0, 300, 300), (0, 0, 1500, 2000), (0, 0, 800, 800)])) == 1


@pytest.mark.parametrize("augment_on", ["device", "loader"])
def test_fast_decode_keeps_boxes_and_crops_close_on_a_large_jpeg(tmp_path, augment_on: str) -> None:
    from densessl.data.images import load_image_reduced
    from densessl.data.pretrain_data import ImageFolder, PretrainDataset

    _smooth_jpeg(tmp_path / "big.jpg")
    folder = ImageFolder(tmp_path)
    multicrop = MultiCrop(MultiCropConfig(), augment_on=augment_on)  # the official 2 x 224 + 6 x 96
    exact = PretrainDataset(folder, multicrop, seed=0)
    fast = PretrainDataset(folder, multicrop, seed=0, fast_decode=True)
    scales = []
    for epoch in range(3):
        exact.set_epoch(epoch)
        fast.set_epoch(epoch)
        a, b = exact[0], fast[0]
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.flipped, b.flipped)
        assert torch.equal(a.image_size, b.image_size) and a.image_size.tolist() == [2000.0, 1500.0]
        for x, y in zip(a.crops, b.crops):
            assert x.dtype == y.dtype and x.shape == y.shape
            diff = (x.float() - y.float()).abs().mean()
            # uint8 levels (device) or normalized units (loader: about 1/58 per level)
            assert float(diff) < (1.0 if augment_on == "device" else 1.5 / 58), float(diff)
        plan = multicrop.plan(2000, 1500, torch.Generator().manual_seed(0))
        scales.append(load_image_reduced(folder.paths[0], lambda w, h, plan=plan: multicrop.decode_scale(plan)).scale)
    assert max(scales) >= 2  # the reduced decode was really used


def test_fast_decode_on_a_png_is_exact(tmp_path) -> None:
    from densessl.data.pretrain_data import ImageFolder, PretrainDataset

    _image(150, 110).save(tmp_path / "a.png")
    multicrop = MultiCrop(SMALL)
    a = PretrainDataset(ImageFolder(tmp_path), multicrop, seed=1)[0]
    b = PretrainDataset(ImageFolder(tmp_path), multicrop, seed=1, fast_decode=True)[0]
    assert all(torch.equal(x, y) for x, y in zip(a.crops, b.crops)) and torch.equal(a.boxes, b.boxes)


def test_geometry_only_config_keeps_crops_and_flips_only() -> None:
    from densessl.data.transforms import geometry_only_config

    config = geometry_only_config(64, global_scale=(0.3, 1.0))
    assert (config.n_global, config.global_size, config.n_local, config.global_scale) == (2, 64, 0, (0.3, 1.0))
    assert (config.jitter_p, config.grayscale_p, config.blur_p, config.solarize_p) == (0.0, 0.0, (0.0, 0.0), (0.0, 0.0))
    assert config.flip_p == 0.5 and config.sizes == [64, 64]
