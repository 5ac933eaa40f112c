"""PixPro: pixel-to-propagation consistency between two views, positives defined by crop geometry.

Paper: Xie, Lin, Zhang, Cao, Lin, Hu, "Propagate Yourself: Exploring Pixel-Level Consistency for Unsupervised Visual
Representation Learning", CVPR 2021. Reference code: zdaxie/PixPro (``contrast/models/PixPro.py``,
``contrast/data/transform_coord.py``, ``tools/pixpro_base_r50_400ep.sh``), read for behaviour.

For views 1 and 2 (student ``x``, momentum-teacher ``x'``)::

    projector  : Conv1x1(C, 4096) -> BN -> ReLU -> Conv1x1(4096, 256)      (student and teacher)
    PPM (student only): y_i = Σ_j max(cos(x_i, x_j), 0)^γ · normalize(g(x_j)),  g = Conv1x1(256, 256), γ = 2
    positives  : cells i of view 1 and j of view 2 whose centres, in original-image coordinates normalized by the image
                 size, are closer than T = 0.7 times the larger of the two views' feature-bin diagonals
    L_pix(1,2) = -2 · mean_batch[ Σ_ij pos_ij cos(y1_i, x'2_j) / Σ_ij pos_ij ]
    L          = L_pix(1,2) + L_pix(2,1)  (+ w_ins · BYOL instance loss 2 - 2 cos on pooled vectors, off by default as in the
                 released scripts)
    teacher momentum: 1 - (1 - 0.99) (cos(pi k / K) + 1) / 2 over all K steps

Cell centres come from ``densessl.coords.cell_centers`` (the same grids as VICRegL); a flipped view's columns are
mirrored, which is what the reference obtains by swapping x0 and x1.

Differences from the reference:
    * Boxes are normalized by the image size ``(W, H)``; the reference divides pixel coordinates by ``(W - 1, H - 1)``
      (a sub-pixel difference in where positives start).
    * The instance branch (``ins_loss_weight > 0``) pools the student prediction and the teacher projection after the
      1x1-conv MLPs, as the reference; its predictor has the reference widths (256 -> 4096 -> 256).
    * Any timm backbone: the heads read its last requested level (C5 for ResNets; the reference uses C5 only).

As the reference, the student and the teacher run their backbone once per view (``student_views``,
``teacher_views``), so BatchNorm statistics are per view, like the projector's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from densessl.backbones import DenseBackbone, DenseFeatures
from densessl.coords import bin_diagonal, cell_centers, pairwise_distances
from densessl.data.collate import Views
from densessl.objectives.momentum import cosine_momentum, frozen_copy
from densessl.schema import Range, check_fields

__all__ = ["PixProConfig", "conv_mlp", "PixelPropagation", "positive_mask", "pixpro_loss", "target_cosine",
           "PixPro"]


@dataclass
class PixProConfig:
    """PixPro settings; defaults are the released 400-epoch ResNet-50 script."""

    pos_ratio: Annotated[float, Range(gt=0)] = 0.7
    gamma: float = 2.0
    hidden_dim: Annotated[int, Range(ge=1)] = 4096
    out_dim: Annotated[int, Range(ge=1)] = 256
    transform_layers: Literal[0, 1, 2] = 1
    momentum: Annotated[float, Range(ge=0, le=1)] = 0.99
    ins_loss_weight: Annotated[float, Range(ge=0)] = 0.0

    def validate(self) -> None:
        check_fields(self)


def conv_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """``Conv1x1 -> BN -> ReLU -> Conv1x1`` on ``(B, C, h, w)`` maps (the reference ``MLP2d``)."""
    return nn.Sequential(nn.Conv2d(in_dim, hidden_dim, 1), nn.BatchNorm2d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden_dim, out_dim, 1))


class PixelPropagation(nn.Module):
    """The pixel propagation module: ``y_i = Σ_j max(cos(x_i, x_j), 0)^γ · normalize(g(x_j))``.

    ``g`` is the identity (0 layers), one 1x1 conv (1, the default), or conv-BN-ReLU-conv (2). Shapes
    ``(B, D, h, w) -> (B, D, h, w)``.
    """

    def __init__(self, dim: int, gamma: float = 2.0, transform_layers: int = 1) -> None:
        super().__init__()
        self.gamma = gamma
        if transform_layers == 0:
            self.value = nn.Identity()
        elif transform_layers == 1:
            self.value = nn.Conv2d(dim, dim, 1)
        else:
            self.value = conv_mlp(dim, dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        value = F.normalize(rearrange(self.value(x), "b d h w -> b (h w) d"), dim=2)
        unit = F.normalize(rearrange(x, "b d h w -> b (h w) d"), dim=2)
        similarity = torch.einsum("bid,bjd->bij", unit, unit).clamp(min=0).pow(self.gamma)
        out = torch.einsum("bij,bjd->bid", similarity, value)
        return rearrange(out, "b (h w) d -> b d h w", h=height, w=width)


def positive_mask(boxes_a: Tensor, flipped_a: Tensor, boxes_b: Tensor, flipped_b: Tensor, shape_a: tuple[int, int],
                  shape_b: tuple[int, int], pos_ratio: float) -> Tensor:
    """Which cell pairs are positives: centre distance below ``pos_ratio`` x the larger bin diagonal.

    Args:
        boxes_a: ``(B, 4)`` normalized boxes of view a. flipped_a: ``(B,)``. Same for view b.
        shape_a: ``(h, w)`` of view a's map. shape_b: same for view b.
        pos_ratio: The threshold T in bin diagonals.

    Returns:
        ``(B, N_a, N_b)`` float mask (1 = positive), cells in raster order.
    """
    grid_a = cell_centers(boxes_a, flipped_a, *shape_a)
    grid_b = cell_centers(boxes_b, flipped_b, *shape_b)
    scale = torch.maximum(bin_diagonal(boxes_a, *shape_a), bin_diagonal(boxes_b, *shape_b))[:, None, None]
    return (pairwise_distances(grid_a, grid_b) / scale < pos_ratio).float()


def pixpro_loss(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """``-2 · mean_b[ Σ_ij mask_ij cos(p_i, t_j) / Σ_ij mask_ij ]``.

    Args:
        prediction: ``(B, D, h, w)`` student propagated features. target: ``(B, D, h', w')`` teacher projections.
        mask: ``(B, h*w, h'*w')`` positives.

    Returns:
        Scalar loss (in ``[-2, 2]``; samples with no positive pair contribute 0, as the reference's ``+1e-6``).
    """
    p = F.normalize(rearrange(prediction.float(), "b d h w -> b (h w) d"), dim=2)
    t = F.normalize(rearrange(target.float(), "b d h w -> b (h w) d"), dim=2)
    cosine = torch.einsum("bid,bjd->bij", p, t)
    per_sample = (cosine * mask).sum(dim=(1, 2)) / (mask.sum(dim=(1, 2)) + 1e-6)
    return -2.0 * per_sample.mean()


@torch.no_grad()
def target_cosine(targets: list[Tensor]) -> Tensor:
    """Collapse monitor: the mean cosine between two teacher pixel projections drawn from the whole batch.

    ``‖mean_i t_i‖²`` over the L2-normalized projections ``t_i`` of every cell of every image and view (self-pairs
    included): about ``1 / N`` for spread features, 1 when every pixel projects to one direction. The pixel loss
    reaches its floor of -4 either by matching corresponding pixels or by this collapse, so the loss alone cannot tell
    them apart; a value near 1 says the second.

    Args:
        targets: ``(B, D, h, w)`` teacher projections, one per view.

    Returns:
        Scalar in ``[0, 1]``.
    """
    unit = torch.cat([F.normalize(rearrange(t.float(), "b d h w -> (b h w) d"), dim=1) for t in targets])
    return unit.mean(dim=0).pow(2).sum()


class PixPro(nn.Module):
    """PixPro method: student projector + PPM, EMA teacher projector, optional BYOL instance branch.

    Args:
        in_channels: Channels of the backbone's last requested map.
        config: Method settings.
    """

    uses_teacher = True
    uses_pooled = False  # reads only the dense maps
    student_views = (0, 1)  # one backbone forward per view, as the reference's encoder(im_1), encoder(im_2)
    teacher_views = (0, 1)

    def __init__(self, in_channels: int, config: PixProConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or PixProConfig()
        cfg.validate()
        self.projector = conv_mlp(in_channels, cfg.hidden_dim, cfg.out_dim)
        self.teacher_projector = frozen_copy(self.projector)
        self.propagation = PixelPropagation(cfg.out_dim, cfg.gamma, cfg.transform_layers)
        if cfg.ins_loss_weight > 0:
            self.instance_projector = conv_mlp(in_channels, cfg.hidden_dim, cfg.out_dim)
            self.teacher_instance_projector = frozen_copy(self.instance_projector)
            self.instance_predictor = conv_mlp(cfg.out_dim, cfg.hidden_dim, cfg.out_dim)

    @classmethod
    def from_backbone(cls, backbone: DenseBackbone, config: PixProConfig | None = None) -> "PixPro":
        return cls(backbone.channels[-1], config)

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.projector, self.teacher_projector)]
        if self.config.ins_loss_weight > 0:
            pairs.append((self.instance_projector, self.teacher_instance_projector))
        return pairs

    def momentum_at(self, step: int, total_steps: int) -> float:
        return cosine_momentum(self.config.momentum, step, total_steps)

    def forward(self, features: list[DenseFeatures], views: Views,
                teacher_features: list[DenseFeatures] | None = None) -> dict[str, Tensor]:
        """Symmetric loss over views 0 and 1.

        Returns:
            ``{"loss", "loss_pixel", "positive_fraction", "target_cosine"}`` (+ ``"loss_instance"`` with the
            instance branch); ``target_cosine`` is the collapse monitor of ``target_cosine()``.
        """
        if teacher_features is None:
            raise ValueError("PixPro needs the teacher's features (the training loop provides them)")
        if len(features) < 2:
            raise ValueError(f"PixPro needs 2 views, got {len(features)}")
        cfg = self.config
        maps = [features[v].maps[-1] for v in (0, 1)]
        predictions = [self.propagation(self.projector(m)) for m in maps]
        with torch.no_grad():
            targets = [self.teacher_projector(teacher_features[v].maps[-1]) for v in (0, 1)]
            masks = [
                positive_mask(views.boxes[:, a], views.flipped[:, a], views.boxes[:, b], views.flipped[:, b],
                              tuple(maps[a].shape[-2:]), tuple(maps[b].shape[-2:]), cfg.pos_ratio)
                for a, b in ((0, 1), (1, 0))
            ]
        loss_pixel = pixpro_loss(predictions[0], targets[1], masks[0]) + pixpro_loss(predictions[1], targets[0], masks[1])
        out = {"loss_pixel": loss_pixel, "positive_fraction": masks[0].mean(),
               "target_cosine": target_cosine(targets)}
        loss = loss_pixel
        if cfg.ins_loss_weight > 0:
            pred = [F.normalize(self.instance_predictor(self.instance_projector(m)).mean(dim=(2, 3)), dim=1)
                    for m in maps]
            with torch.no_grad():
                proj = [F.normalize(self.teacher_instance_projector(teacher_features[v].maps[-1]).mean(dim=(2, 3)),
                                    dim=1) for v in (0, 1)]
            # BYOL regression loss 2 - 2 cos, both directions.
            loss_instance = (2 - 2 * (pred[0] * proj[1]).sum(1)).mean() + (2 - 2 * (pred[1] * proj[0]).sum(1)).mean()
            out["loss_instance"] = loss_instance
            loss = loss + cfg.ins_loss_weight * loss_instance
        out["loss"] = loss
        return out
