"""Every objective x {ResNet, ConvNeXt, ViT}: a finite loss whose gradients reach the student backbone and heads,
and never a teacher."""

from __future__ import annotations

import pytest
import torch

from densessl.backbones import DenseBackbone
from densessl.data.collate import collate_views
from densessl.data.transforms import MultiCrop, MultiCropConfig
from densessl.objectives import OBJECTIVES
from densessl.train.pretrain import Pretrainer

ARCHS = ["resnet18", "convnext_atto", "vit_tiny_patch16_224"]
SMALL_HEADS = {"projector": "64-64", "local_projector": "32-32", "hidden_dim": 64, "feat_dim": 16, "queue_len": 32,
               "out_dim": 16}


def _batch(batch: int = 3):
    multicrop = MultiCrop(MultiCropConfig(global_size=64, local_size=48, n_local=2))
    return collate_views([multicrop(torch.rand(3, 80, 100), torch.Generator().manual_seed(s)) for s in range(batch)])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_contract(name: str, arch: str) -> None:
    method_cls, config_cls = OBJECTIVES[name]
    fields = config_cls.__dataclass_fields__
    config = config_cls(**{k: v for k, v in SMALL_HEADS.items() if k in fields})
    backbone = DenseBackbone(arch)
    model = Pretrainer(backbone, method_cls.from_backbone(backbone, config))
    out = model(_batch())
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert all(torch.isfinite(v).all() for v in out.values())
    out["loss"].backward()
    student = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # Map-only objectives never touch the pooling head (e.g. ConvNeXt's head norm): that is the only allowed gap.
    pooling_head = () if model.objective.uses_pooled else ("backbone.model.head.",)
    missing = [n for n, p in student if p.grad is None and not (pooling_head and n.startswith(pooling_head))]
    assert not missing, f"no gradient for {missing[:5]}"
    assert any(p.grad.abs().sum() > 0 for p in backbone.parameters())
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    assert all("teacher" in n for n, _ in frozen) and all(p.grad is None for _, p in frozen)
    assert (model.teacher_backbone is not None) == method_cls.uses_teacher
