"""Semantic-segmentation metrics from one confusion matrix, shared by every evaluator.

``ConfusionMatrix`` accumulates ``counts[target, pred]`` (int64) over any number of batches (and, with
``all_reduce``, over DDP ranks); ``compute`` turns it into ``SegMetrics``.

Conventions (those of mmsegmentation's ``IoUMetric``):
    * Pixels whose target is ``ignore_index`` count nowhere (their prediction is irrelevant).
    * ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` over the *whole* evaluated set (not averaged per image).
    * A class absent from both the targets and the predictions has ``0 / 0`` IoU: it is ``NaN`` in
      ``per_class_iou`` and excluded from ``miou``. A class that is only predicted (never in the targets) has IoU 0
      and *does* count. So ``miou`` is the mean over the classes that appear in the targets or in the predictions.
    * Per-class accuracy is ``TP_c / (TP_c + FN_c)`` (recall), ``NaN`` for classes absent from the targets;
      ``mean_acc`` averages the non-NaN values.
    * Every percentage is in ``[0, 100]``; with no valid pixel at all every metric is ``NaN``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["SegMetrics", "ConfusionMatrix"]


@dataclass
class SegMetrics:
    """Segmentation metrics, all in percent.

    Attributes:
        miou: Mean IoU over the classes present in the targets or the predictions (see the module docstring).
        per_class_iou: ``K`` IoUs, ``NaN`` for classes absent from both targets and predictions.
        pixel_acc: Correct pixels / valid (non-ignored) pixels.
        mean_acc: Mean per-class accuracy (recall) over the classes present in the targets.
        per_class_acc: ``K`` per-class accuracies, ``NaN`` for classes absent from the targets.
        num_pixels: Valid pixels counted.
    """

    miou: float
    per_class_iou: list[float]
    pixel_acc: float
    mean_acc: float
    per_class_acc: list[float]
    num_pixels: int


def _nanmean(values: Tensor) -> float:
    valid = values[~torch.isnan(values)]
    return float(valid.mean()) if valid.numel() else math.nan


class ConfusionMatrix:
    """Accumulates a ``(K, K)`` int64 confusion matrix, rows = target class, columns = predicted class.

    Args:
        num_classes: Number of classes ``K``.
        ignore_index: Target value whose pixels are skipped.

    Example:
        >>> cm = ConfusionMatrix(3)
        >>> cm.update(pred, target)  # any shapes, equal
        >>> cm.compute().miou
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Zero the counts."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            pred: Predicted class indices, integer tensor of any shape, values in ``[0, K)``.
            target: Target class indices (or ``ignore_index``), same shape as ``pred``.

        Raises:
            ValueError: Shapes differ, a tensor is not integer, or a value is out of range.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError(f"pred and target must be integer class indices, got {pred.dtype} and {target.dtype}")
        k = self.num_classes
        target = target.reshape(-1).to(torch.int64)
        pred = pred.reshape(-1).to(device=target.device, dtype=torch.int64)
        valid = target != self.ignore_index
        target, pred = target[valid], pred[valid]
        if target.numel() == 0:
            return
        bad_target = (target < 0) | (target >= k)
        if bool(bad_target.any()):
            values = torch.unique(target[bad_target])[:10].tolist()
            raise ValueError(f"target values {values} outside [0, {k}) and not ignore_index={self.ignore_index}")
        bad_pred = (pred < 0) | (pred >= k)
        if bool(bad_pred.any()):
            values = torch.unique(pred[bad_pred])[:10].tolist()
            raise ValueError(f"pred values {values} outside [0, {k})")
        counts = torch.bincount(target * k + pred, minlength=k * k)
        self.matrix += counts.reshape(k, k).cpu()

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (in place) and return ``self``.

        Raises:
            ValueError: The matrices have different ``num_classes`` or ``ignore_index``.
        """
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge ConfusionMatrix(num_classes={other.num_classes}, ignore_index={other.ignore_index}) "
                f"into ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index})"
            )
        self.matrix += other.matrix
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the counts over all DDP ranks (in place); a no-op unless ``torch.distributed`` is initialized.

        Every rank must call it. With the NCCL backend the matrix travels through the current CUDA device.

        Returns:
            ``self``.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        buffer = self.matrix.to(device)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        self.matrix = buffer.cpu()
        return self

    def compute(self) -> SegMetrics:
        """Metrics from the accumulated counts (see the module docstring for the conventions).

        Returns:
            ``SegMetrics`` in percent.
        """
        matrix = self.matrix.to(torch.float64)
        tp = matrix.diagonal()
        per_target = matrix.sum(dim=1)  # TP + FN
        per_pred = matrix.sum(dim=0)  # TP + FP
        union = per_target + per_pred - tp
        total = float(matrix.sum())
        nan = torch.full_like(tp, math.nan)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan) * 100.0
        acc = torch.where(per_target > 0, tp / per_target.clamp(min=1), nan) * 100.0
        return SegMetrics(
            miou=_nanmean(iou),
            per_class_iou=[float(v) for v in iou],
            pixel_acc=float(tp.sum()) / total * 100.0 if total > 0 else math.nan,
            mean_acc=_nanmean(acc),
            per_class_acc=[float(v) for v in acc],
            num_pixels=int(total),
        )
