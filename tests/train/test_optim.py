"""LARS against a literal per-tensor re-derivation of the official update, and the LR schedule."""

from __future__ import annotations

import math

import pytest
import torch

from densessl.train.config import OptimConfig
from densessl.train.optim import LARS, lr_at


def reference_lars_step(params, grads, mus, lr, weight_decay, momentum, eta, exclude) -> None:
    """The official VICReg/VICRegL ``LARS.step``, one tensor at a time."""
    for p, g, mu in zip(params, grads, mus):
        update = g.clone()
        if not exclude:
            update = update + weight_decay * p
            param_norm, update_norm = p.norm(), update.norm()
            if param_norm > 0 and update_norm > 0:
                update = update * (eta * param_norm / update_norm)
        mu.mul_(momentum).add_(update)
        p.sub_(lr * mu)


def test_lars_matches_the_official_update() -> None:
    torch.manual_seed(0)
    weights = [torch.randn(64, 32), torch.zeros(8, 8), torch.randn(16, 4, 3, 3)]  # a zero tensor: trust ratio 1
    biases = [torch.randn(32)]
    params = [w.clone().requires_grad_() for w in weights + biases]
    groups = [
        {"params": params[:3], "weight_decay": 0.05, "lars_exclude": False},
        {"params": params[3:], "weight_decay": 0.0, "lars_exclude": True},
    ]
    optimizer = LARS(groups, lr=0.4, momentum=0.9, eta=1e-3)
    ref = [t.clone() for t in weights + biases]
    ref_mu = [torch.zeros_like(t) for t in ref]
    for _ in range(4):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        reference_lars_step(ref[:3], grads[:3], ref_mu[:3], 0.4, 0.05, 0.9, 1e-3, exclude=False)
        reference_lars_step(ref[3:], grads[3:], ref_mu[3:], 0.4, 0.0, 0.9, 1e-3, exclude=True)
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.detach(), r)
        for p, g in zip(params, grads):
            torch.testing.assert_close(p.grad, g)  # the optimizer leaves gradients alone


def test_lars_skips_parameters_without_gradient() -> None:
    used, unused = torch.randn(4, 4, requires_grad=True), torch.randn(4, 4, requires_grad=True)
    before = unused.detach().clone()
    optimizer = LARS([used, unused], lr=0.1, weight_decay=1e-4)
    used.grad = torch.ones_like(used)
    optimizer.step()
    assert torch.equal(unused.detach(), before)
    assert "mu" not in optimizer.state[unused]


def test_lars_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="invalid LARS"):
        LARS([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=1.0)


def test_lr_schedule_warmup_then_cosine() -> None:
    cfg = OptimConfig(base_lr=0.2, end_lr_ratio=0.0)
    peak = 0.2 * 512 / 256
    total, warmup = 100, 10
    assert lr_at(0, total, warmup, cfg, 512) == 0.0
    assert lr_at(5, total, warmup, cfg, 512) == pytest.approx(peak / 2)
    assert lr_at(warmup, total, warmup, cfg, 512) == pytest.approx(peak)
    mid = warmup + (total - warmup) // 2
    assert lr_at(mid, total, warmup, cfg, 512) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-2)
    assert lr_at(total - 1, total, warmup, cfg, 512) < 0.01 * peak
