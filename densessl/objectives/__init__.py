"""Self-supervised objectives. Each method is an ``nn.Module`` built with ``from_backbone(backbone, config)`` whose
``forward(features, views, teacher_features=None)`` returns ``{"loss": ..., "<term>": ...}``.

Objectives with ``uses_teacher = True`` (DenseCL, PixPro) also define ``ema_pairs()`` and ``momentum_at(step, total)``
and receive the EMA teacher's features from the training loop. ``student_views`` / ``teacher_views`` (DenseCL: ``(0,)``
/ ``(1,)``, PixPro: ``(0, 1)`` / ``(0, 1)``; absent or ``None``: every view) name the views each backbone encodes, one
forward per view: ``features`` then holds those views in that order (``encode_views(..., select=views)``).

``OBJECTIVES`` maps a method name to ``(method class, config dataclass)``.
"""

from densessl.objectives.densecl import DenseCL, DenseCLConfig
from densessl.objectives.pixpro import PixPro, PixProConfig
from densessl.objectives.vicreg import VICReg, VICRegConfig, VICRegLoss
from densessl.objectives.vicregl import VICRegL, VICRegLConfig, VICRegLCriterion, VICRegLLocalLoss

OBJECTIVES: dict[str, tuple[type, type]] = {
    "vicreg": (VICReg, VICRegConfig),
    "vicregl": (VICRegL, VICRegLConfig),
    "densecl": (DenseCL, DenseCLConfig),
    "pixpro": (PixPro, PixProConfig),
}

__all__ = ["OBJECTIVES", "DenseCL", "DenseCLConfig", "PixPro", "PixProConfig", "VICReg", "VICRegConfig", "VICRegLoss", "VICRegL", "VICRegLConfig", "VICRegLCriterion", "VICRegLLocalLoss"]
