"""Figures of dense features: PCA-to-RGB maps and a two-view match figure.

Needs matplotlib (the ``viz`` extra). It is imported lazily inside the functions that draw, so importing this module
(or any other densessl module) never imports it. Figures are drawn with the object-oriented API on an Agg canvas
(``matplotlib.figure.Figure`` + ``FigureCanvasAgg``): no pyplot, no global backend switch, no window.

Coordinates: boxes, flips and ``image_size`` follow ``densessl.coords``. Inside a displayed crop (``S x S`` pixels,
as the network saw it, flipped if it was flipped), feature cell ``(r, c)`` of an ``h x w`` map covers
``[c, c + 1) * S / w`` by ``[r, r + 1) * S / h``; its position in the original image is ``cell_centers``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import Tensor

from densessl.coords import to_pixels
from densessl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, CropViews
from densessl.diagnostics import geometric_matches, learned_matches, summarize_matches

__all__ = ["PCAColoring", "fit_pca_coloring", "pca_rgb", "pca_rgb_joint", "MatchFigureSummary", "draw_match_figure"]

logger = logging.getLogger("densessl")

_COLOUR_A = "#ff7f0e"  # orange
_COLOUR_B = "#1f9bd7"  # blue
_GOOD = "#2ca02c"
_BAD = "#d62728"


def _require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "densessl.viz needs matplotlib: pip install 'densessl[viz]' (or pip install matplotlib)"
        ) from error
    return matplotlib


@dataclass
class PCAColoring:
    """A 3-component PCA of feature vectors mapped to RGB.

    Attributes:
        mean: ``(C,)`` mean of the fitted (optionally L2-normalized) cell features.
        components: ``(3, C)`` principal directions (rows; zero rows when fewer than 3 exist).
        low: ``(3,)`` 1st percentile of each projection over the fitted cells (maps to 0).
        high: ``(3,)`` 99th percentile (maps to 1).
        normalize: Whether cell features are L2-normalized before projecting.
    """

    mean: Tensor
    components: Tensor
    low: Tensor
    high: Tensor
    normalize: bool = True

    def apply(self, feature_map: Tensor) -> np.ndarray:
        """Colour one map.

        Args:
            feature_map: ``(C, h, w)`` (or ``(1, C, h, w)``).

        Returns:
            ``(h, w, 3)`` float32 array in ``[0, 1]``.
        """
        feature_map = _single_map(feature_map)
        if feature_map.shape[0] != self.mean.shape[0]:
            raise ValueError(
                f"feature map {tuple(feature_map.shape)} has {feature_map.shape[0]} channels, "
                f"the PCA was fitted on {self.mean.shape[0]}"
            )
        h, w = feature_map.shape[-2:]
        cells = _cells(feature_map, self.normalize)
        projected = (cells - self.mean) @ self.components.T  # (h*w, 3)
        scaled = (projected - self.low) / (self.high - self.low).clamp(min=1e-12)
        rgb = rearrange(scaled.clamp(0.0, 1.0), "(h w) k -> h w k", h=h, w=w)
        return rgb.numpy().astype(np.float32)


def _single_map(feature_map: Tensor) -> Tensor:
    if feature_map.dim() == 4 and feature_map.shape[0] == 1:
        feature_map = feature_map[0]
    if feature_map.dim() != 3:
        raise ValueError(f"a feature map must be (C, h, w) or (1, C, h, w), got shape {tuple(feature_map.shape)}")
    return feature_map


def _cells(feature_map: Tensor, normalize: bool) -> Tensor:
    cells = rearrange(feature_map.detach().cpu().double(), "c h w -> (h w) c")
    return F.normalize(cells, dim=1) if normalize else cells


def fit_pca_coloring(maps: Sequence[Tensor], normalize: bool = True) -> PCAColoring:
    """Fit one PCA over all cells of all ``maps``, so colours are comparable between the maps.

    The sign of each component is fixed (its largest-magnitude loading is positive), so the colours are
    deterministic.

    Args:
        maps: ``(C, h_i, w_i)`` maps (sizes may differ, channels must agree).
        normalize: L2-normalize each cell's feature first (the geometry the matching uses).

    Returns:
        The fitted colouring.
    """
    if isinstance(maps, Tensor) or len(maps) == 0:
        raise ValueError("maps must be a non-empty sequence of (C, h, w) tensors")
    singles = [_single_map(m) for m in maps]
    channels = {m.shape[0] for m in singles}
    if len(channels) != 1:
        raise ValueError(f"maps must share the channel count, got shapes {[tuple(m.shape) for m in singles]}")
    cells = torch.cat([_cells(m, normalize) for m in singles])  # (N, C)
    mean = cells.mean(dim=0)
    centred = cells - mean
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # (min(N, C), C)
    components = torch.zeros(3, cells.shape[1], dtype=cells.dtype)
    k = min(3, vh.shape[0])
    components[:k] = vh[:k]
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True))).squeeze(1)
    components = components * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]
    projected = centred @ components.T
    low = torch.quantile(projected, 0.01, dim=0)
    high = torch.quantile(projected, 0.99, dim=0)
    return PCAColoring(mean, components, low, high, normalize)


def pca_rgb(feature_map: Tensor, fit_on: Sequence[Tensor] | None = None, normalize: bool = True) -> np.ndarray:
    """PCA of a dense map to 3 components, shown as RGB.

    Args:
        feature_map: ``(C, h, w)`` map to colour.
        fit_on: Maps to fit the PCA on jointly (e.g. both views) so their colours are comparable; default: just
            ``feature_map``.
        normalize: L2-normalize each cell first.

    Returns:
        ``(h, w, 3)`` float32 in ``[0, 1]``.
    """
    return fit_pca_coloring(list(fit_on) if fit_on is not None else [feature_map], normalize).apply(feature_map)


def pca_rgb_joint(maps: Sequence[Tensor], normalize: bool = True) -> list[np.ndarray]:
    """``pca_rgb`` of several maps with one PCA fitted over all of them. Returns one ``(h_i, w_i, 3)`` per map."""
    coloring = fit_pca_coloring(maps, normalize)
    return [coloring.apply(m) for m in maps]


@dataclass
class MatchFigureSummary:
    """What ``draw_match_figure`` drew.

    Attributes:
        precision: Learned-match precision of view A in view B (``nan`` if the views do not overlap).
        num_valid: Cells of A whose centre lies inside B's crop.
        num_correct: Valid cells whose feature nearest neighbour lies within the radius.
        chance: Precision of uniformly random matches for the same geometry.
        query_xy: ``(x, y)`` normalized original-image position of the query cell's centre.
        query_error_cells: Distance of the query's best match in B from the query, in B cells (``nan`` if the
            query has no correspondence in B).
        out_path: Where the PNG was written.
    """

    precision: float
    num_valid: int
    num_correct: int
    chance: float
    query_xy: tuple[float, float]
    query_error_cells: float
    out_path: str


def _denormalize(crop: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(3, S, S)`` normalized crop -> ``(S, S, 3)`` float array in ``[0, 1]``."""
    if crop.dim() != 3 or crop.shape[0] != 3:
        raise ValueError(f"crop must be (3, S, S), got shape {tuple(crop.shape)}")
    pixels = crop.detach().cpu().float() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return rearrange(pixels.clamp(0, 1), "c h w -> h w c").numpy()


def _display_xy(index: Tensor, h: int, w: int, size: int) -> np.ndarray:
    """Raster cell indices ``(N,)`` -> ``(N, 2)`` centres ``(x, y)`` in the displayed crop's pixels."""
    rows, cols = (index // w).double(), (index % w).double()
    return torch.stack([(cols + 0.5) * size / w, (rows + 0.5) * size / h], dim=-1).numpy()


def _to_display(xy_norm: np.ndarray, box: Tensor, flipped: bool, size: int) -> np.ndarray:
    """Normalized original-image points ``(N, 2)`` -> displayed-crop pixels of a view (mirrored if flipped)."""
    x1, y1, x2, y2 = box.tolist()
    u = (xy_norm[:, 0] - x1) / (x2 - x1)
    v = (xy_norm[:, 1] - y1) / (y2 - y1)
    if flipped:
        u = 1.0 - u
    return np.stack([u * size, v * size], axis=-1)


def _pair_canvas(crop_a: np.ndarray, crop_b: np.ndarray, gap: int) -> np.ndarray:
    height = max(crop_a.shape[0], crop_b.shape[0])
    canvas = np.ones((height, crop_a.shape[1] + gap + crop_b.shape[1], 3), dtype=np.float32)
    canvas[: crop_a.shape[0], : crop_a.shape[1]] = crop_a
    canvas[: crop_b.shape[0], crop_a.shape[1] + gap :] = crop_b
    return canvas


def _line_subset(count: int, max_lines: int) -> np.ndarray:
    if count <= max_lines:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, max_lines).round().astype(np.int64))


def _view_label(name: str, flipped: bool) -> str:
    return f"{name} (flipped)" if flipped else name


def draw_match_figure(
    image: Image.Image,
    views: CropViews,
    feats_a: Tensor,
    feats_b: Tensor,
    out_path: str | os.PathLike,
    pair: tuple[int, int] = (0, 1),
    query_point: tuple[float, float] | None = None,
    radius_cells: float = 1.0,
    label: str = "",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    max_lines: int = 64,
    figsize: tuple[float, float] = (14.0, 7.0),
    dpi: int = 120,
) -> MatchFigureSummary:
    """Draw geometric vs learned matches between two views of one image, with PCA maps and a similarity map.

    Layout (2 rows): (1) the original image with both crop boxes; views A and B side by side with their
    *geometric* matches (each cell of A inside B joined to the cell of B nearest by location); the same pair with
    the *learned* matches (feature nearest neighbour), green when within ``radius_cells`` of the true location,
    red otherwise. (2) PCA-to-RGB of A's and B's features (one PCA for both, cells shown as blocks over the crop);
    view A with the query cell; the cosine similarity of the query's feature with every cell of B, over view B,
    with the true location (star) and the best match (cross).

    Args:
        image: The original image the views were cut from.
        views: The views (``MultiCrop`` output); ``pair`` picks A and B.
        feats_a: ``(C, h_a, w_a)`` (or ``(1, C, h_a, w_a)``) features of view A.
        feats_b: ``(C, h_b, w_b)`` features of view B.
        out_path: PNG path (parent directories are created).
        pair: Indices of views A and B in ``views``.
        query_point: ``(x, y)`` normalized position in the *original image*; the query is the cell of A whose
            centre is nearest to it. ``None``: the cell of A inside B nearest to the centre of the overlap (A's
            central cell when the views do not overlap).
        radius_cells: Tolerance of a correct learned match, in B cells (see ``densessl.diagnostics``).
        label: Model description for the title (e.g. ``"resnet18 / random init"``).
        mean: Normalization mean used by the transform (to show the crops).
        std: Normalization std used by the transform.
        max_lines: At most this many match lines per panel (evenly subsampled over valid cells).
        figsize: Figure size in inches; the PNG is ``figsize * dpi`` pixels.
        dpi: Resolution.

    Returns:
        The precision, counts and query outcome shown in the figure.
    """
    _require_matplotlib()
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, Rectangle

    ia, ib = pair
    num_views = views.boxes.shape[0]
    if not (0 <= ia < num_views and 0 <= ib < num_views) or ia == ib:
        raise ValueError(f"pair must be two different view indices in [0, {num_views}), got {pair}")
    fa, fb = _single_map(feats_a).detach().cpu().float(), _single_map(feats_b).detach().cpu().float()
    if fa.shape[0] != fb.shape[0]:
        raise ValueError(f"feats_a {tuple(fa.shape)} and feats_b {tuple(fb.shape)} must share the channel count")
    (ha, wa), (hb, wb) = fa.shape[-2:], fb.shape[-2:]
    box_a, box_b = views.boxes[ia].float().cpu(), views.boxes[ib].float().cpu()
    flip_a, flip_b = bool(views.flipped[ia]), bool(views.flipped[ib])
    image_size = views.image_size.float().cpu()
    if image.size != (int(image_size[0]), int(image_size[1])):
        raise ValueError(f"image is {image.size} (W, H) but the views were cut from {tuple(image_size.tolist())}")
    crop_a = _denormalize(views.crops[ia], mean, std)
    crop_b = _denormalize(views.crops[ib], mean, std)
    size_a, size_b = crop_a.shape[1], crop_b.shape[1]

    geometry = dict(
        boxes_a=box_a[None], flipped_a=torch.tensor([flip_a]), boxes_b=box_b[None], flipped_b=torch.tensor([flip_b]),
        image_size=image_size[None], radius_cells=radius_cells,
    )
    learned = learned_matches(fa[None], fb[None], **geometry)
    geometric = geometric_matches(size_a=(ha, wa), size_b=(hb, wb), **geometry)
    stats = summarize_matches(learned)

    # Query cell of A.
    centres_a = (learned.src_xy[0] / image_size).numpy()  # (N_a, 2) normalized
    valid = learned.valid[0].numpy()
    if query_point is not None:
        qx, qy = float(query_point[0]), float(query_point[1])
        if not (0.0 <= qx <= 1.0 and 0.0 <= qy <= 1.0):
            raise ValueError(f"query_point must be normalized (x, y) in [0, 1], got {query_point}")
        x1, y1, x2, y2 = box_a.tolist()
        if not (x1 <= qx <= x2 and y1 <= qy <= y2):
            box = tuple(round(v, 3) for v in box_a.tolist())
            raise ValueError(f"query_point {query_point} lies outside view A's crop box {box}")
        target = np.array([qx, qy])
        query = int(np.argmin(((centres_a - target) ** 2).sum(-1)))
    elif valid.any():
        inter = np.array([
            float(max(box_a[0], box_b[0]) + min(box_a[2], box_b[2])) / 2,
            float(max(box_a[1], box_b[1]) + min(box_a[3], box_b[3])) / 2,
        ])
        distance = ((centres_a - inter) ** 2).sum(-1)
        query = int(np.argmin(np.where(valid, distance, np.inf)))
    else:
        query = (ha // 2) * wa + wa // 2
    query_xy = (float(centres_a[query, 0]), float(centres_a[query, 1]))
    cell_px = float(learned.tolerance_px[0]) / radius_cells if radius_cells > 0 else float("nan")
    if valid[query] and radius_cells > 0:
        query_error = float(learned.error_px[0, query]) / cell_px
    else:
        query_error = float("nan")

    za = F.normalize(rearrange(fa, "c h w -> (h w) c"), dim=1)
    zb = F.normalize(rearrange(fb, "c h w -> (h w) c"), dim=1)
    similarity = (zb @ za[query]).reshape(hb, wb).numpy()

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 8, left=0.03, right=0.95, top=0.86, bottom=0.04, wspace=0.35, hspace=0.42)
    ax_image = fig.add_subplot(grid[0, 0:2])
    ax_geo = fig.add_subplot(grid[0, 2:5])
    ax_learn = fig.add_subplot(grid[0, 5:8])
    ax_pca_a = fig.add_subplot(grid[1, 0:2])
    ax_pca_b = fig.add_subplot(grid[1, 2:4])
    ax_query = fig.add_subplot(grid[1, 4:6])
    ax_sim = fig.add_subplot(grid[1, 6:8])

    # (1) Original image with the boxes.
    width, height = image.size
    ax_image.imshow(np.asarray(image.convert("RGB")), extent=(0, width, height, 0))
    for name, box, flipped, colour in (("A", box_a, flip_a, _COLOUR_A), ("B", box_b, flip_b, _COLOUR_B)):
        px = to_pixels(box.view(1, 2, 2), image_size[None]).view(4).tolist()
        ax_image.add_patch(Rectangle((px[0], px[1]), px[2] - px[0], px[3] - px[1], fill=False, lw=2.5, ec=colour,
                                     ls="--" if flipped else "-", label=_view_label(f"view {name}", flipped)))
        ax_image.text(px[0] + 3, px[1] + 3, _view_label(name, flipped), color="white", fontsize=9, va="top",
                      ha="left", bbox=dict(facecolor=colour, alpha=0.85, pad=1.5, lw=0))
    ax_image.plot([query_xy[0] * width], [query_xy[1] * height], marker="o", ms=7, mfc="yellow", mec="black",
                  ls="none", label="query")
    ax_image.set_title(f"original image {width}x{height}", fontsize=10)
    ax_image.legend(loc="upper center", ncol=3, fontsize=7, framealpha=0.85, bbox_to_anchor=(0.5, -0.08))

    # (1) Pairs with geometric and learned matches.
    gap = max(8, size_a // 12)
    canvas = _pair_canvas(crop_a, crop_b, gap)
    offset = size_a + gap
    src_disp = _display_xy(torch.arange(ha * wa), ha, wa, size_a)
    valid_idx = np.flatnonzero(valid)
    shown = valid_idx[_line_subset(len(valid_idx), max_lines)]
    cmap = colormaps["turbo"]
    for ax, matches, title in (
        (ax_geo, geometric, "geometric matches (nearest cell centre)"),
        (ax_learn, learned, "learned matches (feature nearest neighbour)"),
    ):
        ax.imshow(canvas)
        tgt_disp = _display_xy(matches.tgt_index[0], hb, wb, size_b)
        correct = matches.correct[0].numpy()
        is_geometric = matches is geometric
        for rank, p in enumerate(shown):
            if is_geometric:  # one colour per source cell, so crossing lines can be followed
                colour = cmap(rank / max(len(shown) - 1, 1))
            else:
                colour = _GOOD if correct[p] else _BAD
            end = (tgt_disp[p, 0] + offset, tgt_disp[p, 1])
            # Arcs rather than straight lines: matches along one row would otherwise lie on top of each other.
            ax.add_patch(FancyArrowPatch((src_disp[p, 0], src_disp[p, 1]), end, arrowstyle="-", color=colour,
                                         lw=1.2, alpha=0.9, connectionstyle="arc3,rad=-0.15", zorder=2))
            ax.plot([end[0]], [end[1]], marker="o", ms=3.5, color=colour, mec="black", mew=0.4, ls="none", zorder=3)
        ax.scatter(src_disp[valid, 0], src_disp[valid, 1], s=10, c="white", edgecolors="black", linewidths=0.5,
                   zorder=3)
        ax.scatter(src_disp[~valid, 0], src_disp[~valid, 1], s=10, facecolors="none", edgecolors="0.6",
                   linewidths=0.7, zorder=3)
        for x0, name, flipped, colour in ((0, "A", flip_a, _COLOUR_A), (offset, "B", flip_b, _COLOUR_B)):
            ax.add_patch(Rectangle((x0 - 0.5, -0.5), (size_a if name == "A" else size_b), canvas.shape[0],
                                   fill=False, lw=2.5, ec=colour))
            ax.text(x0 + 3, 3, _view_label(name, flipped), color="white", fontsize=9, va="top", ha="left",
                    bbox=dict(facecolor=colour, alpha=0.85, pad=1.5, lw=0))
        ax.set_xlim(-1, canvas.shape[1])
        ax.set_ylim(canvas.shape[0], -1)
        ax.set_axis_off()
        if matches is geometric:
            handles = [Line2D([], [], color=cmap(0.8), lw=2, label="location match (colour per A cell)"),
                       Line2D([], [], marker="o", ls="none", mfc="none", mec="0.6", label="A cell outside B")]
            ax.set_title(f"{title}\n{len(valid_idx)} cells of A inside B ({len(shown)} drawn)", fontsize=10)
        else:
            handles = [Line2D([], [], color=_GOOD, lw=2, label=f"within {radius_cells:g} cell"),
                       Line2D([], [], color=_BAD, lw=2, label="wrong")]
            ax.set_title(f"{title}\nprecision {_fmt(stats.precision)} ({stats.num_correct}/{stats.num_valid}), "
                         f"chance {_fmt(stats.chance)}", fontsize=10)
        ax.legend(handles=handles, loc="lower center", ncol=2, fontsize=7, framealpha=0.85,
                  bbox_to_anchor=(0.5, -0.13))

    # (2) PCA maps.
    rgb_a, rgb_b = pca_rgb_joint([fa, fb])
    pca_panels = ((ax_pca_a, rgb_a, "A", flip_a, size_a), (ax_pca_b, rgb_b, "B", flip_b, size_b))
    for ax, rgb, name, flipped, size in pca_panels:
        ax.imshow(rgb, extent=(0, size, size, 0), interpolation="nearest")
        ax.set_title(f"PCA of features, {_view_label('view ' + name, flipped)}\n{rgb.shape[0]}x{rgb.shape[1]} cells "
                     "(one PCA for A and B)", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])

    # (2) Query in A and similarity in B.
    qd = src_disp[query]
    ax_query.imshow(crop_a)
    ax_query.add_patch(Rectangle((qd[0] - size_a / wa / 2, qd[1] - size_a / ha / 2), size_a / wa, size_a / ha,
                                 fill=False, ec="yellow", lw=2))
    ax_query.plot([qd[0]], [qd[1]], marker="o", ms=8, mfc="yellow", mec="black", ls="none")
    ax_query.set_title(f"query cell in {_view_label('view A', flip_a)}\nat ({query_xy[0]:.2f}, {query_xy[1]:.2f}) "
                       "of the image", fontsize=10)
    ax_query.set_xticks([])
    ax_query.set_yticks([])

    ax_sim.imshow(crop_b)
    heat = ax_sim.imshow(similarity, extent=(0, size_b, size_b, 0), interpolation="nearest", cmap="magma",
                         alpha=0.7, vmin=float(similarity.min()), vmax=float(similarity.max()))
    fig.colorbar(heat, ax=ax_sim, fraction=0.046, pad=0.03).set_label("cosine similarity (min to max)", fontsize=8)
    best = _display_xy(torch.tensor([int(np.argmax(similarity))]), hb, wb, size_b)[0]
    best_colour = "0.7" if math.isnan(query_error) else (_GOOD if query_error <= radius_cells else _BAD)
    ax_sim.plot([best[0]], [best[1]], marker="X", ms=11, mfc=best_colour,
                mec="white", ls="none", label="best match")
    true_disp = _to_display(np.array([query_xy]), box_b, flip_b, size_b)[0]
    if valid[query]:
        ax_sim.plot([true_disp[0]], [true_disp[1]], marker="*", ms=15, mfc="yellow", mec="black", ls="none",
                    label="true location")
        where = f"best match {query_error:.2f} cells from the truth"
    else:
        where = "query is outside view B"
    ax_sim.set_xlim(0, size_b)
    ax_sim.set_ylim(size_b, 0)
    ax_sim.set_title(f"similarity to the query, {_view_label('view B', flip_b)}\n{where}", fontsize=10)
    ax_sim.legend(loc="lower center", ncol=2, fontsize=7, framealpha=0.85, bbox_to_anchor=(0.5, -0.14))
    ax_sim.set_xticks([])
    ax_sim.set_yticks([])

    heading = f"{label}: " if label else ""
    fig.suptitle(
        f"{heading}learned-match precision {_fmt(stats.precision)} = {stats.num_correct}/{stats.num_valid} valid cells "
        f"of A (chance {_fmt(stats.chance)}, radius {radius_cells:g} cell = {_fmt(cell_px * radius_cells, 1)} px)\n"
        f"features {fa.shape[0]} ch, A {ha}x{wa} cells, B {hb}x{wb} cells; crops {size_a} px",
        fontsize=12,
    )
    out_path = os.fspath(out_path)
    parent = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(out_path, dpi=dpi, format="png")
    logger.info("wrote match figure %s (precision %.3f over %d cells)", out_path, stats.precision, stats.num_valid)
    return MatchFigureSummary(
        precision=stats.precision,
        num_valid=stats.num_valid,
        num_correct=stats.num_correct,
        chance=stats.chance,
        query_xy=query_xy,
        query_error_cells=query_error,
        out_path=out_path,
    )


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
