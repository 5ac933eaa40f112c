"""Label-free diagnostics of dense features: match precision between views, and collapse monitors (RankMe, std).

Match precision
    For two views ``a`` and ``b`` of one image, each feature cell ``p`` of view ``a`` whose centre lies inside view
    ``b``'s crop has a true correspondence in ``b``. Its *learned match* is its feature nearest neighbour
    ``q = argmin_q ‖f_a[p] - f_b[q]‖`` over all cells of ``b``, with features **L2-normalized** per cell first (so
    the nearest neighbour is the most cosine-similar cell, independent of feature norms; VICRegL itself matches with
    plain L2 on the projected maps, whose norms the variance term keeps comparable). The match is *correct* when
    the centre of ``q`` lies within ``radius_cells`` cells of the centre of ``p`` in the original image, the cell
    unit being view ``b``'s cell size in original pixels (the larger of its width and height). Precision is the
    fraction of correct matches over the cells that have a correspondence. No labels are needed: only the crop
    geometry that ``MultiCrop`` records.

    Chance level: a match drawn uniformly among ``b``'s cells is correct with probability equal to the fraction of
    ``b``'s cells within the radius of ``p``; ``MatchPrecision.chance`` is that fraction averaged over valid cells.
    Random features score close to it; features that localise score close to 1.

    All positions come from ``densessl.coords.cell_centers`` (flips honoured: a flipped view's cell ``(r, c)`` sits
    at the mirrored position of the crop), so the metric is the true geometry, not the ``official`` VICRegL grid.

Collapse monitors
    ``rankme`` is the effective rank of Garrido et al., "RankMe: Assessing the Downstream Performance of Pretrained
    Self-Supervised Representations by Their Rank", ICML 2023: ``exp(H(p))`` with ``p_k = σ_k / Σ σ + eps`` from the
    singular values ``σ`` of the ``(N, D)`` embedding matrix (not centred, as the paper). ``per_dim_std`` is the
    per-dimension standard deviation of the L2-normalized embeddings (SimSiam / VICReg monitor): ``1/sqrt(D)`` for
    well-spread embeddings, 0 at complete collapse.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import Tensor, nn

from densessl.backbones import encode_views
from densessl.coords import cell_centers, match_indices, pairwise_distances, to_pixels
from densessl.data.collate import collate_views
from densessl.data.transforms import CropViews, MultiCrop, geometry_only_config
from densessl.dist import derive_seed

__all__ = [
    "CellMatches",
    "MatchPrecision",
    "learned_matches",
    "geometric_matches",
    "summarize_matches",
    "match_precision",
    "match_precision_over_dataset",
    "rankme",
    "dense_rankme",
    "per_dim_std",
    "collapse_summary",
    "dense_diagnostics",
]

logger = logging.getLogger("densessl")


@dataclass
class MatchPrecision:
    """Learned-match precision of view ``a`` against view ``b`` (summed over a batch or a dataset).

    Attributes:
        precision: ``num_correct / num_valid``; ``nan`` when no cell of ``a`` lies inside ``b``.
        num_matches: Learned matches made: every cell of view ``a`` (``B * h_a * w_a``), with or without a
            correspondence in ``b``.
        num_valid: Cells of ``a`` whose centre lies inside ``b``'s crop (the denominator).
        num_correct: Valid cells whose learned match lands within the radius (the numerator).
        chance: Expected precision of a uniformly random match, averaged over the valid cells (``nan`` if none).
    """

    precision: float
    num_matches: int
    num_valid: int
    num_correct: int
    chance: float


@dataclass
class CellMatches:
    """One match per cell of view ``a`` into view ``b``; cells in raster order (``N = h * w``).

    Attributes:
        tgt_index: ``(B, N_a)`` int64 raster index of the matched cell of ``b``.
        src_xy: ``(B, N_a, 2)`` centres ``(x, y)`` of ``a``'s cells in original-image pixels.
        tgt_xy: ``(B, N_a, 2)`` centres of the matched cells of ``b`` in original-image pixels.
        error_px: ``(B, N_a)`` distance ``‖tgt_xy - src_xy‖`` in original pixels.
        valid: ``(B, N_a)`` bool, the cell centre of ``a`` lies inside ``b``'s crop (a correspondence exists).
        correct: ``(B, N_a)`` bool, ``valid`` and ``error_px <= tolerance_px``.
        tolerance_px: ``(B,)`` the radius in original pixels (``radius_cells`` x ``b``'s larger cell side).
        chance: ``(B, N_a)`` fraction of ``b``'s cells within ``tolerance_px`` of each cell of ``a``.
    """

    tgt_index: Tensor
    src_xy: Tensor
    tgt_xy: Tensor
    error_px: Tensor
    valid: Tensor
    correct: Tensor
    tolerance_px: Tensor
    chance: Tensor


def _check_geometry(boxes: Tensor, flipped: Tensor, batch: int, name: str) -> None:
    if boxes.shape != (batch, 4):
        raise ValueError(f"boxes_{name} must be (B, 4) = ({batch}, 4), got shape {tuple(boxes.shape)}")
    if flipped.shape != (batch,):
        raise ValueError(f"flipped_{name} must be (B,) = ({batch},), got shape {tuple(flipped.shape)}")


def _score(
    tgt_index: Tensor,
    boxes_a: Tensor,
    flipped_a: Tensor,
    boxes_b: Tensor,
    flipped_b: Tensor,
    image_size: Tensor,
    size_a: tuple[int, int],
    size_b: tuple[int, int],
    radius_cells: float,
) -> CellMatches:
    """Score given matches ``tgt_index (B, N_a)`` against the crop geometry (see ``CellMatches``)."""
    batch = tgt_index.shape[0]
    if image_size.shape != (batch, 2):
        raise ValueError(f"image_size must be (B, 2) = ({batch}, 2) holding (W, H), got {tuple(image_size.shape)}")
    if radius_cells < 0 or not math.isfinite(radius_cells):
        raise ValueError(f"radius_cells must be a finite number >= 0, got {radius_cells}")
    device = tgt_index.device
    boxes_a, boxes_b = boxes_a.to(device).float(), boxes_b.to(device).float()
    image_size = image_size.to(device).float()
    grid_a = cell_centers(boxes_a, flipped_a.to(device), *size_a)  # (B, h_a, w_a, 2) normalized
    grid_b = cell_centers(boxes_b, flipped_b.to(device), *size_b)
    xy_a = rearrange(to_pixels(grid_a, image_size), "b h w t -> b (h w) t")
    xy_b = rearrange(to_pixels(grid_b, image_size), "b h w t -> b (h w) t")
    norm_a = rearrange(grid_a, "b h w t -> b (h w) t")
    x1, y1, x2, y2 = (boxes_b[:, i, None] for i in range(4))
    valid = (norm_a[..., 0] >= x1) & (norm_a[..., 0] <= x2) & (norm_a[..., 1] >= y1) & (norm_a[..., 1] <= y2)
    cell_w = (boxes_b[:, 2] - boxes_b[:, 0]) * image_size[:, 0] / size_b[1]
    cell_h = (boxes_b[:, 3] - boxes_b[:, 1]) * image_size[:, 1] / size_b[0]
    tolerance = radius_cells * torch.maximum(cell_w, cell_h)  # (B,)
    tgt_xy = xy_b.gather(1, tgt_index[..., None].expand(-1, -1, 2))
    error = (tgt_xy - xy_a).pow(2).sum(-1).sqrt()
    # A small relative slack so that exact-radius hits are not lost to float rounding.
    slack = tolerance * (1 + 1e-5)
    correct = valid & (error <= slack[:, None])
    chance = (pairwise_distances(xy_a, xy_b) <= slack[:, None, None]).float().mean(dim=2)
    return CellMatches(tgt_index, xy_a, tgt_xy, error, valid, correct, tolerance, chance)


def _as_batch(feats: Tensor, name: str) -> Tensor:
    if feats.dim() == 3:
        feats = feats[None]
    if feats.dim() != 4:
        raise ValueError(f"feats_{name} must be (B, C, h, w) or (C, h, w), got shape {tuple(feats.shape)}")
    return feats


def learned_matches(
    feats_a: Tensor,
    feats_b: Tensor,
    boxes_a: Tensor,
    flipped_a: Tensor,
    boxes_b: Tensor,
    flipped_b: Tensor,
    image_size: Tensor,
    radius_cells: float = 1.0,
) -> CellMatches:
    """Feature nearest-neighbour match of every cell of view ``a`` in view ``b``, scored against the geometry.

    Args:
        feats_a: ``(B, C, h_a, w_a)`` dense features of view ``a`` (``(C, h, w)`` is taken as ``B = 1``).
        feats_b: ``(B, C, h_b, w_b)`` dense features of view ``b``.
        boxes_a: ``(B, 4)`` normalized ``(x1, y1, x2, y2)`` crop box of ``a`` in the original image.
        flipped_a: ``(B,)`` bool, ``a`` was mirrored after cropping.
        boxes_b: ``(B, 4)`` crop box of ``b``.
        flipped_b: ``(B,)`` flips of ``b``.
        image_size: ``(B, 2)`` original ``(W, H)`` in pixels.
        radius_cells: Tolerance in units of ``b``'s larger cell side.

    Returns:
        The matches (``tgt_index`` = L2 nearest neighbour of the L2-normalized features) and their scores.
    """
    feats_a, feats_b = _as_batch(feats_a, "a"), _as_batch(feats_b, "b")
    if feats_a.shape[:2] != feats_b.shape[:2]:
        raise ValueError(
            f"feats_a {tuple(feats_a.shape)} and feats_b {tuple(feats_b.shape)} must share (B, C)"
        )
    batch = feats_a.shape[0]
    _check_geometry(boxes_a, flipped_a, batch, "a")
    _check_geometry(boxes_b, flipped_b, batch, "b")
    za = F.normalize(rearrange(feats_a.detach().float(), "b c h w -> b (h w) c"), dim=-1)
    zb = F.normalize(rearrange(feats_b.detach().float(), "b c h w -> b (h w) c"), dim=-1)
    # ‖za - zb‖² = 2 - 2 za·zb for unit vectors: the argmin of the distance is the argmax of the dot product, and
    # computing it from the dot product avoids cdist's rounding making exact ties (identical features) ambiguous.
    distances = (2.0 - 2.0 * torch.einsum("bpc,bqc->bpq", za, zb)).clamp(min=0).sqrt()
    _, tgt_index = match_indices(distances, None)
    return _score(
        tgt_index, boxes_a, flipped_a, boxes_b, flipped_b, image_size,
        tuple(feats_a.shape[-2:]), tuple(feats_b.shape[-2:]), radius_cells,
    )


def geometric_matches(
    boxes_a: Tensor,
    flipped_a: Tensor,
    boxes_b: Tensor,
    flipped_b: Tensor,
    image_size: Tensor,
    size_a: tuple[int, int],
    size_b: tuple[int, int],
    radius_cells: float = 1.0,
) -> CellMatches:
    """Location nearest-neighbour match (VICRegL's geometric matching) of every cell of ``a`` in ``b``.

    Args:
        boxes_a, flipped_a, boxes_b, flipped_b, image_size: As in ``learned_matches``.
        size_a: ``(h_a, w_a)`` feature-grid size of view ``a``.
        size_b: ``(h_b, w_b)`` feature-grid size of view ``b``.
        radius_cells: Tolerance used for ``correct``.

    Returns:
        Matches to the cell of ``b`` whose centre is nearest in original pixels (ties to the lowest index).
    """
    batch = boxes_a.shape[0]
    _check_geometry(boxes_a, flipped_a, batch, "a")
    _check_geometry(boxes_b, flipped_b, batch, "b")
    xy_a = to_pixels(cell_centers(boxes_a.float(), flipped_a, *size_a), image_size.float())
    xy_b = to_pixels(cell_centers(boxes_b.float(), flipped_b, *size_b), image_size.float())
    _, tgt_index = match_indices(pairwise_distances(xy_a, xy_b), None)
    return _score(tgt_index, boxes_a, flipped_a, boxes_b, flipped_b, image_size, size_a, size_b, radius_cells)


def summarize_matches(matches: CellMatches) -> MatchPrecision:
    """Precision and counts of ``CellMatches`` (summed over the batch)."""
    num_valid = int(matches.valid.sum())
    num_correct = int(matches.correct.sum())
    precision = num_correct / num_valid if num_valid else float("nan")
    chance = float(matches.chance[matches.valid].mean()) if num_valid else float("nan")
    return MatchPrecision(precision, int(matches.valid.numel()), num_valid, num_correct, chance)


def _combine(parts: Sequence[MatchPrecision]) -> MatchPrecision:
    """Pool counts; chance is weighted by ``num_valid``."""
    num_valid = sum(p.num_valid for p in parts)
    num_correct = sum(p.num_correct for p in parts)
    num_matches = sum(p.num_matches for p in parts)
    if not num_valid:
        return MatchPrecision(float("nan"), num_matches, 0, 0, float("nan"))
    chance = sum(p.chance * p.num_valid for p in parts if p.num_valid) / num_valid
    return MatchPrecision(num_correct / num_valid, num_matches, num_valid, num_correct, chance)


def match_precision(
    feats_a: Tensor,
    feats_b: Tensor,
    boxes_a: Tensor,
    flipped_a: Tensor,
    boxes_b: Tensor,
    flipped_b: Tensor,
    image_size: Tensor,
    radius_cells: float = 1.0,
) -> MatchPrecision:
    """Label-free learned-match precision of view ``a`` in view ``b`` (see the module docstring).

    Args:
        feats_a: ``(B, C, h_a, w_a)`` dense features of view ``a``.
        feats_b: ``(B, C, h_b, w_b)`` dense features of view ``b``.
        boxes_a: ``(B, 4)`` normalized ``(x1, y1, x2, y2)`` crop box of ``a`` in the original image.
        flipped_a: ``(B,)`` bool flips of ``a``.
        boxes_b: ``(B, 4)`` crop box of ``b``.
        flipped_b: ``(B,)`` flips of ``b``.
        image_size: ``(B, 2)`` original ``(W, H)`` in pixels.
        radius_cells: A match is correct within this many cells of ``b`` (larger side, in original pixels).

    Returns:
        Precision and counts, summed over the batch.
    """
    return summarize_matches(
        learned_matches(feats_a, feats_b, boxes_a, flipped_a, boxes_b, flipped_b, image_size, radius_cells)
    )


def _image_seed(seed: int, index: int) -> int:
    return derive_seed(seed, index)


@torch.no_grad()
def match_precision_over_dataset(
    backbone: nn.Module,
    images: Sequence[Image.Image],
    multicrop: MultiCrop,
    radius_cells: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    level: int = -1,
    symmetric: bool = True,
) -> MatchPrecision:
    """Match precision between the two first global views of every image, pooled over the images.

    Image ``i`` gets its views from ``multicrop`` with a generator seeded by ``(seed, i)``, so the result does not
    depend on ``batch_size``. Local views, if the recipe makes any, are ignored. The backbone runs in eval mode (its
    training mode is restored afterwards) on the device of its parameters.

    Args:
        backbone: A ``DenseBackbone`` (anything returning ``DenseFeatures``).
        images: The images (any PIL mode).
        multicrop: View recipe; needs ``n_global >= 2``.
        radius_cells: Tolerance, see ``match_precision``.
        seed: Seed of the view sampling.
        batch_size: Images per forward pass.
        level: Index into ``DenseFeatures.maps``.
        symmetric: Also score view 1 -> view 0 and pool both directions (as VICRegL matches both ways).

    Returns:
        Pooled precision and counts.
    """
    if multicrop.config.n_global < 2:
        raise ValueError(f"match precision needs two global views, multicrop has n_global={multicrop.config.n_global}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise ValueError("images is empty")
    parameter = next(backbone.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = backbone.training
    backbone.eval()
    parts: list[MatchPrecision] = []
    try:
        for start in range(0, len(images), batch_size):
            samples = []
            for index in range(start, min(start + batch_size, len(images))):
                generator = torch.Generator().manual_seed(_image_seed(seed, index))
                views = multicrop(images[index], generator)
                samples.append(
                    CropViews(views.crops[:2], views.boxes[:2], views.flipped[:2], views.image_size, n_global=2)
                )
            batch = collate_views(samples).to(device)
            features = encode_views(backbone, batch)
            maps = [features[v].maps[level] for v in (0, 1)]
            pairs = [(0, 1), (1, 0)] if symmetric else [(0, 1)]
            for a, b in pairs:
                parts.append(
                    match_precision(
                        maps[a], maps[b], batch.boxes[:, a], batch.flipped[:, a], batch.boxes[:, b],
                        batch.flipped[:, b], batch.image_size, radius_cells,
                    )
                )
    finally:
        backbone.train(was_training)
    result = _combine(parts)
    logger.debug("match precision over %d images: %s", len(images), result)
    return result


def rankme(embeddings: Tensor, eps: float = 1e-7) -> float:
    """RankMe effective rank of a set of embeddings (Garrido et al., ICML 2023).

    ``exp(-Σ_k p_k log p_k)`` with ``p_k = σ_k / Σ_j σ_j + eps`` and ``σ`` the singular values of the
    (not centred) matrix. Between ~1 (rank one) and ``min(N, D)`` (all singular values equal).

    Args:
        embeddings: ``(N, D)``; for dense maps use ``dense_rankme`` or flatten ``(B, N, D) -> (B * N, D)``.
        eps: Added to every normalized singular value (the paper's epsilon).

    Returns:
        The effective rank; ``nan`` for an all-zero matrix.
    """
    if embeddings.dim() != 2 or embeddings.shape[0] < 1 or embeddings.shape[1] < 1:
        raise ValueError(f"embeddings must be (N, D) with N, D >= 1, got shape {tuple(embeddings.shape)}")
    sigma = torch.linalg.svdvals(embeddings.detach().double())
    total = sigma.sum()
    if total <= 0:
        return float("nan")
    p = sigma / total + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def dense_rankme(maps: Tensor, eps: float = 1e-7) -> float:
    """RankMe of the local embeddings of dense maps ``(B, C, h, w)``: every cell is one ``C``-dim sample."""
    if maps.dim() != 4:
        raise ValueError(f"maps must be (B, C, h, w), got shape {tuple(maps.shape)}")
    return rankme(rearrange(maps, "b c h w -> (b h w) c"), eps)


def per_dim_std(embeddings: Tensor) -> Tensor:
    """Per-dimension standard deviation of the L2-normalized embeddings.

    Args:
        embeddings: ``(N, D)`` with ``N >= 2``.

    Returns:
        ``(D,)``; about ``1/sqrt(D)`` each when embeddings spread over the sphere, 0 at complete collapse.
    """
    if embeddings.dim() != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"embeddings must be (N, D) with N >= 2, got shape {tuple(embeddings.shape)}")
    return F.normalize(embeddings.detach().float(), dim=1).std(dim=0)


def collapse_summary(global_embeddings: Tensor, local_maps: Tensor) -> dict[str, float]:
    """Collapse monitors for logging.

    Args:
        global_embeddings: ``(N, D)`` pooled vectors (or projector outputs).
        local_maps: ``(B, C, h, w)`` dense maps; each cell is one local embedding.

    Returns:
        ``{"rankme_global", "rankme_local", "std_global", "std_local"}`` where the ``std_*`` are the means of
        ``per_dim_std``.
    """
    if local_maps.dim() != 4:
        raise ValueError(f"local_maps must be (B, C, h, w), got shape {tuple(local_maps.shape)}")
    local = rearrange(local_maps, "b c h w -> (b h w) c")
    return {
        "rankme_global": rankme(global_embeddings),
        "rankme_local": rankme(local),
        "std_global": float(per_dim_std(global_embeddings).mean()),
        "std_local": float(per_dim_std(local).mean()),
    }


@torch.no_grad()
def dense_diagnostics(backbone: nn.Module, images: list[Image.Image], crop_size: int, device: torch.device,
                      seed: int = 0) -> dict[str, float]:
    """Label-free health of the dense features, logged during pretraining (``train.diagnostics_every``).

    ``match_precision``: fraction of learned (feature nearest-neighbour) matches between two geometry-only views of
    each image that land within one cell of the true location (``densessl.diagnostics``); ``rankme_*`` and ``std_*``:
    effective rank and mean per-dimension std of the backbone's pooled and dense representations of the first views.

    Args:
        backbone: The (unwrapped) ``DenseBackbone``; its train/eval mode is restored afterwards.
        images: PIL images, always the same ones so the numbers are comparable over training.
        crop_size: Size of the two views.
        device: Where the backbone lives.
        seed: Crop seed (fixed: the same views at every call).
    """
    multicrop = MultiCrop(geometry_only_config(crop_size, global_scale=(0.3, 1.0)))
    was_training = backbone.training
    backbone.eval()
    try:
        precision = match_precision_over_dataset(backbone, images, multicrop, radius_cells=1.0, seed=seed)
        views = collate_views([multicrop(img, torch.Generator().manual_seed(seed + i)) for i, img in enumerate(images)])
        feats = backbone(views.view(0).to(device))
        summary = collapse_summary(feats.pooled.float().cpu(), feats.maps[-1].float().cpu())
    finally:
        backbone.train(was_training)
    return {"match_precision": precision.precision, "match_chance": precision.chance, **summary}
