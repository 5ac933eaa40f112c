"""Momentum-teacher helpers shared by the contrastive objectives (DenseCL, PixPro).

An objective that sets ``uses_teacher = True`` gets, from the training loop, the features of an EMA copy of the
backbone computed by the same ``encode_views`` path as the student's; it owns EMA copies of its own projection heads
(listed by ``ema_pairs()``) and says how fast the teacher moves (``momentum_at``). After every optimizer step the
loop calls ``ema_update(teacher, student, m)``: ``θ_t <- m θ_t + (1 - m) θ_s`` for every parameter. Buffers (BatchNorm
running statistics) are not averaged: like MoCo and PixPro, the teacher keeps its own.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["frozen_copy", "ema_update", "constant_momentum", "cosine_momentum"]


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with ``requires_grad=False`` on every parameter: the teacher's starting point."""
    teacher = copy.deepcopy(module)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``θ_t <- m θ_t + (1 - m) θ_s`` for matching parameters (same architecture, same order)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    teacher_params = list(teacher.parameters())
    student_params = list(student.parameters())
    if len(teacher_params) != len(student_params):
        raise ValueError(f"teacher has {len(teacher_params)} parameters, student {len(student_params)}")
    for t, s in zip(teacher_params, student_params):
        t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1.0 - momentum)


def constant_momentum(base: float, step: int, total_steps: int) -> float:
    """MoCo/DenseCL: the same momentum at every step."""
    return base


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL/PixPro: ``1 - (1 - base) (cos(pi k / K) + 1) / 2``, from ``base`` at step 0 to 1 at the last step."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / max(1, total_steps)) + 1.0) / 2.0
