"""The rules every densessl optimizer shares: which parameters skip weight decay, and the decay of the learning rate.

Used by the training recipes (``densessl.train.optim``) and the linear segmentation probe (``densessl.seg.linear``), so
there is one weight-decay rule and one decay curve in the code base.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn

__all__ = ["decay_factor", "param_groups"]

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def decay_factor(progress: float, schedule: str, *, end_ratio: float = 0.0, power: float = 0.9) -> float:
    """Learning-rate multiplier after a fraction ``progress`` in ``[0, 1]`` of the decay.

    ``cosine``: ``end_ratio + (1 - end_ratio) * (1 + cos(pi * progress)) / 2``; ``poly``:
    ``end_ratio + (1 - end_ratio) * (1 - progress) ** power``. Both go from 1 to ``end_ratio``.
    """
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        curve = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "poly":
        curve = (1.0 - progress) ** power
    else:
        raise ValueError(f"schedule must be cosine or poly, got {schedule!r}")
    return end_ratio + (1.0 - end_ratio) * curve


def param_groups(modules: Iterable[nn.Module], weight_decay: float, no_decay: str = "1d",
                 no_decay_weight_decay: float = 0.0) -> list[dict]:
    """Split the trainable parameters into a decayed group and a group with ``no_decay_weight_decay``.

    Args:
        modules: Modules whose parameters are optimized (a parameter shared by several is listed once).
        weight_decay: Weight decay of the first group.
        no_decay: Which parameters go into the second group: ``"1d"`` every parameter with ``ndim <= 1`` (biases,
            normalization weights; VICReg/VICRegL, which also exclude them from LARS adaptation), or ``"norm"`` the
            parameters of normalization layers (detectron2's ``WEIGHT_DECAY_NORM``).
        no_decay_weight_decay: Weight decay of the second group.

    Returns:
        ``[{"params": [...], "weight_decay": ...}, ...]`` with empty groups left out; the second group (if present)
        has ``"no_decay": True``.
    """
    if no_decay not in ("1d", "norm"):
        raise ValueError(f"no_decay must be '1d' or 'norm', got {no_decay!r}")
    modules = list(modules)
    norm_params: set[int] = set()
    if no_decay == "norm":
        for module in modules:
            for sub in module.modules():
                if isinstance(sub, _NORM_TYPES) or "LayerNorm" in type(sub).__name__:
                    norm_params.update(id(p) for p in sub.parameters(recurse=False))
    decay, skip, seen = [], [], set()
    for module in modules:
        for param in module.parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            skipped = param.ndim <= 1 if no_decay == "1d" else id(param) in norm_params
            (skip if skipped else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "no_decay": False},
              {"params": skip, "weight_decay": no_decay_weight_decay, "no_decay": True}]
    return [group for group in groups if group["params"]]
