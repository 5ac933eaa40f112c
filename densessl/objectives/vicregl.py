"""VICRegL: global VICReg + local VICReg between matched feature-map cells.

Paper: Bardes, Ponce, LeCun, "VICRegL: Self-Supervised Learning of Local Visual Features", NeurIPS 2022.
Reference code: facebookresearch/VICRegL ``main_vicregl.py`` at commit ``d14c226`` (``_vicreg_loss``,
``_local_loss``, ``local_loss``, ``neirest_neighbores``), read for behaviour; this is densessl's own code.

Total loss::

    L = α · (inv_g + var_g + cov_g) + (1 - α) · (inv_l + var_l + cov_l),   α = 0.75

The global term is ``VICRegLoss`` on the projected pooled vectors (see ``vicreg.py``). The local term loops over
the pairs ``(i, j)`` with ``i`` a global view and ``j`` any other view (2(V-1) pairs for 2 global views: local views
are never paired with each other, and the global pair runs in both orientations) and averages over pairs. For one
pair with projected maps ``Z_i (B, N_i, D)``, ``Z_j (B, N_j, D)`` it adds two matchings, each the mean of its two
directions:

* learned (feature) matching: distances ``‖Z_i[p] - Z_j[q]‖``; each cell of the source view takes its nearest
  cell of the other view; by default (``l2_all_matches``) every source cell is kept;
* geometric (location) matching: distances between cell centres in original-image **pixels**; the ``k`` source
  cells closest to their nearest neighbour are kept (``num_matches``).

For a direction with ``k`` kept pairs, ``X, Y (B, k, D)``::

    inv = λ · MSE(X, Y)
    X, Y = gather_center(X), gather_center(Y)            # over the global batch, per slot
    var = μ · (var(X) / 2 + var(Y) / 2)                  # per slot and channel, averaged
    cov = ν · (mean_s cov(X_s) / 2 + mean_s cov(Y_s) / 2) # one D x D covariance per slot s

Presets (``VICRegLConfig.preset``):
    ``official`` reproduces the released defaults, quirks included: the location grids ignore horizontal flips
    (``--no-flip-grid 1``: flipped views get mirrored "matches"), and ``num_matches = (k0, k1)`` is applied by
    direction (``k0`` for global→other, ``k1`` for other→global) even when both views are global.
    ``corrected`` (default for new work) uses the true flipped geometry and applies ``k`` by the size of the view
    whose cells are being filtered: ``k0`` for a global source view, ``k1`` for a local one (the paper's "20 for
    large views, 4 for small views").

Differences from the reference (both presets):
    * Kept cells come back in raster order (as the reference) and ties in distance are broken by cell index with a
      stable sort (the reference's ``torch.sort`` is not stable, so its tie-breaking is unspecified). Set
      ``selection_order="distance"`` for lightly's sorted order.
    * ``k`` larger than the number of source cells is capped to that number (the reference raises).
    * The backbone runs once per crop resolution (BatchNorm statistics over all views of that resolution); the
      reference runs it once per view. Projectors still run once per view, as in the reference.
    * Grids are derived from the actual feature-map size (``h x w``) instead of the hard-coded 7 and 3.
    * Covariances use the Gram-matrix form when ``N < D`` (same value, see ``vicreg.py``); ``fast_vc_reg`` (broken as
      released) and the online linear probe (needs labels) are not part of the loss.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import Tensor, nn

from densessl.backbones import DenseBackbone, DenseFeatures
from densessl.coords import SelectionOrder, match_indices, pairwise_distances, select_matches
from densessl.data.collate import Views
from densessl.objectives.vicreg import (
    HeadNorm,
    VICRegLoss,
    embedding_metrics,
    gather_center,
    invariance_loss,
    resolve_norm,
    variance_covariance,
)
from densessl.projectors import MLP, LocalProjector
from densessl.schema import Range, check_fields

__all__ = ["VICRegLLocalLoss", "VICRegLCriterion", "VICRegLConfig", "VICRegL"]

MatchingType = Literal["both", "location", "feature"]
MATCHING_TYPES: tuple[str, ...] = typing.get_args(MatchingType)


class VICRegLLocalLoss(nn.Module):
    """The local VICRegL criterion over all (global, other) view pairs.

    Args:
        inv_coeff: λ. var_coeff: μ. cov_coeff: ν. eps: variance epsilon.
        num_matches: ``(k0, k1)`` for the location matching (and the feature matching when ``l2_all_matches`` is
            off); how they are assigned depends on ``topk_by_view_size`` (see the module docstring).
        l2_all_matches: Keep every cell in the feature matching (the reference default).
        topk_by_view_size: ``True`` (corrected): k by the source view's size; ``False`` (official): by direction.
        order: Order of kept cells (``"raster"`` as the reference).
        gather: Gather over ranks for variance/covariance.
        matching: ``"both"`` (VICRegL), or one matching type alone for the paper's ablation: ``"location"``
            (geometric only) or ``"feature"`` (learned only). A dropped type's term is simply absent (the kept type
            keeps its weight), as in the paper's ablation; it is not rescaled.
    """

    def __init__(
        self,
        inv_coeff: float = 25.0,
        var_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        eps: float = 1e-4,
        num_matches: tuple[int, int] = (20, 4),
        l2_all_matches: bool = True,
        topk_by_view_size: bool = True,
        order: SelectionOrder = "raster",
        gather: bool = True,
        matching: str = "both",
    ) -> None:
        super().__init__()
        if matching not in MATCHING_TYPES:
            raise ValueError(f"matching must be one of {MATCHING_TYPES}, got {matching!r}")
        self.matching = matching
        self.inv_coeff, self.var_coeff, self.cov_coeff, self.eps = inv_coeff, var_coeff, cov_coeff, eps
        self.num_matches = tuple(num_matches)
        self.l2_all_matches = l2_all_matches
        self.topk_by_view_size = topk_by_view_size
        self.order = order
        self.gather = gather

    def _vicreg(self, x: Tensor, y: Tensor) -> Tensor:
        """``(3,)`` tensor of weighted (inv, var, cov) for matched ``x, y (B, k, D)``, statistics per slot."""
        inv = invariance_loss(x, y)
        var_x, cov_x = variance_covariance(gather_center(x, self.gather), self.eps)
        var_y, cov_y = variance_covariance(gather_center(y, self.gather), self.eps)
        var, cov = var_x / 2 + var_y / 2, cov_x / 2 + cov_y / 2
        return torch.stack([self.inv_coeff * inv, self.var_coeff * var, self.cov_coeff * cov])

    def _ks(self, a_global: bool, b_global: bool) -> tuple[int, int]:
        """k for the directions (a -> b, b -> a), where a is the pair's global view."""
        if not self.topk_by_view_size:
            return self.num_matches[0], self.num_matches[1]
        k_large, k_small = self.num_matches
        return (k_large if a_global else k_small), (k_large if b_global else k_small)

    def pair_matches(
        self, z_a: Tensor, z_b: Tensor, grid_a: Tensor, grid_b: Tensor, a_global: bool, b_global: bool
    ) -> list[tuple[Tensor, Tensor]]:
        """The matched sets of one view pair: feature a->b, feature b->a, location a->b, location b->a.

        With ``matching="feature"`` or ``"location"`` only that type's two sets are returned.

        Args:
            z_a: ``(B, N_a, D)`` projected maps of view a. z_b: ``(B, N_b, D)`` of view b.
            grid_a: ``(B, N_a, 2)`` cell centres of view a in original-image pixels. grid_b: same for view b.
            a_global: Whether view a is a global view. b_global: same for view b.

        Returns:
            Four (or two, see ``matching``) ``(X, Y)`` pairs of ``(B, k, D)`` matched embeddings (source cells first).
        """
        k_ab, k_ba = self._ks(a_global, b_global)
        plan = []
        with torch.no_grad():
            if self.matching in ("both", "feature"):
                feature_dist = torch.cdist(z_a.detach().float(), z_b.detach().float())  # (B, N_a, N_b)
                feature_ks = (None, None) if self.l2_all_matches else (k_ab, k_ba)
                plan += [
                    (z_a, z_b, feature_dist, feature_ks[0]),
                    (z_b, z_a, feature_dist.transpose(1, 2), feature_ks[1]),
                ]
            if self.matching in ("both", "location"):
                location_dist = pairwise_distances(grid_a, grid_b)
                plan += [(z_a, z_b, location_dist, k_ab), (z_b, z_a, location_dist.transpose(1, 2), k_ba)]
        return [select_matches(src, tgt, *match_indices(dist, k, self.order)) for src, tgt, dist, k in plan]

    def forward(self, embeddings: list[Tensor], grids: list[Tensor], n_global: int) -> dict[str, Tensor]:
        """Local loss over all (global, other) pairs.

        Every direction of every pair has the same weight, ``1 / (2 · n_pairs)`` (each matching type is the mean of its
        two directions, summed over the two types, averaged over pairs). Because the statistics are per slot, matched
        sets with the same ``k`` are concatenated along the slot axis and go through one VICReg evaluation: the same
        value as one evaluation per direction, with a handful of large kernels instead of 4 x n_pairs small ones.

        Args:
            embeddings: ``V`` projected maps ``(B, N_v, D)``, global views first.
            grids: ``V`` cell-centre grids ``(B, N_v, 2)`` in original-image pixels, matching ``embeddings``.
            n_global: Number of global views.

        Returns:
            ``{"loss", "inv", "var", "cov"}`` (weighted, averaged over pairs).
        """
        if len(embeddings) != len(grids) or len(embeddings) < 2:
            raise ValueError(f"need >= 2 views and one grid per view; got {len(embeddings)} and {len(grids)}")
        for v, (z, g) in enumerate(zip(embeddings, grids)):
            if z.dim() != 3 or g.shape != (*z.shape[:2], 2):
                raise ValueError(f"view {v}: embeddings (B, N, D) {tuple(z.shape)} vs grid (B, N, 2) {tuple(g.shape)}")
        pairs = [(i, j) for i in range(n_global) for j in range(len(embeddings)) if j != i]
        by_k: dict[int, list[tuple[Tensor, Tensor]]] = {}
        for i, j in pairs:
            for x, y in self.pair_matches(embeddings[i], embeddings[j], grids[i], grids[j], True, j < n_global):
                by_k.setdefault(x.shape[1], []).append((x, y))
        terms = torch.zeros(3, device=embeddings[0].device)
        for matched in by_k.values():
            x = torch.cat([m[0] for m in matched], dim=1)  # (B, G*k, D): G directions side by side as slots
            y = torch.cat([m[1] for m in matched], dim=1)
            terms = terms + self._vicreg(x, y) * len(matched)
        inv, var, cov = (terms / (2 * len(pairs))).unbind()
        return {"loss": inv + var + cov, "inv": inv, "var": var, "cov": cov}


class VICRegLCriterion(nn.Module):
    """VICRegL on tensors, for your own training loop: ``alpha * global VICReg + (1 - alpha) * local VICReg``.

    Takes what your projectors give (no backbone, no ``Views`` needed): the global embeddings ``(B, D)`` and the
    local embeddings ``(B, N_v, D_l)`` of each view (global views first), and each view's cell-centre grid
    ``(B, N_v, 2)`` in original-image pixels (``Views.grids``, or your own). Defaults are the official ones; the
    ``VICRegL`` module of the pretraining recipe computes the same with its own projectors.

    Returns ``{"loss", "inv_global", "var_global", "cov_global", "inv_local", "var_local", "cov_local"}``.
    """

    def __init__(self, alpha: float = 0.75, inv_coeff: float = 25.0, var_coeff: float = 25.0, cov_coeff: float = 1.0,
                 num_matches: tuple[int, int] = (20, 4), gather: bool = True, matching: str = "both") -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha
        self.global_criterion = VICRegLoss(inv_coeff, var_coeff, cov_coeff, gather=gather)
        self.local_criterion = VICRegLLocalLoss(inv_coeff, var_coeff, cov_coeff, num_matches=num_matches,
                                                gather=gather, matching=matching)

    def forward(self, global_embeddings: list[Tensor], local_embeddings: list[Tensor], grids: list[Tensor],
                n_global: int = 2) -> dict[str, Tensor]:
        glob = self.global_criterion(global_embeddings, n_global)
        local = self.local_criterion(local_embeddings, grids, n_global)
        out = {f"{k}_{part}": v for part, terms in (("global", glob), ("local", local))
               for k, v in terms.items() if k != "loss"}
        return {"loss": self.alpha * glob["loss"] + (1 - self.alpha) * local["loss"], **out}


@dataclass
class VICRegLConfig:
    """VICRegL settings; defaults are the official ones (``main_vicregl.py`` CLI) with the ``corrected`` preset."""

    alpha: Annotated[float, Range(ge=0, le=1)] = 0.75
    inv_coeff: Annotated[float, Range(ge=0)] = 25.0
    var_coeff: Annotated[float, Range(ge=0)] = 25.0
    cov_coeff: Annotated[float, Range(ge=0)] = 1.0
    eps: Annotated[float, Range(gt=0)] = 1e-4
    projector: str = "8192-8192-8192"
    local_projector: str = "512-512-512"
    norm: HeadNorm = "auto"
    num_matches: Annotated[tuple[int, int], Range(ge=1)] = (20, 4)
    l2_all_matches: bool = True
    preset: Literal["official", "corrected"] = "corrected"
    selection_order: SelectionOrder = "raster"
    gather: bool = True
    local_matching: MatchingType = "both"

    def validate(self) -> None:
        """Raise ``ValueError`` for impossible values."""
        check_fields(self)
        if len(self.num_matches) != 2:
            raise ValueError(f"num_matches: must be two positive ints, got {self.num_matches}")


class VICRegL(nn.Module):
    """VICRegL method: global expander + local projector + both criteria.

    Args:
        map_channels: Channels of the dense map used for the local loss (the last level of ``DenseFeatures.maps``).
        pooled_dim: Width of ``DenseFeatures.pooled``.
        config: Method settings.
        arch: Backbone name, to pick BatchNorm (ResNets) or LayerNorm in the heads when ``config.norm == "auto"``.
    """

    uses_teacher = False

    def __init__(self, map_channels: int, pooled_dim: int, config: VICRegLConfig | None = None, arch: str = "") -> None:
        super().__init__()
        self.config = cfg = config or VICRegLConfig()
        cfg.validate()
        norm = resolve_norm(cfg.norm, arch)
        # As the reference, each projector exists only if its term has a non-zero weight.
        self.projector = MLP(pooled_dim, cfg.projector, norm) if cfg.alpha > 0 else None
        self.local_projector = LocalProjector(map_channels, cfg.local_projector, norm) if cfg.alpha < 1 else None
        self.global_criterion = VICRegLoss(cfg.inv_coeff, cfg.var_coeff, cfg.cov_coeff, cfg.eps, cfg.gather)
        self.local_criterion = VICRegLLocalLoss(
            cfg.inv_coeff,
            cfg.var_coeff,
            cfg.cov_coeff,
            cfg.eps,
            num_matches=tuple(cfg.num_matches),
            l2_all_matches=cfg.l2_all_matches,
            topk_by_view_size=cfg.preset == "corrected",
            order=cfg.selection_order,  # type: ignore[arg-type]
            gather=cfg.gather,
            matching=cfg.local_matching,
        )

    @property
    def uses_pooled(self) -> bool:
        """Whether the loss reads ``DenseFeatures.pooled`` (not with alpha = 0)."""
        return self.projector is not None

    @classmethod
    def from_backbone(cls, backbone: DenseBackbone, config: VICRegLConfig | None = None) -> "VICRegL":
        """Build heads sized for ``backbone`` (local loss on its last requested level)."""
        return cls(backbone.channels[-1], backbone.num_features, config, backbone.arch)


    def grids(self, views: Views, h: int, w: int, view: int) -> Tensor:
        """Pixel cell centres ``(B, h*w, 2)`` of one view; flips honoured only in the ``corrected`` preset."""
        return views.grid(view, h, w, flips=self.config.preset != "official")

    def forward(self, features: list[DenseFeatures], views: Views,
                teacher_features: list[DenseFeatures] | None = None) -> dict[str, Tensor]:
        """Loss for one batch.

        Args:
            features: One ``DenseFeatures`` per view (``encode_views``).
            views: The batch the features came from (boxes, flips, image sizes).

        Returns:
            ``{"loss", ...}``: ``inv_global, var_global, cov_global, inv_local, var_local, cov_local`` (weighted terms
            before α), plus no-grad monitors ``std_rep``/``std_emb``.
        """
        if len(features) != views.num_views:
            raise ValueError(f"got features for {len(features)} views, the batch has {views.num_views}")
        alpha = self.config.alpha
        out: dict[str, Tensor] = {}
        loss = torch.zeros((), device=features[0].pooled.device)
        if self.projector is not None:
            # BatchNorm statistics per view (the official code calls the projector once per view); one matmul per
            # layer for all views, which is what makes the 8192-wide expander cheap (see MLP.forward_groups).
            pooled = torch.cat([f.pooled for f in features])
            embeddings = list(self.projector.forward_groups(pooled, len(features)).split(views.batch_size))
            terms = self.global_criterion(embeddings, views.n_global)
            loss = loss + alpha * terms["loss"]
            out.update({f"{k}_global": v for k, v in terms.items() if k != "loss"})
            out.update(embedding_metrics(features[0].pooled, embeddings[0]))
        if self.local_projector is not None:
            maps = [f.maps[-1] for f in features]
            local = [self.local_projector(m) for m in maps]
            grids = views.grids([m.shape[-2:] for m in maps], flips=self.config.preset != "official")
            terms = self.local_criterion(local, grids, views.n_global)
            loss = loss + (1 - alpha) * terms["loss"]
            out.update({f"{k}_local": v for k, v in terms.items() if k != "loss"})
        out["loss"] = loss
        return out
