"""Self-supervised objectives. Each method is an ``nn.Module`` built with ``from_backbone(backbone, config)`` whose
``forward(features, views)`` returns ``{"loss": ..., "<term>": ...}``.

``OBJECTIVES`` maps a method name to ``(method class, config dataclass)``.
"""

from densessl.objectives.vicreg import VICReg, VICRegConfig, VICRegLoss
from densessl.objectives.vicregl import VICRegL, VICRegLConfig, VICRegLLocalLoss

OBJECTIVES: dict[str, tuple[type, type]] = {
    "vicreg": (VICReg, VICRegConfig),
    "vicregl": (VICRegL, VICRegLConfig),
}

__all__ = ["OBJECTIVES", "VICReg", "VICRegConfig", "VICRegLoss", "VICRegL", "VICRegLConfig", "VICRegLLocalLoss"]
