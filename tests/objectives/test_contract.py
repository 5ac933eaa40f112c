"""Every objective x {ResNet, ConvNeXt, ViT}: a finite loss whose gradients reach the backbone and the heads."""

from __future__ import annotations

import pytest
import torch

from densessl.backbones import DenseBackbone, encode_views
from densessl.data.collate import collate_views
from densessl.data.transforms import MultiCrop, MultiCropConfig
from densessl.objectives import OBJECTIVES

ARCHS = ["resnet18", "convnext_atto", "vit_tiny_patch16_224"]
SMALL_HEADS = {"projector": "64-64", "local_projector": "32-32"}


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
    method = method_cls.from_backbone(backbone, config)
    views = _batch()
    out = method(encode_views(backbone, views), views)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert all(torch.isfinite(v).all() for v in out.values())
    out["loss"].backward()
    missing = [n for n, p in backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for backbone parameters {missing[:5]}"
    assert any(p.grad.abs().sum() > 0 for p in backbone.parameters())
    head_missing = [n for n, p in method.named_parameters() if p.grad is None]
    assert not head_missing, f"no gradient for head parameters {head_missing[:5]}"
