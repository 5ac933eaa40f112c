"""The edge-only control features (densessl.eval.edge_baseline)."""

from __future__ import annotations

import torch

from densessl.eval.edge_baseline import EdgeFeatures


def test_shapes_and_no_parameters() -> None:
    module = EdgeFeatures()
    out = module(torch.randn(2, 3, 100, 64))
    assert len(out.maps) == 1 and out.maps[0].shape == (2, 216, 4, 2)  # ceil(100 / 32), ceil(64 / 32)
    assert out.pooled.shape == (2, 216)
    assert module.channels == [216] and not list(module.parameters())


def test_responds_to_edges_only() -> None:
    """A flat image gives zero features everywhere; a step edge lights up only the cells near it."""
    module = EdgeFeatures()
    flat = torch.full((1, 3, 128, 128), 0.3)
    assert module(flat).maps[0].abs().max() < 1e-6  # float rounding of the blur only
    step = flat.clone()
    step[..., :, 64:] = -0.7  # a vertical edge between cell columns 1 and 2
    maps = module(step).maps[0][0]  # (24 * 9, 4, 4): unfold orders channels as (feature, 3x3 slot)
    centre = maps.reshape(24, 9, 4, 4)[:, 4]  # the slot of the cell itself
    per_column = centre.abs().sum(dim=(0, 1))
    assert per_column[1] > 1 and per_column[2] > 1 and per_column[0] < 1e-5 and per_column[3] < 1e-5
