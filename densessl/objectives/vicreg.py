"""VICReg: variance-invariance-covariance regularization, as the global term of VICRegL.

Paper: Bardes, Ponce, LeCun, "VICReg", ICLR 2022; its global form inside VICRegL (NeurIPS 2022).
Reference code: facebookresearch/VICRegL ``main_vicregl.py`` (``global_loss``, ``_vicreg_loss``) and
``utils.py`` (``gather_center``), read at the public main branch (commit ``d14c226`` and later).

For views ``z_0 .. z_{V-1}`` of shape ``(B, D)``, with ``G`` global views::

    inv = λ · mean over ordered pairs (i < G, j != i) of MSE(z_i, z_j)        # 2(V-1) pairs for G = 2
    for every view v: x = gather_center(z_v)                                    # all ranks, centred over the batch
        var_v = mean_d relu(1 - sqrt(Var_batch(x)_d + eps))                     # unbiased variance
        cov_v = Σ_{a != b} C_ab² / D,   C = xᵀx / (N - 1)
    var = μ · mean_v var_v,   cov = ν · mean_v cov_v,   loss = inv + var + cov
    λ = 25, μ = 25, ν = 1, eps = 1e-4

Differences from the reference:
    * The sum of squared off-diagonal covariances is computed from the ``N x N`` Gram matrix when the batch ``N`` is
      smaller than ``D`` (``‖XXᵀ‖²_F / (N-1)² - Σ_d C_dd²``): the same value to fp32 rounding, far cheaper for
      ``D = 8192``. Statistics are always computed in fp32, also under autocast.
    * The original two-view VICReg paper sums ``cov(z_a) + cov(z_b)``; VICRegL (and this module) averages over
      views, i.e. half of VICReg's covariance term for two views. ``cov_coeff=2`` restores VICReg's scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from densessl.backbones import DenseBackbone, DenseFeatures
from densessl.data.collate import Views
from densessl.dist import all_gather_with_grad
from densessl.projectors import MLP, NormKind, default_norm
from densessl.schema import Range, check_fields

__all__ = [
    "invariance_loss",
    "gather_center",
    "variance_loss",
    "covariance_loss",
    "variance_covariance",
    "VICRegLoss",
    "VICRegConfig",
    "VICReg",
    "embedding_metrics",
]


def invariance_loss(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error over every element (``F.mse_loss``). ``x``, ``y``: same shape. Returns a scalar."""
    if x.shape != y.shape:
        raise ValueError(f"invariance_loss needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    return F.mse_loss(x.float(), y.float())


def gather_center(x: Tensor, gather: bool = True) -> Tensor:
    """All-gather ``x`` over ranks along the batch dim (with gradient) and subtract the batch mean.

    Args:
        x: ``(B, ..., D)``.
        gather: Gather across ranks when distributed (the official behaviour); ``False`` keeps the local batch.

    Returns:
        ``(N, ..., D)`` fp32, ``N = world_size * B``, centred over dim 0.
    """
    x = x.float()
    if gather:
        x = all_gather_with_grad(x)
    return x - x.mean(dim=0, keepdim=True)


def variance_loss(x: Tensor, eps: float = 1e-4) -> Tensor:
    """Hinge on the standard deviation of every dimension (and slot).

    Args:
        x: ``(N, ..., D)`` samples on dim 0 (centring is not required).
        eps: Added to the variance before the square root.

    Returns:
        Scalar ``mean over (..., D) of relu(1 - sqrt(Var_N(x) + eps))`` with the unbiased variance.
    """
    if x.shape[0] < 2:
        raise ValueError(f"variance needs at least 2 samples on dim 0, got shape {tuple(x.shape)}")
    std = torch.sqrt(x.float().var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def covariance_loss(x: Tensor) -> Tensor:
    """Sum of squared off-diagonal covariances divided by ``D``, averaged over slots.

    Args:
        x: ``(N, D)`` or ``(N, S, D)``, **already centred over dim 0**. With slots, each slot ``s`` has its own
            ``D x D`` covariance over the ``N`` samples (the official per-slot local statistics).

    Returns:
        Scalar ``mean_s Σ_{a != b} C_s[a, b]² / D`` with ``C_s = x_sᵀ x_s / (N - 1)``.
    """
    return variance_covariance(x)[1]


def variance_covariance(x: Tensor, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """``(variance_loss(x, eps), covariance_loss(x))`` for **centred** ``x``, sharing one second-moment pass.

    For centred samples the unbiased variance is ``Σ_n x² / (N - 1)``, which is also the covariance diagonal the Gram
    form subtracts; computing it once replaces ``Tensor.var`` (a slow strided Welford reduction over dim 0 on CPU) and
    the second square-sum. Same values as the two functions up to float rounding.

    Args:
        x: ``(N, D)`` or ``(N, S, D)``, centred over dim 0 (``gather_center``).
        eps: Variance epsilon.

    Returns:
        Two scalars: the variance hinge and the covariance term, both averaged over slots.
    """
    if x.dim() == 2:
        x = x[:, None, :]
    if x.dim() != 3:
        raise ValueError(f"variance_covariance expects (N, D) or (N, S, D), got shape {tuple(x.shape)}")
    num, _, dim = x.shape
    if num < 2:
        raise ValueError(f"variance/covariance need at least 2 samples on dim 0, got shape {tuple(x.shape)}")
    x = x.float()
    second = x.square().sum(dim=0) / (num - 1)  # (S, D): per-slot variances = covariance diagonals
    var = F.relu(1.0 - torch.sqrt(second + eps)).mean()
    slots = rearrange(x, "n s d -> s n d")
    if num < dim:
        gram = torch.bmm(slots, slots.transpose(1, 2))  # (S, N, N); ‖XᵀX‖²_F = ‖XXᵀ‖²_F
        total = gram.square().sum(dim=(1, 2)) / (num - 1) ** 2
    else:
        cov = torch.bmm(slots.transpose(1, 2), slots) / (num - 1)  # (S, D, D)
        total = cov.square().sum(dim=(1, 2))
    off_diagonal = total - second.square().sum(dim=1)
    return var, (off_diagonal / dim).mean()


@torch.no_grad()
def embedding_metrics(representation: Tensor, embedding: Tensor) -> dict[str, Tensor]:
    """Collapse monitors of the official code for the first view: mean per-dimension std of the L2-normalized
    representation (``std_rep``) and embedding (``std_emb``); ``1/sqrt(D)`` is the healthy value, 0 is collapse.

    Args:
        representation: ``(B, C)`` pooled backbone vectors.
        embedding: ``(B, D)`` projector outputs.
    """
    rep = all_gather_with_grad(F.normalize(representation.float(), dim=1))
    emb = all_gather_with_grad(F.normalize(embedding.float(), dim=1))
    return {"std_rep": rep.std(dim=0).mean(), "std_emb": emb.std(dim=0).mean()}


class VICRegLoss(nn.Module):
    """Multi-view VICReg criterion on global embeddings (the VICRegL global term).

    Args:
        inv_coeff: λ, weight of the invariance term.
        var_coeff: μ, weight of the variance term.
        cov_coeff: ν, weight of the covariance term.
        eps: Variance epsilon.
        gather: Compute variance/covariance over the global batch under DDP (gather with gradient).
    """

    def __init__(
        self,
        inv_coeff: float = 25.0,
        var_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        eps: float = 1e-4,
        gather: bool = True,
    ) -> None:
        super().__init__()
        self.inv_coeff = inv_coeff
        self.var_coeff = var_coeff
        self.cov_coeff = cov_coeff
        self.eps = eps
        self.gather = gather

    def forward(self, embeddings: list[Tensor], n_global: int) -> dict[str, Tensor]:
        """Compute the loss.

        Args:
            embeddings: ``V`` tensors ``(B, D)``, global views first.
            n_global: Number of global views; each is paired with every other view for the invariance term.

        Returns:
            ``{"loss", "inv", "var", "cov"}`` scalars (coefficients applied).
        """
        if len(embeddings) < 2:
            raise ValueError(f"VICReg needs at least 2 views, got {len(embeddings)}")
        if not 1 <= n_global <= len(embeddings):
            raise ValueError(f"n_global must be in [1, {len(embeddings)}], got {n_global}")
        shape = embeddings[0].shape
        if len(shape) != 2 or any(z.shape != shape for z in embeddings):
            raise ValueError(f"embeddings must all be (B, D); got {[tuple(z.shape) for z in embeddings]}")
        pairs = [(i, j) for i in range(n_global) for j in range(len(embeddings)) if j != i]
        inv = torch.stack([invariance_loss(embeddings[i], embeddings[j]) for i, j in pairs]).mean()
        # Views side by side as slots: per-slot statistics averaged over slots = per-view statistics averaged over views.
        centred = gather_center(torch.stack(embeddings, dim=1), self.gather)  # (N, V, D)
        var, cov = variance_covariance(centred, self.eps)
        inv, var, cov = self.inv_coeff * inv, self.var_coeff * var, self.cov_coeff * cov
        return {"loss": inv + var + cov, "inv": inv, "var": var, "cov": cov}


HeadNorm = Literal["auto", "bn", "ln", "none"]
"""Normalization in the expander / local projector; ``auto`` picks it from the backbone (see ``resolve_norm``)."""


@dataclass
class VICRegConfig:
    """VICReg method settings (official VICRegL defaults for the global branch)."""

    inv_coeff: Annotated[float, Range(ge=0)] = 25.0
    var_coeff: Annotated[float, Range(ge=0)] = 25.0
    cov_coeff: Annotated[float, Range(ge=0)] = 1.0
    eps: Annotated[float, Range(gt=0)] = 1e-4
    projector: str = "8192-8192-8192"
    norm: HeadNorm = "auto"
    gather: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` for impossible values."""
        check_fields(self)


def resolve_norm(norm: str, arch: str) -> NormKind:
    """``"auto"`` -> the official choice for ``arch`` (BatchNorm for ResNets, LayerNorm otherwise)."""
    return default_norm(arch) if norm == "auto" else norm  # type: ignore[return-value]


class VICReg(nn.Module):
    """VICReg on the pooled backbone vector: expander + ``VICRegLoss``. Equals ``VICRegL`` with ``alpha = 1``.

    Args:
        pooled_dim: Width of ``DenseFeatures.pooled``.
        config: Method settings.
        arch: Backbone name, to choose the expander norm when ``config.norm == "auto"``.
    """

    uses_teacher = False
    uses_pooled = True

    def __init__(self, pooled_dim: int, config: VICRegConfig | None = None, arch: str = "") -> None:
        super().__init__()
        self.config = config or VICRegConfig()
        self.config.validate()
        self.projector = MLP(pooled_dim, self.config.projector, resolve_norm(self.config.norm, arch))
        self.criterion = VICRegLoss(
            self.config.inv_coeff, self.config.var_coeff, self.config.cov_coeff, self.config.eps, self.config.gather
        )

    @classmethod
    def from_backbone(cls, backbone: DenseBackbone, config: VICRegConfig | None = None) -> "VICReg":
        """Build heads sized for ``backbone``."""
        return cls(backbone.num_features, config, backbone.arch)

    def forward(self, features: list[DenseFeatures], views: Views,
                teacher_features: list[DenseFeatures] | None = None) -> dict[str, Tensor]:
        """Loss for one batch. ``features``: one ``DenseFeatures`` per view (see ``encode_views``)."""
        # BatchNorm statistics per view, as the official code (one projector call per view), one matmul for all views.
        pooled = torch.cat([f.pooled for f in features])
        embeddings = list(self.projector.forward_groups(pooled, len(features)).split(views.batch_size))
        out = self.criterion(embeddings, views.n_global)
        out.update(embedding_metrics(features[0].pooled, embeddings[0]))
        return out
