"""Self-supervised objectives. Each method is an ``nn.Module`` built with ``from_backbone(backbone, config)`` whose
``forward(features, views, teacher_features=None)`` returns ``{"loss": ..., "<term>": ...}``.

Objectives with ``uses_teacher = True`` (DenseCL, PixPro) also define ``ema_pairs()`` and ``momentum_at(step, total)``
and receive the EMA teacher's features from the training loop.

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
