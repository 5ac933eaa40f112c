"""Gram anchoring: a dense regularizer any objective can add (DINOv3, Siméoni et al. 2025, Sec. 4.2).

Written from the paper's formulas; no code of the dinov3 repository is used. Per image, with ``X_S`` the student's
``P x d`` patch features and ``X_G`` the Gram teacher's ``P x d'`` patch features of the same view, both
L2-normalised per patch::

    G_S = X_S X_S^T,  G_G = X_G X_G^T                       # (P, P) patch-similarity (Gram) matrices
    L_gram = || G_S - G_G ||_F^2                             # the paper's term, per image
    loss  += weight * mean over images and global views of L_gram / P^2     (normalization "mean", the default)

Only the Gram matrices are compared, so the teacher's feature width ``d'`` may differ from the student's (an
external backbone of another architecture can anchor, as long as its grid is resized to the student's).

Terms and options (``GramConfig``):

* **Features**: the student's backbone map at ``level`` (a ConvNet's stage output, a ViT's patch tokens), for the
  global views only, as in the paper (the local crops get no Gram term). ``(B, C, h, w)`` -> ``P = h * w`` patches in
  row-major order.
* **Gram teacher** (``source``): ``online`` copies the student backbone, ``ema`` the EMA teacher backbone (objectives
  with a teacher: DenseCL, PixPro), at ``start_iter`` and then every ``refresh_every`` iterations, at most
  ``max_refreshes`` times (``None``: no cap) -- the released ViT-7B Gram stage refreshes every 10,000 iterations
  from iteration 1,010,000 on, at most 3 times (``update_frequency``, ``it_first_update``, ``max_updates`` of its
  ``dinov3_vit7b16_gram_anchor.yaml``). ``weights``: a frozen external backbone (any file ``densessl.weights``
  reads: a run folder, a converted released checkpoint) anchors instead and is never refreshed. The Gram teacher
  runs in eval mode (BatchNorm with its running statistics) under ``no_grad``, and it, the iteration it was taken at
  and the refresh count are part of the checkpoint.
* **Higher-resolution teacher** (``teacher_scale``): the teacher sees the global views upsampled by this factor
  (bicubic) and its map is resized to the student's grid (bicubic, no antialiasing, as the released config's
  ``global_teacher_resize_method``/``_antialias``) -- the released Gram stage gives the teacher 512 px crops for the
  student's 256 px (``gram_teacher_crops_size``), the paper's high-resolution teacher.
* **weight**, **start_iter**: the term is added from iteration ``start_iter`` on, ``weight`` times.

Known differences: ``normalization`` ``mean`` (the default) is the mean squared error over all Gram entries, as the
released loss computes it (the paper writes the plain Frobenius norm, ``sum``: averaged over images only);
``remove_negative`` clips negative similarities to 0 in both matrices (the release's ``remove_neg``, off in its 7B
config; its ``remove_only_teacher_neg`` and batch-level ``img_level: false`` variants are not offered). The release
ramps the weight from 0 to 2 over its schedule (``loss_weight_schedule``) and builds the teacher's crops without
photometric distortions (``gram_teacher_no_distortions``); densessl keeps ``weight`` constant and feeds the teacher
the student's own global views, upsampled. The paper applies the term late in a very long ViT schedule; at this
library's scales ``start_iter`` is the user's choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from densessl.schema import Range, check_fields

__all__ = ["GramConfig", "gram_loss", "gram_matrices", "patches", "resize_to_grid"]


@dataclass
class GramConfig:
    """The ``gram`` section of a pretraining config (see the module docstring for each option)."""

    enabled: bool = False
    weight: Annotated[float, Range(ge=0)] = 1.0
    start_iter: Annotated[int, Range(ge=0)] = 0
    refresh_every: Annotated[int | None, Range(ge=1)] = None
    max_refreshes: Annotated[int | None, Range(ge=0)] = None
    source: Literal["online", "ema"] = "online"
    weights: str | None = None
    arch: str | None = None
    teacher_scale: Annotated[float, Range(gt=0)] = 1.0
    level: int = -1
    normalization: Literal["mean", "sum"] = "mean"
    remove_negative: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first impossible value."""
        check_fields(self)
        if self.weights is not None and (self.refresh_every is not None or self.source != "online"):
            raise ValueError("weights: a frozen external backbone is never refreshed; drop gram.refresh_every "
                             "and gram.source")


def gram_matrices(features: Tensor, remove_negative: bool = False) -> Tensor:
    """``(B, P, D)`` patch features -> ``(B, P, P)`` cosine similarities (fp32), negatives clipped if asked."""
    unit = F.normalize(features.float(), dim=-1)
    gram = unit @ unit.transpose(1, 2)
    return gram.clamp_min(0.0) if remove_negative else gram


def gram_loss(student: Tensor, teacher: Tensor, normalization: str = "mean", remove_negative: bool = False) -> Tensor:
    """The Gram-anchoring term between ``(B, P, D)`` student and ``(B, P, D')`` teacher patch features.

    Returns:
        A scalar: the mean over images of ``||G_S - G_G||_F^2`` (``sum``), or of that divided by ``P^2`` (``mean``).
        The teacher side carries no gradient.
    """
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} patch features must "
                         "share batch and patch count")
    with torch.no_grad():
        target = gram_matrices(teacher, remove_negative)
    squared = (gram_matrices(student, remove_negative) - target).pow(2)
    per_image = squared.sum(dim=(1, 2))
    if normalization == "mean":
        per_image = per_image / student.shape[1] ** 2
    return per_image.mean()


def resize_to_grid(maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """``(B, C, h', w')`` -> ``(B, C, h, w)`` (bicubic, no antialiasing); returned as is when it fits."""
    if tuple(maps.shape[-2:]) == tuple(grid):
        return maps
    return F.interpolate(maps.float(), size=grid, mode="bicubic", align_corners=False)


def patches(maps: Tensor) -> Tensor:
    """``(B, C, h, w)`` -> ``(B, h * w, C)`` in row-major cell order."""
    return rearrange(maps, "b c h w -> b (h w) c")
