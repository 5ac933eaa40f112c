"""Optimizers and the per-iteration learning-rate schedule of the VICRegL recipes.

* ``LARS`` follows the official VICReg/VICRegL optimizer (``optimizers.py``): ``g <- g + wd * p`` and the trust ratio
  ``eta * ‖p‖ / ‖g‖`` (computed *after* adding weight decay, 1 where either norm is 0), then heavy-ball momentum
  ``mu <- m * mu + g`` and ``p <- p - lr * mu``. Parameters with one dimension (biases, norm weights) get neither
  weight decay nor the trust ratio. timm's ``Lars`` is not used because it divides by ``‖g‖ + wd ‖p‖`` (the
  original LARS paper) and so does not reproduce the official runs.
* ``AdamW`` / ``SGD`` from torch, with weight decay only on parameters with more than one dimension.
* ``lr_at(step)``: linear warm-up from 0 to ``base_lr * batch / 256`` over the warm-up steps, then cosine decay to
  ``end_lr_ratio`` times the peak (official ``utils.learning_schedule``).
* ``detectron2_lr_factor(step)``: detectron2's ``WarmupMultiStepLR`` / ``WarmupCosineLR`` multiplier for detection
  fine-tuning (linear warm-up *multiplying* the decay, from ``warmup_factor``).
* ``param_groups``: the one weight-decay rule, in the two forms the reference recipes use: ``no_decay="1d"`` (VICReg /
  VICRegL: every parameter with one dimension -- biases and normalization weights) and ``no_decay="norm"``
  (detectron2: parameters of normalization layers get ``weight_decay_norm``; biases decay like weights).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from densessl.optim_rules import decay_factor, param_groups
from densessl.train.config import OptimConfig

__all__ = ["LARS", "param_groups", "build_optimizer", "lr_at", "peak_lr", "detectron2_lr_factor"]




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


def build_optimizer(modules: Iterable[nn.Module], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name`` over ``modules``; the LR is set every step by the loop."""
    groups = param_groups(modules, cfg.weight_decay)
    if cfg.name == "lars":
        for group in groups:
            group["lars_exclude"] = group.pop("no_decay")
        return LARS(groups, lr=0.0, weight_decay=cfg.weight_decay, momentum=cfg.momentum, eta=cfg.lars_eta)
    for group in groups:
        group.pop("no_decay")
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
    if step < warmup_steps:
        return peak * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    return peak * decay_factor(min(step - warmup_steps, decay_steps) / decay_steps, "cosine", end_ratio=cfg.end_lr_ratio)


def detectron2_lr_factor(step: int, total: int, *, warmup_iters: int, warmup_factor: float, schedule: str,
                         milestones: list[int], gamma: float = 0.1, min_lr_ratio: float = 0.0) -> float:
    """detectron2's learning-rate multiplier at ``step`` (0-based) of ``total``: warm-up x (multi-step or cosine).

    ``multistep``: ``gamma ** (number of milestones <= step)``; ``cosine``: from 1 to ``min_lr_ratio`` over the whole
    run. During the first ``warmup_iters`` steps the result is multiplied by a linear ramp from ``warmup_factor`` to 1.
    """
    if schedule == "multistep":
        factor = gamma ** sum(step >= s for s in milestones)
    elif schedule == "cosine":
        factor = decay_factor(step / max(total, 1), "cosine", end_ratio=min_lr_ratio)
    else:
        raise ValueError(f"schedule must be multistep or cosine, got {schedule!r}")
    if step < warmup_iters:
        alpha = step / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor
