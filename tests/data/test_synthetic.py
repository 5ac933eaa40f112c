"""Tests for the procedural synthetic-scene dataset."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import densessl.data.synthetic
from densessl.data.synthetic import (
    CLASS_NAMES,
    CLASS_TEXTURES,
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    SceneSample,
    SyntheticScenes,
    render_scene,
    scene_seed,
)

NUM_CLASSES = len(CLASS_NAMES) - 1


def _arrays(sample: SceneSample) -> list[np.ndarray]:
    return [
        np.asarray(sample.image),
        sample.semantic_mask,
        sample.instance_masks,
        sample.instance_boxes,
        sample.instance_labels,
    ]


def _assert_same(a: SceneSample, b: SceneSample) -> None:
    for x, y in zip(_arrays(a), _arrays(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


@pytest.fixture(scope="module")
def scenes() -> list[SceneSample]:
    dataset = SyntheticScenes(num_images=100, seed=0)
    return [dataset[i] for i in range(len(dataset))]


def test_class_names() -> None:
    assert CLASS_NAMES[0] == "background"
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert set(CLASS_TEXTURES) == set(CLASS_NAMES[1:])
    assert len(set(CLASS_TEXTURES.values())) == NUM_CLASSES  # every class has its own texture


def test_determinism_independent_of_global_rng() -> None:
    dataset = SyntheticScenes(num_images=5, seed=3)
    first = dataset[2]
    np.random.seed(123)
    random.seed(7)
    torch.manual_seed(9)
    _assert_same(first, dataset[2])
    _assert_same(first, SyntheticScenes(num_images=5, seed=3)[2])
    _assert_same(render_scene(42), render_scene(42))
    assert np.asarray(dataset[1].image).tobytes() != np.asarray(first.image).tobytes()


def test_determinism_across_processes() -> None:
    code = (
        "import hashlib, numpy as np; from densessl.data.synthetic import SyntheticScenes;"
        "s = SyntheticScenes(10, size=(48, 80), seed=5, split='val')[7];"
        "print(hashlib.sha256(np.asarray(s.image).tobytes() + s.semantic_mask.tobytes()).hexdigest())"
    )
    repo_root = str(Path(densessl.data.synthetic.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo_root, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    out = result.stdout.strip()
    s = SyntheticScenes(10, size=(48, 80), seed=5, split="val")[7]
    assert out == hashlib.sha256(np.asarray(s.image).tobytes() + s.semantic_mask.tobytes()).hexdigest()


def test_seeds_and_splits_disjoint() -> None:
    train = SyntheticScenes(num_images=20, seed=0, split="train")
    val = SyntheticScenes(num_images=20, seed=0, split="val")
    other = SyntheticScenes(num_images=20, seed=1, split="train")
    train_seeds = {scene_seed(0, "train", i) for i in range(20)}
    val_seeds = {scene_seed(0, "val", i) for i in range(20)}
    assert len(train_seeds) == 20 and train_seeds.isdisjoint(val_seeds)
    for i in (0, 5):
        image = np.asarray(train[i].image).tobytes()
        assert image != np.asarray(val[i].image).tobytes()
        assert image != np.asarray(other[i].image).tobytes()


def test_shapes_and_dtypes(scenes: list[SceneSample]) -> None:
    for sample in scenes[:20]:
        m = len(sample.instance_labels)
        assert isinstance(sample.image, Image.Image)
        assert sample.image.mode == "RGB" and sample.image.size == (128, 128)
        assert sample.semantic_mask.shape == (128, 128) and sample.semantic_mask.dtype == np.uint8
        assert sample.instance_masks.shape == (m, 128, 128) and sample.instance_masks.dtype == bool
        assert sample.instance_boxes.shape == (m, 4) and sample.instance_boxes.dtype == np.float32
        assert sample.instance_labels.shape == (m,) and sample.instance_labels.dtype == np.int64


def test_non_square_size() -> None:
    sample = render_scene(11, size=(64, 160))
    assert sample.image.size == (160, 64)
    assert sample.semantic_mask.shape == (64, 160)
    assert sample.instance_masks.shape[1:] == (64, 160)
    assert len(sample.instance_labels) >= 1
    tall = SyntheticScenes(num_images=3, size=(96, 40))[1]
    assert tall.image.size == (40, 96) and tall.semantic_mask.shape == (96, 40)


def test_masks_consistent(scenes: list[SceneSample]) -> None:
    for sample in scenes:
        masks, labels, semantic = sample.instance_masks, sample.instance_labels, sample.semantic_mask
        assert np.all((labels >= 1) & (labels <= NUM_CLASSES))
        assert semantic.max() <= NUM_CLASSES
        # Visible instance masks do not overlap and carry their label in the semantic mask.
        assert np.all(masks.sum(axis=0) <= 1)
        for mask, label in zip(masks, labels):
            assert mask.sum() >= MIN_VISIBLE_PIXELS
            assert np.all(semantic[mask] == label)
        # Outside the kept instances there is background, except for the few visible pixels of dropped instances.
        covered = masks.any(axis=0)
        leftover = int(np.count_nonzero(semantic[~covered]))
        max_dropped_area = 6 * max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * semantic.size)
        assert leftover < max_dropped_area


def test_boxes_tight(scenes: list[SceneSample]) -> None:
    for sample in scenes[:30]:
        for mask, box in zip(sample.instance_masks, sample.instance_boxes):
            ys, xs = np.nonzero(mask)
            expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            np.testing.assert_array_equal(box, np.array(expected, dtype=np.float32))


def test_every_class_appears(scenes: list[SceneSample]) -> None:
    labels = np.concatenate([s.instance_labels for s in scenes[:50]])
    assert set(labels.tolist()) == set(range(1, NUM_CLASSES + 1))
    semantic_classes = set(np.unique(np.concatenate([s.semantic_mask.ravel() for s in scenes[:50]])).tolist())
    assert semantic_classes == set(range(NUM_CLASSES + 1))


def test_objects_have_reasonable_size(scenes: list[SceneSample]) -> None:
    widths = np.concatenate([s.instance_boxes[:, 2] - s.instance_boxes[:, 0] for s in scenes])
    assert widths.max() <= 128
    assert np.median(widths) >= 16  # most objects span several 32-px feature cells at 128 px


def test_colour_not_class_informative(scenes: list[SceneSample]) -> None:
    per_class: dict[int, list[np.ndarray]] = {c: [] for c in range(1, NUM_CLASSES + 1)}
    for sample in scenes:
        pixels = np.asarray(sample.image).astype(np.float64) / 255.0
        for mask, label in zip(sample.instance_masks, sample.instance_labels):
            per_class[int(label)].append(pixels[mask].mean(axis=0))
    means = np.array([np.mean(per_class[c], axis=0) for c in per_class])
    assert all(len(per_class[c]) >= 20 for c in per_class)
    # Every class's mean object colour is mid-grey-ish and close to the others (uniform colours would give 0.5).
    assert np.abs(means - means.mean(axis=0)).max() < 0.1
    assert np.abs(means - 0.5).max() < 0.15


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_images": 0}, "num_images"),
        ({"size": (31, 128)}, "31"),
        ({"size": (128, 16)}, "16"),
        ({"size": (128,)}, "size"),
        ({"split": "test"}, "test"),
        ({"seed": -1}, "-1"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SyntheticScenes(**kwargs)


def test_bad_render_arguments() -> None:
    with pytest.raises(ValueError, match="20"):
        render_scene(0, size=(20, 64))
    with pytest.raises(ValueError, match="-3"):
        render_scene(-3)


def test_index_out_of_range() -> None:
    dataset = SyntheticScenes(num_images=4)
    assert len(dataset) == 4
    for index in (4, 100, -1):
        with pytest.raises(IndexError, match=str(index)):
            dataset[index]
