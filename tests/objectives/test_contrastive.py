"""DenseCL and PixPro math on hand-built cases; queues; the momentum teacher's EMA rule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from densessl.backbones import DenseBackbone
from densessl.objectives.densecl import DenseCL, DenseCLConfig, KeyQueue, dense_correspondence, info_nce
from densessl.objectives.momentum import cosine_momentum, ema_update, frozen_copy
from densessl.objectives.pixpro import PixelPropagation, PixPro, PixProConfig, pixpro_loss, positive_mask, target_cosine
from densessl.train.pretrain import Pretrainer


def test_dense_correspondence_recovers_a_permutation() -> None:
    q = torch.randn(2, 8, 3, 3)
    perm = torch.randperm(9)
    k = q.flatten(2)[:, :, perm].reshape(2, 8, 3, 3) * 3.0  # scaling does not change cosine
    match = dense_correspondence(q, k)
    # key cell perm^-1[p] holds query cell p
    inverse = torch.argsort(perm)
    assert torch.equal(match, inverse.expand(2, -1))


def test_info_nce_hand_value() -> None:
    query = torch.tensor([[1.0, 0.0, 0.0]])
    negatives = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    loss = info_nce(query, query, negatives, temperature=0.5)
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_key_queue_is_fifo_and_wraps() -> None:
    queue = KeyQueue(5, 2)
    assert queue.keys.shape == (5, 2) and torch.allclose(queue.keys.norm(dim=1), torch.ones(5))
    a = torch.arange(6.0).reshape(3, 2)
    queue.push(a)
    assert int(queue.ptr) == 3 and torch.equal(queue.keys[:3], a)
    b = 10 + torch.arange(8.0).reshape(4, 2)
    queue.push(b)
    assert int(queue.ptr) == 2
    assert torch.equal(queue.keys[3:], b[:2]) and torch.equal(queue.keys[:2], b[2:]) and torch.equal(queue.keys[2], a[2])


def test_densecl_losses_and_enqueue() -> None:
    backbone = DenseBackbone("resnet18")
    cfg = DenseCLConfig(hidden_dim=32, feat_dim=8, queue_len=16, loss_lambda=0.5)
    model = Pretrainer(backbone, DenseCL.from_backbone(backbone, cfg))
    from densessl.data.collate import collate_views
    from densessl.data.transforms import MultiCrop, MultiCropConfig

    mc = MultiCrop(MultiCropConfig(global_size=64, n_local=0))
    views = collate_views([mc(torch.rand(3, 70, 70), torch.Generator().manual_seed(s)) for s in range(4)])
    before = model.objective.queue_dense.keys.clone()
    out = model(views)
    torch.testing.assert_close(out["loss"], out["loss_global"] + out["loss_dense"])
    assert int(model.objective.queue_global.ptr) == 4 and int(model.objective.queue_dense.ptr) == 4
    assert not torch.equal(before[:4], model.objective.queue_dense.keys[:4])
    assert torch.allclose(model.objective.queue_dense.keys[:4].norm(dim=1), torch.ones(4))


@pytest.mark.parametrize("method", ["densecl", "pixpro"])
def test_each_backbone_encodes_only_its_views_one_forward_each(method: str) -> None:
    """DenseCL: the student encodes the query view alone, the teacher the key view alone; PixPro: both views, one
    forward per view (the references' per-view encoder calls, so BatchNorm statistics are per view)."""
    from densessl.data.collate import collate_views
    from densessl.data.transforms import MultiCrop, MultiCropConfig

    backbone = DenseBackbone("resnet18")
    objective = (DenseCL.from_backbone(backbone, DenseCLConfig(hidden_dim=16, feat_dim=8, queue_len=16))
                 if method == "densecl" else PixPro.from_backbone(backbone, PixProConfig(hidden_dim=16, out_dim=8)))
    model = Pretrainer(backbone, objective)
    mc = MultiCrop(MultiCropConfig(global_size=64, n_local=0))
    views = collate_views([mc(torch.rand(3, 70, 70), torch.Generator().manual_seed(s)) for s in range(4)])
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    model.backbone.register_forward_hook(lambda m, args, out: seen["student"].append(args[0]))
    model.teacher_backbone.register_forward_hook(lambda m, args, out: seen["teacher"].append(args[0]))
    assert torch.isfinite(model(views)["loss"])
    expected = {"densecl": ((0,), (1,)), "pixpro": ((0, 1), (0, 1))}[method]
    for name, indices in zip(("student", "teacher"), expected):
        assert len(seen[name]) == len(indices)
        for images, index in zip(seen[name], indices):
            assert torch.equal(images, views.view(index))  # batch B: one view per forward
    if method == "densecl":  # features of every view (the per-resolution contract) are refused, not misread
        from densessl.backbones import encode_views

        with torch.no_grad(), pytest.raises(ValueError, match="student's features of view 0 and the teacher's of view"):
            model.objective(encode_views(model.backbone, views), views, encode_views(model.teacher_backbone, views))


def test_densecl_bn_groups_emulate_shuffle_bn() -> None:
    """``bn_groups = 2``: the student encodes the query batch in two chunks in batch order, the teacher the key batch
    in two chunks of a permutation (so a key's BatchNorm chunk is not its query's), and the teacher's features reach
    the objective back in batch order."""
    from densessl.data.collate import collate_views
    from densessl.data.transforms import MultiCrop, MultiCropConfig

    backbone = DenseBackbone("resnet18")
    config = DenseCLConfig(hidden_dim=16, feat_dim=8, queue_len=16, bn_groups=2)
    model = Pretrainer(backbone, DenseCL.from_backbone(backbone, config))
    mc = MultiCrop(MultiCropConfig(global_size=64, n_local=0))
    views = collate_views([mc(torch.rand(3, 70, 70), torch.Generator().manual_seed(s)) for s in range(6)])
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    model.backbone.register_forward_hook(lambda m, args, out: seen["student"].append(args[0]))
    model.teacher_backbone.register_forward_hook(lambda m, args, out: seen["teacher"].append(args[0]))
    received: list = []
    model.objective.register_forward_pre_hook(lambda m, args: received.append(args[2][0].maps[-1].clone()))
    torch.manual_seed(3)
    assert torch.isfinite(model(views)["loss"])
    torch.manual_seed(3)
    permutation = torch.randperm(6)
    assert [len(x) for x in seen["student"]] == [3, 3] and [len(x) for x in seen["teacher"]] == [3, 3]
    torch.testing.assert_close(torch.cat(seen["student"]), views.view(0))
    torch.testing.assert_close(torch.cat(seen["teacher"]), views.view(1)[permutation])
    with torch.no_grad():
        first = model.teacher_backbone(views.view(1)[permutation[:3]]).maps[-1]
    torch.testing.assert_close(received[0][permutation[:3]], first)


def test_pixpro_positive_mask_identity_and_flip() -> None:
    box = torch.tensor([[0.2, 0.1, 0.9, 0.8]])
    no, yes = torch.tensor([False]), torch.tensor([True])
    # Identical crops: only the same cell is within 0.7 bin diagonals (neighbours sit at 1/sqrt(2) = 0.707).
    same = positive_mask(box, no, box, no, (4, 4), (4, 4), 0.7)
    assert torch.equal(same[0], torch.eye(16))
    # The same crop flipped: cell (r, c) matches cell (r, w - 1 - c).
    flipped = positive_mask(box, no, box, yes, (4, 4), (4, 4), 0.7)
    mirror = torch.arange(16).reshape(4, 4).flip(1).flatten()
    assert torch.equal(flipped[0], torch.eye(16)[:, mirror])
    # Disjoint crops have no positives.
    far = torch.tensor([[0.0, 0.0, 0.1, 0.1]])
    assert positive_mask(box, no, far, no, (4, 4), (4, 4), 0.7).sum() == 0


def test_pixpro_loss_values() -> None:
    x = torch.randn(2, 8, 3, 3)
    eye = torch.eye(9).expand(2, -1, -1)
    assert pixpro_loss(x, x, eye).item() == pytest.approx(-2.0, rel=1e-5)
    assert pixpro_loss(x, -x, eye).item() == pytest.approx(2.0, rel=1e-5)
    assert pixpro_loss(x, x, torch.zeros(2, 9, 9)).item() == 0.0


def test_pixel_propagation_matches_a_direct_loop() -> None:
    ppm = PixelPropagation(4, gamma=2.0, transform_layers=1)
    x = torch.randn(1, 4, 2, 3)
    out = ppm(x)
    tokens = x.flatten(2)[0].T  # (6, 4)
    value = F.normalize(ppm.value(x).flatten(2)[0].T, dim=1)
    expected = torch.zeros(6, 4)
    for i in range(6):
        for j in range(6):
            sim = max(F.cosine_similarity(tokens[i], tokens[j], dim=0).item(), 0.0) ** 2
            expected[i] += sim * value[j]
    torch.testing.assert_close(out.flatten(2)[0].T, expected, rtol=1e-5, atol=1e-6)


def test_ema_rule_and_momentum_schedule() -> None:
    student = torch.nn.Linear(3, 2)
    teacher = frozen_copy(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    old = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, 0.9)
    for t, o, s in zip(teacher.parameters(), old, student.parameters()):
        torch.testing.assert_close(t, 0.9 * o + 0.1 * s)
    assert cosine_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)
    assert cosine_momentum(0.99, 50, 100) == pytest.approx(0.995)


def test_pretrainer_moves_every_teacher_by_ema() -> None:
    backbone = DenseBackbone("resnet18")
    model = Pretrainer(backbone, PixPro.from_backbone(backbone, PixProConfig(hidden_dim=16, out_dim=8)))
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.5)
        for p in model.objective.projector.parameters():
            p.add_(0.5)
    t_old = [p.clone() for p in model.teacher_backbone.parameters()]
    h_old = [p.clone() for p in model.objective.teacher_projector.parameters()]
    model.update_teacher(0.75)
    for t, o, s in zip(model.teacher_backbone.parameters(), t_old, model.backbone.parameters()):
        torch.testing.assert_close(t, 0.75 * o + 0.25 * s)
    for t, o, s in zip(model.objective.teacher_projector.parameters(), h_old, model.objective.projector.parameters()):
        torch.testing.assert_close(t, 0.75 * o + 0.25 * s)


def test_contrastive_bad_config() -> None:
    with pytest.raises(ValueError, match="temperature"):
        DenseCL(8, DenseCLConfig(temperature=0))
    with pytest.raises(ValueError, match="transform_layers"):
        PixPro(8, PixProConfig(transform_layers=5))
    backbone = DenseBackbone("resnet18")
    with pytest.raises(ValueError, match="teacher"):
        DenseCL.from_backbone(backbone, DenseCLConfig(hidden_dim=8, feat_dim=4, queue_len=8))([], None)


def test_pixpro_target_cosine_separates_collapse_from_spread() -> None:
    same = torch.ones(2, 8, 3, 3)  # every pixel projects to one direction
    torch.testing.assert_close(target_cosine([same, 2 * same]), torch.tensor(1.0))
    spread = torch.eye(8).reshape(1, 8, 2, 4)  # 8 orthonormal pixels: only the self-pairs count
    torch.testing.assert_close(target_cosine([spread]), torch.tensor(1 / 8))
    opposite = torch.cat([same[:1], -same[:1]])
    torch.testing.assert_close(target_cosine([opposite]), torch.tensor(0.0))
