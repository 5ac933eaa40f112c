"""Dense kNN retrieval: hand-built memory, chunked search, patch label distributions, the separable fixture."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densessl.seg.knn import (
    AugmentedSegmentation,
    DenseMemory,
    KNNConfig,
    PatchLabels,
    _sampling_scores,
    fraction_indices,
    knn_predict,
    knn_search,
    patch_label_distributions,
    run_knn,
)
from tests.seg.helpers import COLOURS, MeanColourBackbone, SplitColours


def _hand_memory() -> DenseMemory:
    features = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]]), dim=1)
    labels = torch.tensor([2, 0, 1])
    return DenseMemory(features=features.half(), distributions=F.one_hot(labels, 3).half())


@pytest.mark.parametrize("k", [1, 3])
def test_query_equal_to_a_memory_patch_gets_its_label(k: int) -> None:
    memory = _hand_memory()
    for index, label in enumerate([2, 0, 1]):
        query = memory.features[index : index + 1].float()
        dist = knn_predict(query, memory, k=k, temperature=0.02)
        assert dist.shape == (1, 3) and dist.sum().item() == pytest.approx(1.0, abs=1e-4)
        assert dist.argmax().item() == label


def test_temperature_weights_are_softmax_of_similarities() -> None:
    memory = _hand_memory()
    query = F.normalize(torch.tensor([[1.0, 1.0, 0.0]]), dim=1)
    sims = query @ memory.features.float().T  # (1, 3)
    expected = torch.softmax(sims / 0.5, dim=1)[0]  # weight of patch i goes to its label
    dist = knn_predict(query, memory, k=3, temperature=0.5)[0]
    assert dist.tolist() == pytest.approx([expected[1].item(), expected[2].item(), expected[0].item()], abs=1e-3)


def test_chunked_search_equals_full_search() -> None:
    queries = F.normalize(torch.randn(23, 8), dim=1)
    memory = F.normalize(torch.randn(41, 8), dim=1)
    full = knn_search(queries, memory, k=5, query_chunk_size=1000, memory_chunk_size=1000)
    chunked = knn_search(queries, memory, k=5, query_chunk_size=4, memory_chunk_size=3)
    reference = (queries @ memory.T).topk(5, dim=1)
    assert torch.equal(full.indices, reference.indices) and torch.equal(chunked.indices, reference.indices)
    assert torch.allclose(chunked.similarities, reference.values)
    with pytest.raises(ValueError, match="k must be in"):
        knn_search(queries, memory, k=42)


def test_patch_label_distributions_hand_example() -> None:
    mask = torch.tensor([[0, 1, 2, 2],
                         [0, 1, 2, 255],
                         [255, 255, 1, 1],
                         [255, 255, 1, 0]], dtype=torch.uint8)[None]
    labels = patch_label_distributions(mask, num_classes=3, grid=(2, 2))
    assert labels.valid.tolist() == [[True, True, False, True]]
    dist = labels.distributions[0]
    assert dist[0].tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert dist[1].tolist() == pytest.approx([0.0, 0.0, 1.0])  # the ignore pixel is excluded
    assert dist[2].tolist() == [0.0, 0.0, 0.0]
    assert dist[3].tolist() == pytest.approx([0.25, 0.75, 0.0])
    with pytest.raises(ValueError, match=r"mask values \[5\]"):
        patch_label_distributions(torch.full((1, 4, 4), 5), num_classes=3, grid=(2, 2))


def test_knn_separable_fixture_and_settings() -> None:
    train, val = SplitColours(24, seed=0), SplitColours(8, seed=1)
    result = run_knn(MeanColourBackbone(), train, val, KNNConfig(input_size=32, progress=False))
    assert result.metrics.miou > 90.0
    settings = result.settings
    assert settings["protocol"] == "knn" and settings["k"] == 30 and settings["temperature"] == 0.02
    assert settings["input_size"] == 32 and settings["memory_size"] == 1_024_000
    assert settings["memory_patches"] == 24 * 16  # every 4x4 patch has a labelled pixel
    assert settings["search"] == "torch"


def test_memory_cap_and_augmented_memory() -> None:
    train, val = SplitColours(12, seed=0), SplitColours(4, seed=1)
    cfg = KNNConfig(input_size=32, memory_size=50, augment_memory=2, k=5, progress=False)
    result = run_knn(MeanColourBackbone(), train, val, cfg)
    settings = result.settings
    assert settings["memory_patches"] == 50 and settings["memory_images"] == 36
    assert settings["memory_patches_per_image"] == 2
    assert result.metrics.miou > 90.0
    assert run_knn(MeanColourBackbone(), train, val, cfg).metrics == result.metrics  # seeded


def test_augmented_samples_keep_labels_aligned() -> None:
    dataset = SplitColours(6, size=48)
    augmented = AugmentedSegmentation(dataset, size=32, scale=(0.2, 0.6), seed=1, pass_index=1)
    palette = np.asarray(COLOURS, dtype=np.float64)
    for index in range(len(dataset)):
        sample = augmented[index]
        image, mask = np.asarray(sample.image, dtype=np.float64), sample.mask
        assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
        labelled = mask != 255
        nearest = np.abs(image[..., None, :] - palette).sum(-1).argmin(-1)
        assert (nearest[labelled] == mask[labelled]).mean() > 0.9
    assert augmented[0].name.endswith("_aug1")


def test_faiss_request_without_faiss_falls_back(caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("densessl.seg.knn.faiss_available", lambda: False)
    cfg = KNNConfig(input_size=32, use_faiss=True, progress=False)
    with caplog.at_level(logging.WARNING, logger="densessl"):
        result = run_knn(MeanColourBackbone(), SplitColours(4), SplitColours(2, seed=1), cfg)
    assert result.settings["search"] == "torch" and "faiss is not importable" in caplog.text


def test_faiss_search_equals_torch_search() -> None:
    pytest.importorskip("faiss")  # the knn extra (installed by scripts/test.sh)
    generator = torch.Generator().manual_seed(0)
    memory = DenseMemory(features=F.normalize(torch.randn(300, 16, generator=generator), dim=1).half(),
                         distributions=F.one_hot(torch.randint(0, 5, (300,), generator=generator), 5).half())
    queries = F.normalize(torch.randn(40, 16, generator=generator), dim=1)
    exact = knn_predict(queries, memory, k=7, temperature=0.02, query_chunk_size=16, memory_chunk_size=64)
    with_faiss = knn_predict(queries, memory, k=7, temperature=0.02, use_faiss=True)
    torch.testing.assert_close(with_faiss, exact, atol=1e-4, rtol=1e-4)


def test_fraction_indices_are_seeded_subsets_of_the_stated_size() -> None:
    assert fraction_indices(572, 1.0, 0) == list(range(572))
    for fraction, size in ((1 / 8, 72), (1 / 64, 9), (1 / 128, 4), (1 / 1000, 1)):
        chosen = fraction_indices(572, fraction, 0)
        assert len(chosen) == size and chosen == sorted(set(chosen)) and all(0 <= i < 572 for i in chosen)
        assert fraction_indices(572, fraction, 0) == chosen  # seeded
    assert fraction_indices(572, 1 / 8, 0) != fraction_indices(572, 1 / 8, 1)


def test_a_label_fraction_builds_the_memory_from_that_many_train_images() -> None:
    train, val = SplitColours(24, seed=0), SplitColours(8, seed=1)
    cfg = KNNConfig(input_size=32, progress=False, label_fraction=1 / 8, fraction_seed=3)
    settings = run_knn(MeanColourBackbone(), train, val, cfg).settings
    assert settings["label_fraction"] == 1 / 8 and settings["fraction_seed"] == 3
    assert settings["memory_train_images"] == 3 and settings["memory_train_indices"] == fraction_indices(24, 1 / 8, 3)
    assert settings["memory_patches"] == 3 * 16 and settings["num_train"] == 24 and settings["num_val"] == 8
    whole = run_knn(MeanColourBackbone(), train, val, KNNConfig(input_size=32, progress=False)).settings
    assert whole["memory_train_images"] == 24 and "memory_train_indices" not in whole


def test_rare_class_sampling_prefers_the_patches_of_an_images_rarer_classes() -> None:
    """Three patches of class 0, one of class 1, one ignore-only: the open Hummingbird sampler scores a patch by how
    many of the image's patches share its classes times a uniform draw, so the class-1 patch is kept far more often
    than a uniform sampler keeps it (1/4), and the ignore-only patch never."""
    distributions = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
    labels = PatchLabels(distributions=distributions, valid=torch.tensor([[True, True, True, True, False]]))
    generator = torch.Generator().manual_seed(0)
    kept = [int(_sampling_scores(labels, "rare_class", generator).argmin()) for _ in range(400)]
    assert 4 not in kept and kept.count(3) / 400 > 0.45  # 0.6 expected
    uniform = [int(_sampling_scores(labels, "uniform", generator).argmin()) for _ in range(400)]
    assert 4 not in uniform and 0.15 < uniform.count(3) / 400 < 0.35


def test_rare_class_sampling_runs_end_to_end_under_a_memory_cap() -> None:
    train, val = SplitColours(12, seed=0), SplitColours(4, seed=1)
    cfg = KNNConfig(input_size=32, memory_size=24, k=5, progress=False, memory_sampling="rare_class")
    result = run_knn(MeanColourBackbone(), train, val, cfg)
    assert result.settings["memory_patches"] == 24 and result.settings["memory_sampling"] == "rare_class"
    assert result.metrics.miou > 80.0
