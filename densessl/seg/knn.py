"""Dense nearest-neighbour retrieval for segmentation (Hummingbird-style, no training).

Reference: Balazevic et al., "Towards in-context scene understanding", NeurIPS 2023 (the "Hummingbird" evaluation).

Protocol (``run_knn``):
    1. Memory. Every train image goes through the eval transform (``densessl.seg.features``); its patch features
       (the backbone map cells, levels resize-concatenated) are L2-normalized. Each patch gets a **label
       distribution**: the fraction of each class among the mask pixels inside the patch (the ``S x S`` mask is
       partitioned into ``h x w`` cells like the feature map), ignore pixels excluded; patches with only ignore pixels
       are dropped. ``augment_memory`` extra passes add random resized crops (scale ``augment_scale``) with random
       horizontal flips of the train images, the masks cropped and flipped identically (NEAREST).
    2. Memory size. The memory holds at most ``memory_size`` patches: each image (and each augmented copy)
       contributes at most ``ceil(memory_size / (num_train * (1 + augment_memory)))`` valid patches (seeded), and a
       final seeded random subsample enforces the cap. Only the kept patches are ever stored. Which patches an image
       gives (``memory_sampling``): ``uniform`` picks them uniformly at random; ``rare_class`` is the open Hummingbird
       implementation's sampler (vpariza/open-hummingbird-eval, ``sample_features``): a patch scores the sum, over the
       classes it contains, of how many of the image's patches contain that class, times a uniform draw in [0, 1),
       and the lowest scores are kept, so patches of the image's rarer classes are preferred.
    Label fraction (``label_fraction``, the NeCo/DIP "data fraction" setting: 1/1, 1/8, 1/64, 1/128): the memory is
       built from a random subset of ``max(1, round(fraction * num_train))`` train images, drawn with
       ``fraction_seed`` (the subset's indices are written into the settings); the val split is always whole.
    3. Retrieval. Each val patch feature (L2-normalized) gets its ``k`` nearest memory patches by cosine similarity:
       exact search in torch over (query chunk x memory chunk) blocks, or ``faiss.IndexFlatIP`` when ``use_faiss`` and
       faiss imports. Weights = softmax(similarity / temperature) over the ``k``; the patch's predicted distribution is
       the weighted sum of the neighbours' distributions.
    4. Prediction. The ``(K, h, w)`` distribution map is upsampled bilinearly (``align_corners=False``) to the mask
       resolution ``S x S``; argmax; mIoU with the shared ``ConfusionMatrix``.

Results depend strongly on the memory size (the paper uses 10,240,000 patches; common reproductions 1,024,000) and on
the input resolution (patches per image); both are recorded in ``SegEvalResult.settings``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data
from einops import rearrange
from PIL import Image
from torch import Tensor, nn

from densessl.data.images import to_rgb
from densessl.data.transforms import sample_crop
from densessl.dist import derive_seed
from densessl.schema import Range, check_fields
from densessl.seg.dataset import SegSample
from densessl.seg.features import FeatureConfig, backbone_device, iter_features
from densessl.seg.linear import backbone_settings, dataset_classes
from densessl.seg.metrics import ConfusionMatrix
from densessl.seg.result import SegEvalResult

__all__ = [
    "KNNConfig",
    "KNNRetrievalConfig",
    "AugmentedSegmentation",
    "PatchLabels",
    "patch_label_distributions",
    "DenseMemory",
    "Neighbors",
    "knn_search",
    "knn_predict",
    "build_memory",
    "fraction_indices",
    "run_knn",
    "faiss_available",
]

logger = logging.getLogger("densessl")


def faiss_available() -> bool:
    """Whether ``import faiss`` works."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class KNNRetrievalConfig:
    """Memory and retrieval: the dense kNN protocol's own settings (the ``knn`` group of ``densessl-eval-seg``).

    Attributes:
        k: Neighbours per query patch.
        temperature: Softmax temperature on cosine similarities.
        memory_size: Cap on the number of memory patches (see the module docstring).
        augment_memory: Extra passes over the train split with random resized crops and flips.
        augment_scale: Area range of the augmentation crops.
        query_chunk_size: Query patches per similarity block (bounds memory: block = query x memory chunk floats).
        memory_chunk_size: Memory patches per similarity block.
        use_faiss: Use ``faiss.IndexFlatIP`` if faiss imports (falls back to torch otherwise).
        memory_sampling: ``uniform`` or ``rare_class`` (the open Hummingbird sampler; see the module docstring).
        label_fraction: Fraction of the train images the memory is built from (``1.0``: all).
        fraction_seed: Seed of the train-image subset (each seed a different subset of the same size).
    """

    k: Annotated[int, Range(ge=1)] = 30
    temperature: Annotated[float, Range(gt=0)] = 0.02
    memory_size: Annotated[int, Range(ge=1)] = 1_024_000
    augment_memory: Annotated[int, Range(ge=0)] = 0
    augment_scale: Annotated[tuple[float, float], Range(gt=0, le=1, ordered=True)] = (0.25, 1.0)
    query_chunk_size: Annotated[int, Range(ge=1)] = 1024
    memory_chunk_size: Annotated[int, Range(ge=1)] = 65536
    use_faiss: bool = False
    memory_sampling: Literal["uniform", "rare_class"] = "uniform"
    label_fraction: Annotated[float, Range(gt=0, le=1)] = 1.0
    fraction_seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first impossible value."""
        check_fields(self)


@dataclass
class KNNConfig(KNNRetrievalConfig, FeatureConfig):
    """Everything that defines the dense kNN protocol: extraction (``FeatureConfig``), memory and retrieval
    (``KNNRetrievalConfig``) and the seed.

    Attributes:
        seed: Seed for memory subsampling and augmentation.
    """

    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first impossible value."""
        FeatureConfig.validate(self)
        KNNRetrievalConfig.validate(self)


def _sample_seed(*keys: int) -> int:
    return derive_seed(*keys)


class AugmentedSegmentation(torch.utils.data.Dataset):
    """A random-resized-crop + horizontal-flip copy of a segmentation dataset, at ``size x size``.

    The image is resampled bilinearly and the mask with NEAREST over the same crop box, and both are flipped together.
    Each sample's randomness depends only on ``(seed, pass_index, index)``.

    Args:
        dataset: Yields ``SegSample``.
        size: Output side.
        scale: Crop area range (fraction of the image).
        seed: Base seed.
        pass_index: Which augmentation pass (different passes give different crops).
        ratio: Crop aspect-ratio range.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        size: int,
        scale: tuple[float, float] = (0.25, 1.0),
        seed: int = 0,
        pass_index: int = 1,
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    ) -> None:
        self.dataset = dataset
        self.size = int(size)
        self.scale = scale
        self.ratio = ratio
        self.seed = int(seed)
        self.pass_index = int(pass_index)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> SegSample:
        sample = self.dataset[index]
        image = to_rgb(sample.image)
        mask = np.ascontiguousarray(sample.mask)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"sample {sample.name!r}: mask shape {mask.shape} != image (H, W) "
                             f"{(image.height, image.width)}")
        generator = torch.Generator().manual_seed(_sample_seed(self.seed, self.pass_index, index))
        top, left, crop_h, crop_w = sample_crop(image.height, image.width, self.scale, self.ratio, generator)
        flip = bool(torch.rand((), generator=generator).item() < 0.5)
        box = (left, top, left + crop_w, top + crop_h)
        out_size = (self.size, self.size)
        image = image.resize(out_size, resample=Image.Resampling.BILINEAR, box=box)
        mask_image = Image.fromarray(mask.astype(np.uint8)).resize(out_size, Image.Resampling.NEAREST, box=box)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            mask_image = mask_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return SegSample(image=image, mask=np.array(mask_image, dtype=np.uint8),
                         name=f"{sample.name}_aug{self.pass_index}")


@dataclass
class PatchLabels:
    """Per-patch label distributions.

    Attributes:
        distributions: ``(B, h * w, K)`` class fractions over the non-ignored pixels of each patch (rows sum to 1 for
            valid patches, 0 for invalid ones). Patches are in row-major ``(h, w)`` order.
        valid: ``(B, h * w)`` bool, whether the patch has at least one non-ignored pixel.
    """

    distributions: Tensor
    valid: Tensor


def patch_label_distributions(
    masks: Tensor, num_classes: int, grid: tuple[int, int], ignore_index: int = 255
) -> PatchLabels:
    """Fraction of each class's pixels inside each cell of an ``h x w`` grid over the masks.

    Pixel ``(y, x)`` of an ``S_h x S_w`` mask falls in cell ``(floor(y * h / S_h), floor(x * w / S_w))``.

    Args:
        masks: ``(B, S_h, S_w)`` integer class indices or ``ignore_index``.
        num_classes: ``K``.
        grid: ``(h, w)`` cells (the feature map size).
        ignore_index: Mask value excluded from the fractions.

    Returns:
        ``PatchLabels`` with ``distributions (B, h * w, K)`` and ``valid (B, h * w)``.

    Raises:
        ValueError: A mask value is neither in ``[0, K)`` nor ``ignore_index``, or the grid is finer than the mask.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be (B, H, W), got shape {tuple(masks.shape)}")
    batch, height, width = masks.shape
    cells_h, cells_w = grid
    if not (1 <= cells_h <= height and 1 <= cells_w <= width):
        raise ValueError(f"grid {grid} must be between 1 and the mask size {(height, width)}")
    labels = masks.to(torch.int64)
    ignored = labels == ignore_index
    bad = ~ignored & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"mask values {torch.unique(labels[bad])[:10].tolist()} outside [0, {num_classes}) "
                         f"and not ignore_index={ignore_index}")
    labels = labels.masked_fill(ignored, num_classes)  # ignore -> extra bin K
    rows = torch.arange(height, device=masks.device) * cells_h // height
    cols = torch.arange(width, device=masks.device) * cells_w // width
    cell = (rows[:, None] * cells_w + cols[None, :]).expand(batch, -1, -1)
    offset = torch.arange(batch, device=masks.device)[:, None, None] * (cells_h * cells_w)
    bins = num_classes + 1
    flat = ((cell + offset) * bins + labels).reshape(-1)
    counts = torch.bincount(flat, minlength=batch * cells_h * cells_w * bins)
    counts = counts.reshape(batch, cells_h * cells_w, bins)[..., :num_classes].to(torch.float32)
    totals = counts.sum(dim=-1, keepdim=True)
    valid = totals.squeeze(-1) > 0
    return PatchLabels(distributions=counts / totals.clamp(min=1.0), valid=valid)


@dataclass
class DenseMemory:
    """The retrieval memory.

    Attributes:
        features: ``(M, C)`` L2-normalized patch features (float16).
        distributions: ``(M, K)`` label distributions (float16).
    """

    features: Tensor
    distributions: Tensor

    @property
    def nbytes(self) -> int:
        """Bytes held by the memory."""
        return sum(t.numel() * t.element_size() for t in (self.features, self.distributions))


@dataclass
class Neighbors:
    """``k`` nearest memory entries per query.

    Attributes:
        similarities: ``(Q, k)`` cosine similarities, descending.
        indices: ``(Q, k)`` int64 memory indices.
    """

    similarities: Tensor
    indices: Tensor


def knn_search(
    queries: Tensor,
    memory: Tensor,
    k: int,
    query_chunk_size: int = 1024,
    memory_chunk_size: int = 65536,
) -> Neighbors:
    """Exact top-``k`` inner-product search, in ``query_chunk x memory_chunk`` float32 blocks.

    Args:
        queries: ``(Q, C)`` (L2-normalized for cosine similarity).
        memory: ``(M, C)`` on the same device (any float dtype; cast to float32 block by block).
        k: Neighbours, ``1 <= k <= M``.
        query_chunk_size: Queries per block.
        memory_chunk_size: Memory rows per block.

    Returns:
        ``Neighbors`` with ``(Q, k)`` similarities and indices.
    """
    if queries.dim() != 2 or memory.dim() != 2 or queries.shape[1] != memory.shape[1]:
        raise ValueError(f"queries (Q, C) and memory (M, C) must share C, got {tuple(queries.shape)} and "
                         f"{tuple(memory.shape)}")
    if not 1 <= k <= memory.shape[0]:
        raise ValueError(f"k must be in [1, M={memory.shape[0]}], got {k}")
    sims_out, idx_out = [], []
    for q_start in range(0, queries.shape[0], query_chunk_size):
        query = queries[q_start : q_start + query_chunk_size].float()
        best_sims: Tensor | None = None
        best_idx: Tensor | None = None
        for m_start in range(0, memory.shape[0], memory_chunk_size):
            block = query @ memory[m_start : m_start + memory_chunk_size].float().T  # (q, m)
            sims, idx = block.topk(min(k, block.shape[1]), dim=1)
            idx = idx + m_start
            if best_sims is not None and best_idx is not None:  # merge with the running top-k
                sims, idx = torch.cat([best_sims, sims], dim=1), torch.cat([best_idx, idx], dim=1)
                sims, order = sims.topk(min(k, sims.shape[1]), dim=1)
                idx = idx.gather(1, order)
            best_sims, best_idx = sims, idx
        sims_out.append(best_sims)
        idx_out.append(best_idx)
    return Neighbors(similarities=torch.cat(sims_out), indices=torch.cat(idx_out))


def _faiss_search(queries: Tensor, memory: Tensor, k: int) -> Neighbors:
    import faiss

    index = faiss.IndexFlatIP(memory.shape[1])
    index.add(np.ascontiguousarray(memory.float().cpu().numpy()))
    sims, idx = index.search(np.ascontiguousarray(queries.float().cpu().numpy()), k)
    return Neighbors(similarities=torch.from_numpy(sims).to(queries.device),
                     indices=torch.from_numpy(idx).to(queries.device, torch.int64))


def knn_predict(
    queries: Tensor,
    memory: DenseMemory,
    k: int,
    temperature: float,
    query_chunk_size: int = 1024,
    memory_chunk_size: int = 65536,
    use_faiss: bool = False,
) -> Tensor:
    """Predicted label distribution of each query patch: softmax(sim / T)-weighted sum of its ``k`` neighbours'.

    Args:
        queries: ``(Q, C)`` L2-normalized query features.
        memory: The memory (on the queries' device).
        k: Neighbours (clamped to the memory size).
        temperature: Softmax temperature.
        query_chunk_size: Queries per similarity block.
        memory_chunk_size: Memory rows per similarity block.
        use_faiss: Search with faiss (must be importable).

    Returns:
        ``(Q, K)`` float32 distributions.
    """
    k = min(k, memory.features.shape[0])
    if use_faiss:
        neighbors = _faiss_search(queries, memory.features, k)
    else:
        neighbors = knn_search(queries, memory.features, k, query_chunk_size, memory_chunk_size)
    weights = torch.softmax(neighbors.similarities.float() / temperature, dim=1)  # (Q, k)
    labels = memory.distributions[neighbors.indices].float()  # (Q, k, K)
    return torch.einsum("qk,qkc->qc", weights, labels)


def fraction_indices(num_train: int, fraction: float, seed: int) -> list[int]:
    """The train images a memory at ``fraction`` is built from: ``max(1, round(fraction * num_train))`` distinct
    indices drawn with ``seed``, sorted (all of them for ``fraction == 1``)."""
    if fraction >= 1.0:
        return list(range(num_train))
    count = max(1, round(fraction * num_train))
    generator = torch.Generator().manual_seed(derive_seed(seed, num_train, count))
    return sorted(torch.randperm(num_train, generator=generator)[:count].tolist())


def _sampling_scores(labels: PatchLabels, sampling: str, generator: torch.Generator) -> Tensor:
    """``(B, hw)`` scores, lowest kept, invalid patches ``inf`` (see ``memory_sampling`` in the module docstring)."""
    draw = torch.rand(labels.valid.shape, generator=generator)
    if sampling == "rare_class":
        present = (labels.distributions > 0).float()  # (B, hw, K)
        patches_with_class = present.sum(dim=1, keepdim=True)  # (B, 1, K)
        scores = (present * patches_with_class).sum(dim=-1) * draw
    else:  # the largest draws are kept
        scores = -draw
    return scores.masked_fill(~labels.valid, float("inf"))


def _flatten_patches(features: Tensor) -> Tensor:
    """``(B, C, h, w)`` -> ``(B, h * w, C)`` L2-normalized float32."""
    return F.normalize(rearrange(features.float(), "b c h w -> b (h w) c"), dim=-1)


def build_memory(
    backbone: nn.Module,
    train_ds: torch.utils.data.Dataset,
    num_classes: int,
    ignore_index: int,
    cfg: KNNConfig,
    device: torch.device,
) -> tuple[DenseMemory, dict[str, Any]]:
    """Build the retrieval memory from the train split (see the module docstring, steps 1-2).

    Returns:
        The memory on ``device`` and facts for ``settings`` (patches kept, per-image quota, feature size).
    """
    num_images = len(train_ds) * (1 + cfg.augment_memory)  # type: ignore[arg-type]
    quota = math.ceil(cfg.memory_size / num_images)
    generator = torch.Generator().manual_seed(cfg.seed)
    feats_kept: list[Tensor] = []
    dists_kept: list[Tensor] = []
    grid: tuple[int, int] | None = None
    seen_patches = 0
    for pass_index in range(1 + cfg.augment_memory):
        dataset = train_ds if pass_index == 0 else AugmentedSegmentation(
            train_ds, cfg.input_size, cfg.augment_scale, cfg.seed, pass_index)
        description = "memory" if pass_index == 0 else f"memory aug {pass_index}/{cfg.augment_memory}"
        for feats, batch in iter_features(backbone, dataset, cfg, description=description):
            grid = (int(feats.shape[-2]), int(feats.shape[-1]))
            patches = _flatten_patches(feats)  # (B, hw, C)
            labels = patch_label_distributions(batch.masks, num_classes, grid, ignore_index)
            valid = labels.valid.to(patches.device)
            seen_patches += int(valid.sum())
            if quota < valid.shape[1]:
                scores = _sampling_scores(labels, cfg.memory_sampling, generator).to(patches.device)
                low = scores.topk(quota, dim=1, largest=False)
                keep = torch.zeros_like(valid).scatter_(1, low.indices, torch.isfinite(low.values))
            else:
                keep = valid
            feats_kept.append(patches[keep].to(device, torch.float16))
            dists_kept.append(labels.distributions.to(patches.device)[keep].to(device, torch.float16))
    features = torch.cat(feats_kept)
    distributions = torch.cat(dists_kept)
    if features.shape[0] == 0:
        raise ValueError("the kNN memory is empty: every train patch is ignore_index only")
    if features.shape[0] > cfg.memory_size:
        chosen = torch.randperm(features.shape[0], generator=generator)[: cfg.memory_size].sort().values
        features, distributions = features[chosen.to(device)], distributions[chosen.to(device)]
    facts = {
        "memory_patches": int(features.shape[0]),
        "memory_candidates": seen_patches,
        "memory_patches_per_image": quota,
        "memory_images": num_images,
        "feature_size": list(grid) if grid else None,
    }
    return DenseMemory(features=features, distributions=distributions), facts


def run_knn(
    backbone: nn.Module,
    train_ds: torch.utils.data.Dataset,
    val_ds: torch.utils.data.Dataset,
    cfg: KNNConfig | None = None,
) -> SegEvalResult:
    """Dense kNN retrieval segmentation of a frozen backbone (see the module docstring).

    Args:
        backbone: Returns ``DenseFeatures`` for ``(B, 3, H, W)`` images; built with (at least) ``cfg.levels``.
        train_ds: ``SegmentationDataset`` yielding ``SegSample`` (the memory).
        val_ds: Same classes as ``train_ds`` (the queries).
        cfg: Protocol settings (defaults: ``KNNConfig()``).

    Returns:
        ``SegEvalResult`` with val metrics, every protocol setting (memory size and input resolution included), and
        the class names.
    """
    cfg = cfg or KNNConfig()
    cfg.validate()
    num_classes, class_names, ignore_index = dataset_classes(train_ds, val_ds)
    device = backbone_device(backbone, cfg.device)
    use_faiss = cfg.use_faiss and faiss_available()
    if cfg.use_faiss and not use_faiss:
        logger.warning("use_faiss=True but faiss is not importable; using exact torch search")
    timings: dict[str, float] = {}

    chosen = fraction_indices(len(train_ds), cfg.label_fraction, cfg.fraction_seed)  # type: ignore[arg-type]
    whole = len(chosen) == len(train_ds)  # type: ignore[arg-type]
    memory_ds = train_ds if whole else torch.utils.data.Subset(train_ds, chosen)
    if memory_ds is not train_ds:
        logger.info("label fraction %.4g: the memory is built from %d of %d train images (fraction seed %d)",
                    cfg.label_fraction, len(chosen), len(train_ds), cfg.fraction_seed)  # type: ignore[arg-type]
    start = time.perf_counter()
    memory, facts = build_memory(backbone, memory_ds, num_classes, ignore_index, cfg, device)
    timings["build_memory"] = time.perf_counter() - start
    k = min(cfg.k, memory.features.shape[0])
    if k < cfg.k:
        logger.warning("k=%d exceeds the memory size %d; using k=%d", cfg.k, memory.features.shape[0], k)
    logger.info("kNN memory: %d patches x %d dims (%.1f MB)", *memory.features.shape, memory.nbytes / 2**20)

    start = time.perf_counter()
    matrix = ConfusionMatrix(num_classes, ignore_index)
    num_val = 0
    with torch.no_grad():
        for feats, batch in iter_features(backbone, val_ds, cfg, description="kNN val"):
            batch_size, _, height, width = feats.shape
            queries = rearrange(_flatten_patches(feats), "b n c -> (b n) c").to(device)
            dists = knn_predict(queries, memory, k, cfg.temperature, cfg.query_chunk_size, cfg.memory_chunk_size,
                                use_faiss)
            dists = rearrange(dists, "(b h w) c -> b c h w", b=batch_size, h=height, w=width)
            dists = F.interpolate(dists, size=tuple(batch.masks.shape[-2:]), mode="bilinear", align_corners=False)
            matrix.update(dists.argmax(dim=1).cpu(), batch.masks)
            num_val += batch_size
    timings["retrieve"] = time.perf_counter() - start

    settings: dict[str, Any] = {"protocol": "knn", **backbone_settings(backbone)}
    settings.update({key: (list(value) if isinstance(value, tuple) else value) for key, value in asdict(cfg).items()
                     if key not in ("progress", "device", "num_workers", "query_chunk_size", "memory_chunk_size")})
    settings.update({
        "k_effective": k,
        "search": "faiss" if use_faiss else "torch",
        "num_classes": num_classes,
        "ignore_index": ignore_index,
        "num_train": len(train_ds),  # type: ignore[arg-type]
        "memory_train_images": len(chosen),
        **({"memory_train_indices": chosen} if len(chosen) < len(train_ds) else {}),  # type: ignore[arg-type]
        "num_val": num_val,
        "feature_channels": int(memory.features.shape[1]),
        "eval_resolution": [cfg.input_size, cfg.input_size],
        "memory_mb": round(memory.nbytes / 2**20, 2),
        **facts,
    })
    return SegEvalResult(metrics=matrix.compute(), settings=settings, class_names=class_names, timings=timings)
