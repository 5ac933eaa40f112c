"""Optimizers and the per-iteration learning-rate schedule of the VICRegL recipes.

* ``LARS`` follows the official VICReg/VICRegL optimizer (``optimizers.py``): ``g <- g + wd * p`` and the trust ratio
  ``eta * ‖p‖ / ‖g‖`` (computed *after* adding weight decay, 1 where either norm is 0), then heavy-ball momentum
  ``mu <- m * mu + g`` and ``p <- p - lr * mu``. Parameters with one dimension (biases, norm weights) get neither
  weight decay nor the trust ratio. timm's ``Lars`` is not used because it divides by ``‖g‖ + wd ‖p‖`` (the
  original LARS paper) and so does not reproduce the official runs.
* ``AdamW`` / ``SGD`` from torch, with weight decay only on parameters with more than one dimension.
* ``lr_at(step)``: linear warm-up from 0 to ``base_lr * batch / 256`` over the warm-up steps, then cosine decay to
  ``end_lr_ratio`` times the peak (official ``utils.learning_schedule``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from densessl.config import OptimConfig

__all__ = ["LARS", "param_groups", "build_optimizer", "lr_at", "peak_lr"]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling, as in the official VICReg/VICRegL code.

    Param groups with ``lars_exclude=True`` skip weight decay and the trust ratio.

    Per parameter ``p`` with gradient ``g`` (official ``LARS.step``)::

        u = g + wd * p                                  # not for excluded groups
        u = u * (eta * |p| / |u|  if |p| > 0 and |u| > 0 else 1)
        mu = momentum * mu + u
        p = p - lr * mu

    Implementation: the whole group at once with ``torch._foreach_*`` kernels (one norm kernel for all parameters, the
    trust ratios as a tensor, so no host synchronisation on a GPU), and ``u`` is never scaled in a separate pass:
    ``mu = momentum * mu + trust * u`` is one ``addcmul``. ``p.grad`` is not modified. Same values as the per-tensor
    loop up to floating-point rounding of the fused multiply-add.
    """

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 eta: float = 1e-3) -> None:
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or eta <= 0:
            raise ValueError(f"invalid LARS settings lr={lr} weight_decay={weight_decay} momentum={momentum} eta={eta}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            mus = []
            for p in params:
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mus.append(state["mu"])
            torch._foreach_mul_(mus, group["momentum"])
            if group["lars_exclude"]:
                torch._foreach_add_(mus, grads)
            else:
                updates = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                param_norm = torch.stack(torch._foreach_norm(params))
                update_norm = torch.stack(torch._foreach_norm(updates))
                trust = torch.where(
                    (param_norm > 0) & (update_norm > 0),
                    group["eta"] * param_norm / update_norm,
                    torch.ones_like(param_norm),
                )
                torch._foreach_addcmul_(mus, updates, list(trust.unbind()))
            torch._foreach_add_(params, mus, alpha=-group["lr"])
        return loss


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Split trainable parameters: ``ndim > 1`` get ``weight_decay``; biases and norm weights get none."""
    decay, no_decay = [], []
    for module in modules:
        for param in module.parameters():
            if param.requires_grad:
                (decay if param.ndim > 1 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def build_optimizer(modules: Iterable[nn.Module], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name`` over ``modules``; the LR is set every step by the loop."""
    groups = param_groups(modules, cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(groups, lr=0.0, weight_decay=cfg.weight_decay, momentum=cfg.momentum, eta=cfg.lars_eta)
    for group in groups:
        group.pop("lars_exclude")
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, betas=tuple(cfg.betas))
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.name!r}; use lars, adamw or sgd")


def peak_lr(cfg: OptimConfig, batch_size: int) -> float:
    """``base_lr * batch_size / 256`` with the global batch size."""
    return cfg.base_lr * batch_size / 256.0


def lr_at(step: int, total_steps: int, warmup_steps: int, cfg: OptimConfig, batch_size: int) -> float:
    """Learning rate at optimizer step ``step`` (0-based) of ``total_steps``."""
    peak = peak_lr(cfg, batch_size)
    end = peak * cfg.end_lr_ratio
    if step < warmup_steps:
        return peak * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(step - warmup_steps, decay_steps) / decay_steps
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * progress))
