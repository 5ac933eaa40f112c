"""The real-photo benchmark builder (densessl.data.photo_benchmark) on a small fake package tree.

The real packages are never fetched here: the tree below mimics their layout (a Tux Paint ``stamps/`` folder and
photo folders) with generated images: textured noise stands in for photographs and cut-outs, flat fills for drawings.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from densessl.data.detection import CocoDetection
from densessl.data.photo_benchmark import CLASSES, build, compose_scene, is_drawing, is_photo
from densessl.data.seg_readers import FolderSegmentation


def _photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A colourful textured image (passes ``is_photo``): smooth colour field plus noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC), dtype=np.float32)
    return Image.fromarray(np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8))


def _cutout(seed: int, size: int = 96, flat: bool = False) -> Image.Image:
    """An RGBA cut-out: an ellipse of texture (a "photo") or of one flat colour (a "drawing")."""
    rgb = Image.new("RGB", (size, size), (200, 40, 40)) if flat else _photo(seed, (size, size))
    alpha = Image.new("L", (size, size), 0)
    ImageDraw.Draw(alpha).ellipse((8, 12, size - 8, size - 12), fill=255)
    rgb.putalpha(alpha)
    return rgb


def test_photo_and_drawing_tests() -> None:
    assert is_photo(np.asarray(_photo(0), dtype=np.float32))
    assert not is_photo(np.full((240, 320, 3), 128, np.float32))  # flat grey
    grey = np.asarray(_photo(1).convert("L").convert("RGB"), dtype=np.float32)
    assert not is_photo(grey)  # no colour
    assert not is_drawing(np.asarray(_cutout(2)))
    assert is_drawing(np.asarray(_cutout(2, flat=True)))


def test_compose_scene_masks_agree() -> None:
    rng = random.Random(0)
    scene = compose_scene(_photo(0, (640, 480)), [(_cutout(1), 3), (_cutout(2), 5)], rng, size=(200, 150))
    assert scene.image.size == (200, 150) and scene.image.mode == "RGB"
    assert scene.semantic.shape == scene.instances.shape == (150, 200)
    assert set(np.unique(scene.semantic)) <= {0, 3, 5}
    for k, label in enumerate(scene.labels, start=1):
        pixels = scene.instances == k
        assert pixels.sum() >= 64
        assert (scene.semantic[pixels] == label).all()  # an instance's pixels carry its class
    assert (scene.semantic[scene.instances == 0] == 0).sum() > 0  # background remains
    # Same seed, same scene.
    again = compose_scene(_photo(0, (640, 480)), [(_cutout(1), 3), (_cutout(2), 5)], random.Random(0),
                          size=(200, 150))
    assert np.array_equal(np.asarray(again.image), np.asarray(scene.image))


def _fake_sources(root: Path) -> Path:
    stamps = root / "tuxpaint-stamps-default" / "usr" / "share" / "tuxpaint" / "stamps"
    for k, folder in enumerate(["animals/birds", "food/fruit", "plants/flowers"]):
        (stamps / folder).mkdir(parents=True)
        for j in range(4):
            _cutout(10 * k + j).save(stamps / folder / f"item{j}.png")
        _cutout(0, flat=True).save(stamps / folder / "drawing.png")  # dropped: a flat-filled drawing
        _cutout(1).save(stamps / folder / "item0_mirror.png")  # dropped: a mirrored duplicate
    photos = root / "some-wallpapers" / "usr" / "share" / "wallpapers"
    photos.mkdir(parents=True)
    for k in range(12):
        _photo(100 + k).save(photos / f"photo{k}.jpg", quality=92)
    _photo(100).resize((640, 480)).save(photos / "photo0_large.jpg")  # near-duplicate of photo0: kept once
    Image.new("RGB", (320, 240), (30, 30, 30)).save(photos / "flat.png")  # not a photo
    return root


def test_build_writes_a_readable_benchmark(tmp_path: Path) -> None:
    sources = _fake_sources(tmp_path / "sources")
    out = tmp_path / "photos"
    counts = build(sources, out, train_scenes=6, val_scenes=3, progress=False)
    assert counts["stamps_train"] + counts["stamps_val"] == 12  # 3 groups x 4 photographic cut-outs
    assert counts["photos_train"] + counts["photos_val"] == 12  # the flat image and the duplicate are dropped
    assert json.loads((out / "counts.json").read_text()) == counts
    assert (out / "seg" / "classes.txt").read_text().split() == list(CLASSES)

    pretrain = sorted(p.name for p in (out / "pretrain").iterdir())
    assert sum(name.startswith("scene_") for name in pretrain) == 6  # the train composites join the pool
    assert sum(name.startswith("photo_") for name in pretrain) == counts["photos_train"]

    for split, total in (("train", 6), ("val", 3)):
        dataset = FolderSegmentation(out / "seg", split)
        assert len(dataset) == total and dataset.num_classes == len(CLASSES)
        sample = dataset[0]
        assert sample.image.size == (400, 300) and sample.mask.shape == (300, 400)
        detection = CocoDetection(out / "seg" / "images" / split, out / "seg" / "annotations" /
                                  f"instances_{split}.json", with_masks=True)
        assert len(detection) == total
        _, target = detection[0]
        assert len(target["boxes"]) == len(target["labels"]) >= 1
    # Train and val never share a cut-out or a background photo.
    lines = (out / "SOURCES.txt").read_text().splitlines()
    used = {split: {line.split()[-1] for line in lines if line.split()[1:2] == [split]} for split in ("train", "val")}
    assert used["train"] and used["val"] and not used["train"] & used["val"]


def test_build_names_the_missing_package(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="tuxpaint-stamps-default"):
        build(tmp_path / "empty", tmp_path / "out", progress=False)


def test_label_views_remap_and_recompose(tmp_path: Path) -> None:
    from densessl.data.photo_benchmark import COARSE_GROUPS, LABEL_VIEWS, build_views

    sources = _fake_sources(tmp_path / "sources")
    out = tmp_path / "photos"
    with pytest.raises(FileNotFoundError, match="build it first"):
        build_views(sources, out, progress=False)
    build(sources, out, train_scenes=4, val_scenes=3, progress=False)
    counts = build_views(sources, out, val_scenes=2, progress=False)
    both = build(sources, tmp_path / "again", train_scenes=4, val_scenes=2, progress=False, views=True)  # one scan
    assert both["views"] == {"figure": 2, "coarse": 2, "seen": 2}
    assert counts == {"figure": 3, "coarse": 3, "seen": 2}
    assert set(COARSE_GROUPS["animal"]) == {"bird", "mammal", "fish", "insect"}
    for name, (classes, lut) in LABEL_VIEWS.items():
        view = FolderSegmentation(out / "views" / name, "val")
        original = FolderSegmentation(out / "seg", "val")
        assert view.num_classes == len(classes) and len(view) == len(original)
        for k in range(len(view)):
            expected = np.asarray(lut, np.uint8)[original[k].mask]
            assert np.array_equal(view[k].mask, expected)  # same scene, labels remapped
            assert np.array_equal(np.asarray(view[k].image), np.asarray(original[k].image))
    seen_train = FolderSegmentation(out / "views" / "seen", "train")
    assert len(seen_train) == 4 and len(FolderSegmentation(out / "views" / "seen", "val")) == 2
    # Rebuilding the views over an existing folder is idempotent.
    assert build_views(sources, out, val_scenes=2, progress=False) == counts
