"""Gram anchoring (densessl.objectives.gram): the term against a literal re-derivation, the Gram teacher's schedule,
a higher-resolution or external teacher, resume, and the config checks."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from densessl.backbones import DenseBackbone
from densessl.data.collate import collate_views
from densessl.data.transforms import MultiCrop, MultiCropConfig
from densessl.objectives import OBJECTIVES
from densessl.objectives.gram import GramConfig, gram_loss, resize_to_grid
from densessl.train.config import load_config
from densessl.train.pretrain import Pretrainer, train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "pretrain" / "_tiny_test.yaml"


def _literal(student: torch.Tensor, teacher: torch.Tensor, normalization: str, remove_negative: bool) -> float:
    """The paper's term written out entry by entry: per image sum_ij (cos(s_i, s_j) - cos(t_i, t_j))^2."""
    total = 0.0
    batch, count = student.shape[:2]
    for b in range(batch):
        image = 0.0
        for i in range(count):
            for j in range(count):
                s = float(torch.dot(student[b, i], student[b, j]) / (student[b, i].norm() * student[b, j].norm()))
                t = float(torch.dot(teacher[b, i], teacher[b, j]) / (teacher[b, i].norm() * teacher[b, j].norm()))
                if remove_negative:
                    s, t = max(s, 0.0), max(t, 0.0)
                image += (s - t) ** 2
        total += image / count**2 if normalization == "mean" else image
    return total / batch


@pytest.mark.parametrize("normalization", ["mean", "sum"])
@pytest.mark.parametrize("remove_negative", [False, True])
def test_gram_loss_equals_the_literal_formula(normalization: str, remove_negative: bool) -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)
    teacher = torch.randn(3, 5, 12, generator=g, dtype=torch.float64)  # another width: only Gram matrices compare
    value = gram_loss(student, teacher, normalization, remove_negative)
    assert value.item() == pytest.approx(_literal(student, teacher, normalization, remove_negative), rel=1e-5)


def test_gram_loss_is_zero_for_the_same_features_and_sends_no_gradient_to_the_teacher() -> None:
    student = torch.randn(2, 6, 4, requires_grad=True)
    teacher = (student.detach() * 3.0).requires_grad_()  # a rescaled copy: the same cosine similarities
    assert gram_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(2, 6, 4, requires_grad=True)
    gram_loss(student, other).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and other.grad is None


def test_resize_to_grid() -> None:
    maps = torch.randn(2, 3, 8, 8)
    assert resize_to_grid(maps, (8, 8)) is maps and resize_to_grid(maps, (4, 4)).shape == (2, 3, 4, 4)


def _batch(batch: int = 3):
    multicrop = MultiCrop(MultiCropConfig(global_size=64, local_size=48, n_local=2))
    return collate_views([multicrop(torch.rand(3, 80, 100), torch.Generator().manual_seed(s)) for s in range(batch)])


def _pretrainer(name: str = "vicregl", **gram) -> Pretrainer:
    torch.manual_seed(0)
    method_cls, config_cls = OBJECTIVES[name]
    fields = config_cls.__dataclass_fields__
    small = {"projector": "64-64", "local_projector": "32-32", "hidden_dim": 64, "feat_dim": 16, "queue_len": 32}
    backbone = DenseBackbone("resnet18")
    objective = method_cls.from_backbone(backbone, config_cls(**{k: v for k, v in small.items() if k in fields}))
    return Pretrainer(backbone, objective, gram=GramConfig(enabled=True, **gram))


def test_the_gram_teacher_is_taken_at_start_and_refreshed_up_to_the_cap() -> None:
    model = _pretrainer(start_iter=2, refresh_every=3, max_refreshes=1)
    taken = []
    for iteration in range(11):
        with torch.no_grad():  # the student moves every step
            model.backbone.model.conv1.weight.add_(1.0)
        active = model.gram_step(iteration)
        assert active == (iteration >= 2)
        taken.append(int(model.gram_iteration))
        if iteration == int(model.gram_iteration):  # just taken: the Gram teacher holds the student's weights
            assert torch.equal(model.gram_teacher.model.conv1.weight, model.backbone.model.conv1.weight)
    assert taken == [-1, -1, 2, 2, 2, 5, 5, 5, 5, 5, 5]  # refreshed once, at 5 (max_refreshes=1)
    assert int(model.gram_refreshes) == 1
    assert "gram_teacher.model.conv1.weight" in model.state_dict() and "gram_iteration" in model.state_dict()


def test_the_term_joins_the_loss_with_its_weight_and_reaches_the_backbone() -> None:
    views = _batch()
    plain, weighted = _pretrainer(weight=0.0), _pretrainer(weight=5.0)
    for model in (plain, weighted):
        model.gram_step(0)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # the student moves away from its Gram teacher (identically in both), so the term > 0
            for p in model.backbone.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
    a, b = plain(views), weighted(views)
    assert a["gram"] > 0 and torch.allclose(a["gram"], b["gram"])
    torch.testing.assert_close(b["loss"], a["loss"] + 5.0 * a["gram"])
    b["loss"].backward()
    assert weighted.backbone.model.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in weighted.gram_teacher.parameters())


def test_a_higher_resolution_teacher_and_an_external_backbone(tmp_path: Path) -> None:
    from densessl.weights import save_backbone

    views = _batch()
    hires = _pretrainer(teacher_scale=2.0)
    hires.gram_step(0)
    assert torch.isfinite(hires(views)["gram"])
    save_backbone(DenseBackbone("resnet34").model, tmp_path / "anchor", "resnet34")
    external = _pretrainer(weights=str(tmp_path / "anchor"))
    assert external.gram_teacher.arch == "resnet34" and external.gram_step(0)
    assert int(external.gram_iteration) == -1  # never copied from the student
    assert torch.isfinite(external(views)["gram"])
    with pytest.raises(ValueError, match="gram.source: 'ema' needs an objective with an EMA teacher"):
        _pretrainer("vicregl", source="ema")
    densecl = _pretrainer("densecl", source="ema")
    assert densecl.gram_step(0) and torch.isfinite(densecl(views)["gram"])  # over view 0, the one the student encodes
    with pytest.raises(ValueError, match="never refreshed"):
        GramConfig(enabled=True, weights="x", refresh_every=10).validate()


def test_a_run_stopped_and_resumed_ends_with_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    overrides = ["train.max_iters=4", "gram.enabled=true", "gram.start_iter=1", "gram.refresh_every=2"]
    train(load_config(TINY, overrides), tmp_path / "ref")

    def stop_at_two(step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train(load_config(TINY, overrides), tmp_path / "run", on_step=stop_at_two)
    assert first.interrupted and first.iteration == 2
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert int(checkpoint["model"]["gram_iteration"]) == 1  # the Gram teacher travels with the checkpoint
    resumed = train(load_config(TINY, overrides), tmp_path / "run", resume="yes")
    assert resumed.iteration == 4 and not resumed.interrupted
    ref = load_file(tmp_path / "ref" / "export" / "model.safetensors")
    got = load_file(tmp_path / "run" / "export" / "model.safetensors")
    assert all(torch.equal(ref[k], got[k]) for k in ref), "resumed weights differ from the uninterrupted run"
