"""Label propagation: the frame-size rule, the affinity (against a direct transcription of the DINO formula), the
neighbourhood, top-k and its ties, the queue, and a generated sequence whose propagation is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.backbones import DenseBackbone, DenseFeatures
from densessl.video import propagation
from densessl.video.metrics import region_similarity
from densessl.video.propagation import (
    PropagationSettings,
    frame_size,
    iter_propagation,
    label_to_onehot,
    labels_to_mask,
    neighborhood_mask,
    norm_mask,
    preprocess_frame,
    propagate_labels,
    propagate_sequence,
)


class PoolBackbone(nn.Module):
    """A stand-in backbone: ``maps`` = the (normalized) image average-pooled by 8, i.e. one colour per 8x8 cell."""

    def __init__(self) -> None:
        super().__init__()
        self.levels, self.strides, self.channels = [0], [8], [3]

    def forward(self, images: Tensor) -> DenseFeatures:
        return DenseFeatures(maps=[F.avg_pool2d(images, 8)], pooled=images.mean(dim=(2, 3)))


def _dino_reference(target: Tensor, feats: Tensor, labels: Tensor, radius: int, topk: int, temperature: float) -> Tensor:
    """The reference's label_propagation, transcribed literally (loops for the mask, no max subtraction)."""
    count, channels, h, w = feats.shape
    feat_tar = target.reshape(channels, -1).T  # (h*w, C)
    feat_src = feats.reshape(count, channels, -1)  # (T, C, h*w)
    feat_tar = F.normalize(feat_tar, dim=1, p=2)
    feat_src = F.normalize(feat_src, dim=1, p=2)
    aff = torch.exp(torch.bmm(feat_tar.unsqueeze(0).repeat(count, 1, 1), feat_src) / temperature)
    if radius > 0:
        mask = torch.zeros(h, w, h, w)
        for i in range(h):
            for j in range(w):
                for p in range(2 * radius + 1):
                    for q in range(2 * radius + 1):
                        if 0 <= i - radius + p < h and 0 <= j - radius + q < w:
                            mask[i, j, i - radius + p, j - radius + q] = 1
        aff = aff * mask.reshape(h * w, h * w).unsqueeze(0)
    aff = aff.transpose(2, 1).reshape(-1, h * w)  # (T*h*w sources, h*w targets)
    tk_val, _ = torch.topk(aff, dim=0, k=topk)
    tk_min, _ = torch.min(tk_val, dim=0)
    aff[aff < tk_min] = 0
    aff = aff / torch.sum(aff, keepdim=True, axis=0)
    segs = labels.reshape(count, labels.shape[1], -1).transpose(2, 1).reshape(-1, labels.shape[1]).T
    return torch.mm(segs, aff).reshape(labels.shape[1], h, w)


def test_frame_size_floors_the_long_side_to_a_multiple_of_64() -> None:
    assert frame_size(480, 854) == (480, 832)  # DAVIS 480p landscape: 854x480 -> 832x480
    assert frame_size(854, 480) == (832, 480)  # portrait
    assert frame_size(480, 854, 480, stride=32) == (480, 832)  # strides dividing 64 change nothing
    assert frame_size(480, 854, 480, stride=14) == (476, 826)  # 14 px patches: both sides floored to 14
    assert frame_size(480, 854, 32) == (32, 32)  # long side never floored below the short side
    with pytest.raises(ValueError, match="smaller than the backbone stride"):
        frame_size(480, 854, 8, stride=16)


def test_preprocess_frame_resizes_and_normalizes() -> None:
    frame = np.full((480, 854, 3), (124, 116, 104), np.uint8)  # ~ the ImageNet mean
    image = preprocess_frame(frame, frame_size(480, 854))
    assert image.shape == (3, 480, 832) and image.dtype == torch.float32
    assert image.abs().max() < 0.01


def test_neighborhood_mask_matches_the_four_loop_definition() -> None:
    for h, w, radius in ((4, 5, 1), (3, 6, 2), (2, 2, 5)):
        expected = torch.zeros(h, w, h, w, dtype=torch.bool)
        for i in range(h):
            for j in range(w):
                for i2 in range(h):
                    for j2 in range(w):
                        expected[i, j, i2, j2] = abs(i - i2) <= radius and abs(j - j2) <= radius
        assert torch.equal(neighborhood_mask(h, w, radius), expected.reshape(h * w, h * w))


@pytest.mark.parametrize(("radius", "topk"), [(0, 5), (1, 5), (2, 3), (0, 1)])
def test_propagate_labels_equals_the_reference_formula(radius: int, topk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    target, feats = torch.randn(16, 4, 5), torch.randn(3, 16, 4, 5)
    labels = torch.rand(3, 4, 4, 5)
    settings = PropagationSettings(neighborhood=radius, topk=topk, temperature=0.1)
    expected = _dino_reference(target, feats, labels, radius, topk, 0.1)
    assert torch.allclose(propagate_labels(target, feats, labels, settings), expected, atol=1e-5)
    monkeypatch.setattr(propagation, "_CHUNK_ELEMENTS", 7 * 3 * 20)  # chunks of 7 target cells: same result
    assert torch.allclose(propagate_labels(target, feats, labels, settings), expected, atol=1e-5)


def test_top1_copies_the_nearest_neighbours_label() -> None:
    torch.manual_seed(1)
    target, feats, labels = torch.randn(8, 3, 4), torch.randn(2, 8, 3, 4), torch.rand(2, 5, 3, 4)
    soft = propagate_labels(target, feats, labels, PropagationSettings(neighborhood=0, topk=1))
    queries = F.normalize(target.reshape(8, -1).T, dim=1)
    keys = F.normalize(feats.permute(0, 2, 3, 1).reshape(-1, 8), dim=1)
    nearest = (queries @ keys.T).argmax(dim=1)  # per target cell, over all 2*3*4 context cells
    copied = labels.permute(0, 2, 3, 1).reshape(-1, 5)[nearest].T.reshape(5, 3, 4)
    assert torch.allclose(soft, copied, atol=1e-6)


def test_topk_keeps_ties_with_the_kth_value() -> None:
    # Two context cells share the target's feature exactly: with top-1 both are kept (aff < min_of_topk -> 0).
    feats = torch.zeros(1, 2, 1, 3)
    feats[0, 0] = torch.tensor([[1.0, 0.0, 1.0]])
    feats[0, 1] = torch.tensor([[0.0, 1.0, 0.0]])
    labels = torch.zeros(1, 3, 1, 3)
    labels[0, 1, 0, 0] = 1.0  # cell 0: label 1; cell 2 (same feature): label 2; cell 1: label 0
    labels[0, 2, 0, 2] = 1.0
    labels[0, 0, 0, 1] = 1.0
    target = torch.tensor([[[1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0]]])  # every target cell looks like cells 0 and 2
    soft = propagate_labels(target, feats, labels, PropagationSettings(neighborhood=0, topk=1))
    assert torch.allclose(soft[:, 0, 1], torch.tensor([0.0, 0.5, 0.5]))


def test_the_neighbourhood_blocks_a_match_farther_than_r_cells() -> None:
    h, w = 4, 8
    feats = torch.zeros(1, 2, h, w)
    feats[0, 0] = 1.0  # every context cell looks like e0 ...
    feats[0, :, 0, 6] = torch.tensor([0.0, 1.0])  # ... but cell (0, 6), labelled 1, looks like e1
    labels = torch.zeros(1, 2, h, w)
    labels[0, 0] = 1.0
    labels[0, :, 0, 6] = torch.tensor([0.0, 1.0])
    target = torch.zeros(2, h, w)
    target[0] = 1.0
    target[:, 0, 0] = torch.tensor([0.0, 1.0])  # target cell (0, 0) looks like e1: its match is 6 cells away
    for radius, label in ((2, 0.0), (5, 0.0), (6, 1.0), (0, 1.0)):
        soft = propagate_labels(target, feats, labels, PropagationSettings(neighborhood=radius, topk=1))
        assert soft[1, 0, 0].item() == pytest.approx(label), radius


def test_norm_mask() -> None:
    mask = torch.stack([torch.tensor([[0.2, 0.6], [1.0, 0.2]]), torch.zeros(2, 2), torch.full((2, 2), 0.3)])
    out = norm_mask(mask.clone())
    assert torch.allclose(out[0], torch.tensor([[0.0, 0.5], [1.0, 0.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))  # max 0: left as is
    assert torch.equal(out[2], torch.ones(2, 2))  # constant and positive: 1


def test_labels_to_mask_argmax_keeps_the_first_of_tied_channels() -> None:
    torch.manual_seed(0)
    soft = torch.rand(4, 6, 7)
    soft[2] = soft[1]  # channels 1 and 2 tie everywhere: the first wins, as with torch.argmax
    expected = norm_mask(F.interpolate(soft[None], size=(48, 56), mode="bilinear", align_corners=False)[0])
    assert np.array_equal(labels_to_mask(soft, 8, (48, 56)), expected.argmax(dim=0).numpy().astype(np.uint8))


def test_label_to_onehot_uses_nearest_resize_and_maps_void_to_background() -> None:
    labels = np.zeros((16, 16), np.uint8)
    labels[:8, 8:] = 2
    labels[8:, :8] = 255
    onehot = label_to_onehot(labels, (2, 2), 3)
    assert onehot.shape == (3, 2, 2)
    assert torch.equal(onehot.argmax(dim=0), torch.tensor([[0, 2], [0, 0]]))


def _moving_squares(frames: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """96x128 frames (12x16 cells of 8 px): a red 3x3-cell square moving right and a blue one moving left by one
    cell per frame on a grey background, with their label maps."""
    images, masks = [], []
    for t in range(frames):
        image = np.full((96, 128, 3), 128, np.uint8)
        mask = np.zeros((96, 128), np.uint8)
        image[8:32, 8 + 8 * t:32 + 8 * t] = (230, 20, 20)
        mask[8:32, 8 + 8 * t:32 + 8 * t] = 1
        image[48:72, 96 - 8 * t:120 - 8 * t] = (20, 20, 230)
        mask[48:72, 96 - 8 * t:120 - 8 * t] = 2
        images.append(image)
        masks.append(mask)
    return images, masks


def test_a_moving_sequence_propagates_to_its_ground_truth() -> None:
    frames, truth = _moving_squares(6)
    settings = PropagationSettings(short_side=96, n_last_frames=2)  # 96x128 stays 96x128: no resize
    propagated = list(iter_propagation(PoolBackbone(), iter(frames), truth[0], settings))
    assert [p.context_frames for p in propagated] == [0, 1, 2, 3, 3, 3]  # first frame + at most 2 queued
    for t, (frame, gt) in enumerate(zip(propagated, truth)):
        cells = label_to_onehot(gt, (12, 16), 3)
        assert torch.allclose(frame.soft_labels, cells, atol=1e-4), t  # the soft label is the true one-hot
        assert frame.mask.shape == (96, 128) and frame.mask.dtype == np.uint8
        if t == 0:
            assert np.array_equal(frame.mask, gt)
            continue
        # the output is that one-hot upsampled (bilinear) and argmaxed: exact, except the square's convex corners
        # that bilinear upsampling rounds off (6 px each), so J = (576 - 24) / 576 per square
        assert np.array_equal(frame.mask, labels_to_mask(cells, 8, (96, 128))), t
        for object_id in (1, 2):
            assert region_similarity(frame.mask == object_id, gt == object_id) == pytest.approx(552 / 576), t


def test_queue_holds_at_most_n_last_frames() -> None:
    frames, truth = _moving_squares(5)
    for n_last, expected in ((0, [0, 1, 1, 1, 1]), (1, [0, 1, 2, 2, 2]), (7, [0, 1, 2, 3, 4])):
        settings = PropagationSettings(short_side=96, n_last_frames=n_last)
        assert [p.context_frames for p in iter_propagation(PoolBackbone(), frames, truth[0], settings)] == expected


def test_output_masks_have_the_original_frame_size() -> None:
    frames = [np.random.default_rng(t).integers(0, 256, (50, 70, 3), dtype=np.uint8) for t in range(3)]
    first = np.zeros((50, 70), np.uint8)
    first[10:30, 20:40] = 1
    masks = propagate_sequence(PoolBackbone(), frames, first, PropagationSettings(short_side=64))
    assert len(masks) == 3 and all(m.shape == (50, 70) and m.dtype == np.uint8 for m in masks)
    assert np.array_equal(masks[0], first)
    assert set(np.unique(np.concatenate(masks))) <= {0, 1}


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_real_backbones_convnet_and_vit(arch: str) -> None:
    backbone = DenseBackbone(arch)
    backbone.train()
    frames = [np.random.default_rng(t).integers(0, 256, (48, 64, 3), dtype=np.uint8) for t in range(3)]
    first = np.zeros((48, 64), np.uint8)
    first[8:40, 8:40] = 1
    first[0:8, 50:60] = 2
    propagated = list(iter_propagation(backbone, frames, first, PropagationSettings(short_side=64)))
    grid = 64 // backbone.strides[0]  # 48x64 -> 64x64 (the long side floored to 64)
    assert propagated[1].soft_labels.shape == (3, grid, grid)
    assert all(p.mask.shape == (48, 64) for p in propagated)
    assert torch.allclose(propagated[2].soft_labels.sum(dim=0), torch.ones(grid, grid), atol=1e-5)
    assert backbone.training  # restored after the run in eval mode


def test_settings_are_validated_with_the_field_name() -> None:
    for kwargs, field in (({"topk": 0}, "topk"), ({"temperature": 0.0}, "temperature"), ({"short_side": True},
                          "short_side"), ({"neighborhood": -1}, "neighborhood"), ({"n_last_frames": 1.5},
                          "n_last_frames")):
        with pytest.raises(ValueError, match=f"^{field}: "):
            PropagationSettings(**kwargs)
    with pytest.raises(ValueError, match="out of range"):
        list(iter_propagation(PoolBackbone(), [np.zeros((16, 16, 3), np.uint8)], np.zeros((16, 16), np.uint8),
                              PropagationSettings(level=2)))
