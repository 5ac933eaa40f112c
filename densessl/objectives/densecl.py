"""DenseCL: MoCo-v2 global contrast + dense contrast between corresponding feature-map cells.

Paper: Wang, Zhang, Shen, Kong, Li, "Dense Contrastive Learning for Self-Supervised Visual Pre-Training", CVPR 2021.
Reference code: WXinlong/DenseCL (``openselfsup/models/densecl.py``, ``necks.py`` ``DenseCLNeck``,
``heads/contrastive_head.py``, ``configs/selfsup/densecl/densecl_imagenet_200ep.py``), read for behaviour.

With query view ``q`` (view 0, the student) and key view ``k`` (view 1, the momentum teacher)::

    neck(x): global  g = Linear(C, 2048) -> ReLU -> Linear(2048, 128) on avgpool(x)
             dense   r = Conv1x1(C, 2048) -> ReLU -> Conv1x1(2048, 128) on x,   r_pool = avgpool(r)
    all of g, r (per cell), r_pool and the backbone cells x are L2-normalized
    c(p)     = argmax_j  <x_q[p], x_k[j]>            # correspondence from *backbone* features, no geometry
    L_global = CE([g_q·g_k, g_q·queue_g] / τ, 0)
    L_dense  = mean over the B·S² query cells of CE([r_q[p]·r_k[c(p)], r_q[p]·queue_d] / τ, 0)
    L        = (1 - λ) L_global + λ L_dense,   λ = 0.5, τ = 0.2, queues of 65536 keys, momentum 0.999
    enqueue  g_k into queue_g and r_pool_k (one pooled vector per key image) into queue_d

One direction only (query -> key), as the reference. Defaults are the paper's ImageNet recipe.

Differences from the reference:
    * As the reference, the student encodes the query view alone and the teacher the key view alone, each in its own
      forward, so the backbones' BatchNorm statistics are per view (``student_views = (0,)``,
      ``teacher_views = (1,)``; encoding both views in one forward would also share one set of statistics between
      each query and its positive key, and double the backbone work).
    * Shuffle-BN is emulated on one process (``bn_groups``): with ``bn_groups = G > 1`` the student encodes the query
      batch in G consecutive chunks and the teacher the key batch in G chunks of a random permutation, so BatchNorm
      statistics are per chunk and a key and its query are normalised over different sets of images, as the reference's
      per-GPU BatchNorm with keys shuffled across G GPUs (``_batch_shuffle_ddp``). Under DDP the shuffle stays within
      each rank (no all-gather of images). ``bn_groups = 1`` (the default) encodes each view in one forward without
      shuffling, as any single-GPU MoCo; with ``train.sync_bn`` the teacher's statistics are global, which removes
      most of the leak that shuffle-BN prevents (MoCo v3's choice).
    * The momentum update runs after each optimizer step instead of at the start of the next forward: the same
      sequence of teacher weights.
    * The queue accepts a global batch that does not divide its length (wrap-around) instead of asserting.
    * The neck reads the last requested level of any timm backbone (C5 for ResNets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from densessl.backbones import DenseBackbone, DenseFeatures
from densessl.data.collate import Views
from densessl.dist import concat_all_gather
from densessl.objectives.momentum import constant_momentum, frozen_copy
from densessl.schema import Range, check_fields

__all__ = ["DenseCLConfig", "DenseCLNeck", "KeyQueue", "dense_correspondence", "info_nce", "DenseCL"]


@dataclass
class DenseCLConfig:
    """DenseCL settings; defaults are the paper's ImageNet recipe."""

    loss_lambda: Annotated[float, Range(ge=0, le=1)] = 0.5
    temperature: Annotated[float, Range(gt=0)] = 0.2
    queue_len: Annotated[int, Range(ge=1)] = 65536
    feat_dim: Annotated[int, Range(ge=1)] = 128
    hidden_dim: Annotated[int, Range(ge=1)] = 2048
    momentum: Annotated[float, Range(ge=0, le=1)] = 0.999
    # Shuffle-BN emulated on one process: BatchNorm chunks per view, the teacher's over a shuffled batch (1: off).
    bn_groups: Annotated[int, Range(ge=1)] = 1

    def validate(self) -> None:
        check_fields(self)


@dataclass
class DenseCLEmbedding:
    """Neck outputs, L2-normalized. ``global_`` (B, D); ``dense`` (B, N, D); ``dense_pooled`` (B, D)."""

    global_: Tensor
    dense: Tensor
    dense_pooled: Tensor


class DenseCLNeck(nn.Module):
    """The DenseCL projection neck (no BatchNorm, as the reference). Input ``(B, C, h, w)``."""

    def __init__(self, in_channels: int, hidden_dim: int = 2048, out_dim: int = 128) -> None:
        super().__init__()
        self.global_mlp = nn.Sequential(nn.Linear(in_channels, hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(hidden_dim, out_dim))
        self.dense_mlp = nn.Sequential(nn.Conv2d(in_channels, hidden_dim, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(hidden_dim, out_dim, 1))

    def forward(self, maps: Tensor) -> DenseCLEmbedding:
        pooled = maps.mean(dim=(2, 3))
        dense = self.dense_mlp(maps)  # (B, D, h, w)
        return DenseCLEmbedding(
            global_=F.normalize(self.global_mlp(pooled), dim=1),
            dense=F.normalize(rearrange(dense, "b d h w -> b (h w) d"), dim=2),
            dense_pooled=F.normalize(dense.mean(dim=(2, 3)), dim=1),
        )


class KeyQueue(nn.Module):
    """A FIFO queue of ``length`` unit vectors of width ``dim`` (buffers, so checkpoints carry it).

    ``keys`` is ``(length, dim)``; ``push`` gathers the keys of every rank and writes them at ``ptr``, wrapping around.
    """

    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(length, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: Tensor) -> None:
        """Enqueue ``(B, dim)`` keys from this rank (all ranks' keys, in rank order, under DDP)."""
        keys = concat_all_gather(keys.detach().to(self.keys.dtype))
        length = self.keys.shape[0]
        if keys.shape[0] > length:
            keys = keys[-length:]
        start = int(self.ptr)
        index = (torch.arange(keys.shape[0], device=keys.device) + start) % length
        self.keys[index] = keys
        self.ptr.fill_((start + keys.shape[0]) % length)


def dense_correspondence(backbone_q: Tensor, backbone_k: Tensor) -> Tensor:
    """For each query cell, the key cell with the most similar backbone feature (cosine).

    Args:
        backbone_q: ``(B, C, h, w)`` query-view backbone map. backbone_k: ``(B, C, h', w')`` key-view map.

    Returns:
        ``(B, h*w)`` int64 index into the key cells (raster order).
    """
    q = F.normalize(rearrange(backbone_q.detach().float(), "b c h w -> b (h w) c"), dim=2)
    k = F.normalize(rearrange(backbone_k.detach().float(), "b c h w -> b (h w) c"), dim=2)
    return torch.einsum("bpc,bqc->bpq", q, k).argmax(dim=2)


def info_nce(query: Tensor, positive: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """InfoNCE with the positive at index 0.

    Args:
        query: ``(M, D)`` unit vectors. positive: ``(M, D)``. negatives: ``(K, D)`` (shared by all queries).
        temperature: τ.

    Returns:
        Scalar mean cross-entropy.
    """
    l_pos = (query * positive).sum(dim=1, keepdim=True)
    l_neg = query @ negatives.t()
    logits = torch.cat([l_pos, l_neg], dim=1).float() / temperature
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


class DenseCL(nn.Module):
    """DenseCL method: student neck, EMA teacher neck, two key queues and the loss.

    Args:
        in_channels: Channels of the backbone's last requested map.
        config: Method settings.
    """

    uses_teacher = True
    uses_pooled = False  # reads only the dense maps
    student_views = (0,)  # the query view: the student encodes it alone, as the reference's encoder_q(im_q)
    teacher_views = (1,)  # the key view: the teacher encodes it alone, as encoder_k(im_k)

    def __init__(self, in_channels: int, config: DenseCLConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DenseCLConfig()
        cfg.validate()
        self.neck = DenseCLNeck(in_channels, cfg.hidden_dim, cfg.feat_dim)
        self.teacher_neck = frozen_copy(self.neck)
        self.queue_global = KeyQueue(cfg.queue_len, cfg.feat_dim)
        self.queue_dense = KeyQueue(cfg.queue_len, cfg.feat_dim)

    @property
    def bn_groups(self) -> int:
        """BatchNorm chunks per encoded view, read by the training loop (``DenseCLConfig.bn_groups``)."""
        return self.config.bn_groups

    @classmethod
    def from_backbone(cls, backbone: DenseBackbone, config: DenseCLConfig | None = None) -> "DenseCL":
        return cls(backbone.channels[-1], config)

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(student, teacher) head pairs the loop moves by EMA."""
        return [(self.neck, self.teacher_neck)]

    def momentum_at(self, step: int, total_steps: int) -> float:
        return constant_momentum(self.config.momentum, step, total_steps)

    def forward(self, features: list[DenseFeatures], views: Views,
                teacher_features: list[DenseFeatures] | None = None) -> dict[str, Tensor]:
        """Loss with view 0 as the query (student) and view 1 as the key (teacher).

        Args:
            features: The student's features of ``student_views`` (view 0), as ``encode_views(select=(0,))``.
            views: The batch (two views or more).
            teacher_features: The teacher's features of ``teacher_views`` (view 1).

        Returns:
            ``{"loss", "loss_global", "loss_dense"}`` (weighted by 1 - λ and λ).
        """
        if teacher_features is None:
            raise ValueError("DenseCL needs the teacher's features (the training loop provides them)")
        if views.num_views < 2:
            raise ValueError(f"DenseCL needs 2 views, got {views.num_views}")
        if len(features) != 1 or len(teacher_features) != 1:
            raise ValueError(f"DenseCL takes the student's features of view 0 and the teacher's of view 1 "
                             f"(student_views, teacher_views), got {len(features)} and {len(teacher_features)}")
        cfg = self.config
        maps_q, maps_k = features[0].maps[-1], teacher_features[0].maps[-1]
        q = self.neck(maps_q)
        with torch.no_grad():
            k = self.teacher_neck(maps_k)
            match = dense_correspondence(maps_q, maps_k)  # (B, N_q)
        k_dense = k.dense.gather(1, match[..., None].expand(-1, -1, k.dense.shape[-1]))  # (B, N_q, D)
        loss_global = info_nce(q.global_, k.global_, self.queue_global.keys.clone(), cfg.temperature)
        loss_dense = info_nce(q.dense.flatten(0, 1), k_dense.flatten(0, 1), self.queue_dense.keys.clone(),
                              cfg.temperature)
        if self.training:
            self.queue_global.push(k.global_)
            self.queue_dense.push(k.dense_pooled)
        loss_global = (1 - cfg.loss_lambda) * loss_global
        loss_dense = cfg.loss_lambda * loss_dense
        return {"loss": loss_global + loss_dense, "loss_global": loss_global, "loss_dense": loss_dense}
