"""Projectors: the official MLP layout and per-location application."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from densessl.projectors import MLP, LocalProjector, default_norm, parse_mlp_spec


def test_mlp_layout_matches_official_builder() -> None:
    mlp = MLP(16, "32-32-8", norm="bn")
    kinds = [type(m) for m in mlp]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert mlp[-1].bias is None and mlp.out_dim == 8
    assert isinstance(MLP(16, "8-4", norm="ln")[1], nn.LayerNorm)


def test_local_projector_applies_one_mlp_per_location() -> None:
    proj = LocalProjector(6, "10-4", norm="none")
    maps = torch.randn(2, 6, 3, 5)
    out = proj(maps)
    assert out.shape == (2, 15, 4)
    torch.testing.assert_close(out[1, 7], proj.mlp(maps[1, :, 1, 2]))  # raster index 7 = row 1, col 2


def test_specs_and_norms() -> None:
    assert parse_mlp_spec("8192-8192-8192") == [8192] * 3 and parse_mlp_spec([4, 2]) == [4, 2]
    assert default_norm("resnet50") == "bn" and default_norm("convnext_small") == "ln"
    with pytest.raises(ValueError, match="512-512-512"):
        parse_mlp_spec("512x512")
    with pytest.raises(ValueError, match="norm"):
        MLP(4, "4-4", norm="gn")


def test_grouped_forward_equals_one_call_per_group() -> None:
    torch.manual_seed(0)
    mlp = MLP(6, "16-16-4", norm="bn")
    x = torch.randn(3 * 5, 6)
    reference = MLP(6, "16-16-4", norm="bn")
    reference.load_state_dict(mlp.state_dict())
    expected = torch.cat([reference(chunk) for chunk in x.chunk(3)])
    torch.testing.assert_close(mlp.forward_groups(x, 3), expected)
    torch.testing.assert_close(mlp[1].running_mean, reference[1].running_mean)  # updated once per group, as per view
    with pytest.raises(ValueError, match="groups"):
        mlp.forward_groups(torch.randn(7, 6), 3)
