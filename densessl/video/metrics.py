"""The DAVIS measures, computed as the official davis2017-evaluation computes them (numpy only).

Per object and frame (``davis2017/metrics.py``):
    * J, region similarity (``region_similarity``): the IoU of the binary masks; 1 when both are empty. Pixels marked
      in ``void`` are excluded when a void map is given.
    * F, contour accuracy (``contour_accuracy``): boundary maps by the ``seg2bmap`` rule (a pixel is boundary if it
      differs from its right, bottom or bottom-right neighbour; on the last row only the right neighbour counts, on
      the last column only the bottom one, the bottom-right pixel never is); a tolerance of
      ``bound_pix = ceil(0.008 * sqrt(H^2 + W^2))`` pixels: each boundary map is dilated with a disk of that radius
      (the offsets with ``dx^2 + dy^2 <= r^2``, skimage's ``disk``); precision = predicted boundary pixels within the
      dilated ground-truth boundary / predicted boundary pixels, recall the other way round; no predicted and some
      ground-truth boundary: P = 1, R = 0; some predicted and none in the ground truth: P = 0, R = 1; neither:
      P = R = 1; F = 2PR / (P + R), 0 when P + R = 0. With a void map both masks are cut to the non-void pixels first.

Per sequence (``davis2017/evaluation.py``, semi-supervised task, ``evaluate_sequence``):
    * The objects are the labels ``1..K`` with ``K`` the largest label of the first frame's annotation (after void,
      255, is set to 0).
    * The first and the last frame are not evaluated (``masks[:, 1:-1]``).
    * Void pixels count as background in the annotation and are not excluded: the official semi-supervised evaluation
      passes no void map to J and F. ``exclude_void=True`` excludes them instead.
    * Per object: J mean (mean over the evaluated frames), J recall (the fraction of frames with J > 0.5), the same
      for F. A sequence's J / F is the mean over its objects.

Overall (``summarize``): J-mean is the mean over **all objects of all sequences** of their J mean (so a sequence with
three objects weighs three times), F-mean likewise, and J&F-mean = (J-mean + F-mean) / 2, the official global score.
Recalls are averaged over objects the same way. Values are fractions in ``[0, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BOUND_TH",
    "BoundaryScore",
    "DavisScores",
    "SequenceScores",
    "boundary_score",
    "boundary_tolerance",
    "contour_accuracy",
    "dilate_disk",
    "evaluate_sequence",
    "region_similarity",
    "seg2bmap",
    "summarize",
]

BOUND_TH = 0.008
_VOID_LABEL = 255


@dataclass(frozen=True)
class BoundaryScore:
    """Contour accuracy of one binary mask against one ground-truth mask.

    Attributes:
        precision: Predicted boundary pixels near a ground-truth boundary / predicted boundary pixels.
        recall: Ground-truth boundary pixels near a predicted boundary / ground-truth boundary pixels.
        f: ``2 P R / (P + R)`` (0 when both are 0).
    """

    precision: float
    recall: float
    f: float


@dataclass(frozen=True)
class SequenceScores:
    """J and F of one sequence, per object and evaluated frame.

    Attributes:
        name: Sequence name.
        object_ids: The object labels ``1..K``.
        j: ``(K, T)`` region similarity per object and evaluated frame (``T`` = frames - 2).
        f: ``(K, T)`` contour accuracy.
        frames: Frames of the sequence (including the first and the last).
    """

    name: str
    object_ids: list[int]
    j: np.ndarray
    f: np.ndarray
    frames: int

    @property
    def j_mean_per_object(self) -> np.ndarray:
        """``(K,)`` J mean of each object."""
        return self.j.mean(axis=1)

    @property
    def j_recall_per_object(self) -> np.ndarray:
        """``(K,)`` fraction of frames with J > 0.5, per object."""
        return (self.j > 0.5).mean(axis=1)

    @property
    def f_mean_per_object(self) -> np.ndarray:
        """``(K,)`` F mean of each object."""
        return self.f.mean(axis=1)

    @property
    def f_recall_per_object(self) -> np.ndarray:
        """``(K,)`` fraction of frames with F > 0.5, per object."""
        return (self.f > 0.5).mean(axis=1)

    @property
    def j_mean(self) -> float:
        """The sequence's J: the mean over its objects of their J mean."""
        return float(self.j_mean_per_object.mean())

    @property
    def f_mean(self) -> float:
        """The sequence's F: the mean over its objects of their F mean."""
        return float(self.f_mean_per_object.mean())

    @property
    def jf_mean(self) -> float:
        """``(J + F) / 2`` of the sequence."""
        return (self.j_mean + self.f_mean) / 2


@dataclass(frozen=True)
class DavisScores:
    """The global DAVIS scores (fractions in ``[0, 1]``), means over all objects of all sequences.

    Attributes:
        j_mean: J-mean.
        j_recall: J-recall.
        f_mean: F-mean.
        f_recall: F-recall.
        jf_mean: ``(J-mean + F-mean) / 2``.
        objects: Objects counted.
        sequences: The per-sequence scores, in evaluation order.
    """

    j_mean: float
    j_recall: float
    f_mean: float
    f_recall: float
    jf_mean: float
    objects: int
    sequences: list[SequenceScores]


def _check_pair(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None) -> None:
    if pred.shape != gt.shape or pred.ndim != 2 or (void is not None and void.shape != gt.shape):
        shapes = f"{pred.shape} and {gt.shape}" + (f" (void {void.shape})" if void is not None else "")
        raise ValueError(f"masks must be 2-D of one shape, got {shapes}")


def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """J: the IoU of two binary masks (1 when both are empty).

    Args:
        pred: ``(H, W)`` predicted mask (nonzero = object).
        gt: ``(H, W)`` ground-truth mask.
        void: Optional ``(H, W)`` mask of pixels to leave out.

    Returns:
        J in ``[0, 1]``.
    """
    _check_pair(pred, gt, void)
    pred, gt = pred.astype(bool), gt.astype(bool)
    keep = np.ones_like(gt) if void is None else ~void.astype(bool)
    union = np.count_nonzero((pred | gt) & keep)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt & keep) / union


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """The boundary map of a binary mask, davis2017-evaluation's ``_seg2bmap`` at the mask's own size.

    Args:
        mask: ``(H, W)`` binary mask.

    Returns:
        ``(H, W)`` bool: pixels that differ from their right, bottom or bottom-right neighbour (last row: the right one
        only; last column: the bottom one only; the bottom-right corner pixel: never).
    """
    seg = mask.astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a disk (the offsets with ``dx^2 + dy^2 <= radius^2``); outside the image counts as 0.

    Row by row: each disk row is a horizontal run of half-width ``isqrt(r^2 - dy^2)``, done with a cumulative sum.

    Args:
        mask: ``(H, W)`` binary mask.
        radius: Disk radius in pixels (0: no dilation).

    Returns:
        ``(H, W)`` bool.
    """
    seg = mask.astype(bool)
    if radius <= 0:
        return seg.copy()
    height, width = seg.shape
    runs: dict[int, np.ndarray] = {}
    out = np.zeros_like(seg)
    for dy in range(-radius, radius + 1):
        half = math.isqrt(radius * radius - dy * dy)
        if half not in runs:
            padded = np.pad(seg, ((0, 0), (half, half))).astype(np.int32)
            total = np.zeros((height, width + 2 * half + 1), np.int32)
            np.cumsum(padded, axis=1, out=total[:, 1:])
            runs[half] = (total[:, 2 * half + 1:] - total[:, :width]) > 0  # any of seg[y, x-half .. x+half]
        run = runs[half]
        if dy >= 0:
            out[:height - dy] |= run[dy:]  # out[y] |= run[y + dy]
        else:
            out[-dy:] |= run[:height + dy]
    return out


def boundary_tolerance(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """``ceil(bound_th * sqrt(H^2 + W^2))`` pixels; a ``bound_th >= 1`` is a pixel count already.

    480 x 854: ``ceil(0.008 * 979.6) = 8``.
    """
    if bound_th >= 1:
        return int(bound_th)
    return math.ceil(bound_th * math.hypot(height, width))


def boundary_score(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None,
                   bound_th: float = BOUND_TH) -> BoundaryScore:
    """Boundary precision, recall and F of a predicted binary mask (davis2017-evaluation's ``f_measure``).

    Args:
        pred: ``(H, W)`` predicted mask.
        gt: ``(H, W)`` ground-truth mask.
        void: Optional ``(H, W)`` mask of pixels cut from both masks before taking their boundaries.
        bound_th: Tolerance as a fraction of the image diagonal (``< 1``) or in pixels.

    Returns:
        ``BoundaryScore``.
    """
    _check_pair(pred, gt, void)
    pred, gt = pred.astype(bool), gt.astype(bool)
    if void is not None:
        keep = ~void.astype(bool)
        pred, gt = pred & keep, gt & keep
    radius = boundary_tolerance(*gt.shape, bound_th=bound_th)
    pred_boundary, gt_boundary = seg2bmap(pred), seg2bmap(gt)
    n_pred, n_gt = int(np.count_nonzero(pred_boundary)), int(np.count_nonzero(gt_boundary))
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.count_nonzero(pred_boundary & dilate_disk(gt_boundary, radius)) / n_pred
        recall = np.count_nonzero(gt_boundary & dilate_disk(pred_boundary, radius)) / n_gt
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return BoundaryScore(precision=float(precision), recall=float(recall), f=float(f))


def contour_accuracy(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None,
                     bound_th: float = BOUND_TH) -> float:
    """F: the boundary F-measure of ``boundary_score``."""
    return boundary_score(pred, gt, void, bound_th).f


def evaluate_sequence(name: str, predictions: Sequence[np.ndarray], annotations: Sequence[np.ndarray],
                      exclude_void: bool = False) -> SequenceScores:
    """J and F of one sequence, semi-supervised: every frame but the first and the last.

    Args:
        name: Sequence name (for the result and the messages).
        predictions: One ``(H, W)`` label map per frame (object ids; other values count as background).
        annotations: One ``(H, W)`` ground-truth label map per frame (0 background, 1..K objects, 255 void).
        exclude_void: Leave void pixels out of J and F (the official semi-supervised evaluation counts them as
            background, the default).

    Returns:
        ``SequenceScores`` over frames ``1 .. n-2``.

    Raises:
        ValueError: Fewer than 3 frames, a different number of predictions and annotations, different sizes, or no
            object in the first annotation.
    """
    if len(predictions) != len(annotations):
        raise ValueError(f"sequence {name!r}: {len(predictions)} predicted masks for {len(annotations)} annotations")
    if len(annotations) < 3:
        raise ValueError(f"sequence {name!r} has {len(annotations)} frames; the semi-supervised evaluation leaves out "
                         f"the first and the last frame and needs at least 3")
    first = np.where(annotations[0] == _VOID_LABEL, 0, annotations[0])
    count = int(first.max(initial=0))
    if count == 0:
        raise ValueError(f"sequence {name!r}: the first frame's annotation holds no object (labels 1..K)")
    object_ids = list(range(1, count + 1))
    evaluated = range(1, len(annotations) - 1)
    j = np.zeros((count, len(evaluated)))
    f = np.zeros((count, len(evaluated)))
    for column, index in enumerate(evaluated):
        annotation, prediction = annotations[index], predictions[index]
        if prediction.shape != annotation.shape:
            raise ValueError(f"sequence {name!r}, frame {index}: predicted mask {prediction.shape} but annotation "
                             f"{annotation.shape}")
        void = annotation == _VOID_LABEL
        truth = np.where(void, 0, annotation)
        for row, object_id in enumerate(object_ids):
            gt, pred = truth == object_id, prediction == object_id
            j[row, column] = region_similarity(pred, gt, void if exclude_void else None)
            f[row, column] = contour_accuracy(pred, gt, void if exclude_void else None)
    return SequenceScores(name=name, object_ids=object_ids, j=j, f=f, frames=len(annotations))


def summarize(sequences: Sequence[SequenceScores]) -> DavisScores:
    """The global scores: means over all objects of all sequences.

    Raises:
        ValueError: No sequence.
    """
    if not sequences:
        raise ValueError("no sequence to summarize")
    j_means = np.concatenate([s.j_mean_per_object for s in sequences])
    f_means = np.concatenate([s.f_mean_per_object for s in sequences])
    j_recalls = np.concatenate([s.j_recall_per_object for s in sequences])
    f_recalls = np.concatenate([s.f_recall_per_object for s in sequences])
    j_mean, f_mean = float(j_means.mean()), float(f_means.mean())
    return DavisScores(j_mean=j_mean, j_recall=float(j_recalls.mean()), f_mean=f_mean,
                       f_recall=float(f_recalls.mean()), jf_mean=(j_mean + f_mean) / 2, objects=int(j_means.size),
                       sequences=list(sequences))
