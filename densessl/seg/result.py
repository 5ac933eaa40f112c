"""``SegEvalResult``: what every segmentation protocol (linear probe, kNN) returns, plus JSON / table renderings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from densessl.seg.metrics import SegMetrics

__all__ = ["SegEvalResult"]


def _finite_or_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf floats by ``None`` and tuples by lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


@dataclass
class SegEvalResult:
    """Result of one segmentation evaluation.

    Attributes:
        metrics: mIoU, per-class IoU, pixel and mean accuracy (percent).
        settings: Every setting that defines the protocol (config values plus derived sizes: feature map size,
            feature dimension, number of images, memory size, ...). JSON-serializable.
        class_names: ``K`` class names, aligned with ``metrics.per_class_iou``.
        timings: Wall-clock seconds per stage (informative only; not part of the protocol).
    """

    metrics: SegMetrics
    settings: dict[str, Any]
    class_names: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: ``mIoU``, ``per_class_iou`` (name -> percent or ``None``), accuracies, settings.

        Returns:
            A dict of plain Python values (``NaN`` becomes ``None``).
        """
        return {
            "mIoU": _finite_or_none(self.metrics.miou),
            "per_class_iou": {
                name: _finite_or_none(iou) for name, iou in zip(self.class_names, self.metrics.per_class_iou)
            },
            "pixel_acc": _finite_or_none(self.metrics.pixel_acc),
            "mean_acc": _finite_or_none(self.metrics.mean_acc),
            "num_pixels": self.metrics.num_pixels,
            "settings": _json_safe(self.settings),
            "timings": {key: round(value, 3) for key, value in self.timings.items()},
        }

    def format_table(self) -> str:
        """A readable multi-line table: per-class IoU, mIoU, accuracies and one line of settings."""
        width = max([len("mIoU"), *(len(name) for name in self.class_names)])
        lines = [f"{'class':<{width}}  {'IoU':>7}", "-" * (width + 9)]
        for name, iou in zip(self.class_names, self.metrics.per_class_iou):
            value = "    n/a" if math.isnan(iou) else f"{iou:7.2f}"
            lines.append(f"{name:<{width}}  {value}")
        lines.append("-" * (width + 9))
        lines.append(f"{'mIoU':<{width}}  {self.metrics.miou:7.2f}")
        lines.append(f"pixel acc {self.metrics.pixel_acc:.2f}  mean acc {self.metrics.mean_acc:.2f}")
        settings = ", ".join(f"{key}={value}" for key, value in self.settings.items())
        lines.append(f"settings: {settings}")
        return "\n".join(lines)
