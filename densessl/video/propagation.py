"""Semi-supervised video object segmentation by label propagation on frozen dense features.

The protocol of DINO (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021; the
reference script is ``eval_video_segmentation.py`` in facebookresearch/dino), which follows the label propagation of
CRW (Jabri et al., "Space-Time Correspondence as a Contrastive Random Walk", NeurIPS 2020). Re-implemented here from
its description for any ``DenseBackbone`` (ConvNet or ViT):

1. Each frame is resized so that its short side is ``short_side`` (480) and its long side is floored to a multiple of
   64 (``tw = int((480 * w / h) // 64 * 64)``: 854x480 -> 832x480), bilinear, then RGB / 255 and ImageNet mean/std
   normalization (``frame_size``, ``preprocess_frame``).
2. Features: the backbone's ``(C, h, w)`` map at ``level`` (default the last), stride ``s`` (``backbone.strides``).
3. The first frame's label map is resized (nearest, as PIL) to the feature grid ``(h, w) = (H' / s, W' / s)`` and
   one-hot encoded, one channel per label ``0..max_label`` (``label_to_onehot``).
4. Context: the first frame (features, one-hot label) plus a FIFO queue of the last ``n_last_frames`` (7) frames with
   their *soft* propagated labels (before upsampling and normalization).
5. Propagation to a target frame (``propagate_labels``): features L2-normalized over channels; affinity
   ``exp(<f_tar, f_src> / temperature)`` (0.1) to every cell of every context frame; a source cell counts for a target
   cell only within ``neighborhood`` (12) cells in both directions (``neighborhood_mask``; 0: everywhere); over all
   ``n_context * h * w`` candidates of a target cell, the values below the k-th largest (``topk`` = 5) are set to 0
   (ties with the k-th are kept, as the reference's ``aff[aff < min_of_topk] = 0``); the weights are normalized to sum
   1 and the target's soft label is the weighted sum of the context labels.
6. Output (``labels_to_mask``): the soft label is upsampled by the stride (bilinear, ``align_corners=False``), each
   channel whose maximum is > 0 is min-max normalized (the reference's ``norm_mask``), argmax over channels, and the
   label map is resized (nearest) to the original frame size.

``propagate_sequence`` runs it over a whole sequence (``iter_propagation`` frame by frame, for progress bars and
streaming), under ``torch.no_grad()`` with the backbone in eval mode.

Differences from reference:
    * Features come from ``DenseBackbone``. For ViTs they are the patch tokens of the chosen block after the final
      norm with the class/register tokens dropped, the same as the reference's ``get_intermediate_layers(x, n=1)[0]``
      without the CLS token. ConvNets give their stage output, and everything that the reference does with the patch
      size (the label grid, the upsampling) uses the backbone's stride instead.
    * After the 64-multiple rule both sides are floored to a multiple of the stride, so that every stride has an exact
      feature grid. This changes nothing for strides that divide 64 (8, 16, 32) with a short side that is a multiple
      of the stride (480 is, for all three); a ViT with 14 px patches gets 476 x 826 for 480p. The long side is never
      floored below the short side (the reference gives 0 for short sides under about 64 h / w).
    * The reference resizes the 8-bit BGR frame with OpenCV (``INTER_LINEAR``, rounding to 8 bits) before dividing by
      255; here the float RGB frame is resized with ``torch.nn.functional.interpolate`` (bilinear, no antialiasing: the
      same sampling), so pixel values can differ by the 8-bit rounding.
    * The reference resizes a square frame to 480 x 448 but its label to 448 x 480; one rule serves both here (DAVIS
      has no square frames).
    * Void pixels (255) in the first frame's annotation count as background for propagation (the reference would make
      256 one-hot channels).
    * The affinity is computed as ``exp((s - max s) / temperature)`` over each target cell's allowed candidates (the
      same weights after the normalization, without overflow at small temperatures), in chunks of target cells to
      bound memory, and ``topk`` is clamped to the number of candidates. The neighbourhood mask is built vectorised.
    * ``norm_mask``: a channel that is constant and positive becomes 1 (the reference divides 0 by 0 and the NaN wins
      the argmax).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import Tensor, nn

from densessl.backbones import normalize_levels
from densessl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from densessl.schema import Range, check_fields

__all__ = [
    "LONG_SIDE_MULTIPLE",
    "PropagatedFrame",
    "PropagationSettings",
    "frame_size",
    "iter_propagation",
    "label_to_onehot",
    "labels_to_mask",
    "neighborhood_mask",
    "norm_mask",
    "preprocess_frame",
    "propagate_labels",
    "propagate_sequence",
]

logger = logging.getLogger("densessl")

LONG_SIDE_MULTIPLE = 64
_VOID_LABEL = 255
_CHUNK_ELEMENTS = 1 << 24  # affinity entries per chunk of target cells (64 MiB in float32)


@dataclass
class PropagationSettings:
    """Label propagation settings; the defaults are the DINO protocol's.

    Attributes:
        short_side: Frames are resized to this short side (the long side by the 64-multiple rule).
        n_last_frames: Preceding frames kept as context besides the first frame (0: the first frame only).
        neighborhood: Radius in feature cells of the window where source cells count (0: no restriction).
        topk: Candidates kept per target cell (ties with the k-th are kept too).
        temperature: Affinity temperature.
        level: Backbone feature level (an index into the model's ``feature_info``; -1 the last).
    """

    short_side: Annotated[int, Range(ge=1)] = 480
    n_last_frames: Annotated[int, Range(ge=0)] = 7
    neighborhood: Annotated[int, Range(ge=0)] = 12
    topk: Annotated[int, Range(ge=1)] = 5
    temperature: Annotated[float, Range(gt=0)] = 0.1
    level: int = -1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field.

        Raises:
            ValueError: ``"<field>: must be ..."`` for the first bad field (a wrong type or out of range).
        """
        for name in ("short_side", "n_last_frames", "neighborhood", "topk", "level"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name}: must be an int, got {value!r} ({type(value).__name__})")  # noqa: TRY004
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float, np.floating)) \
                or not np.isfinite(self.temperature):
            raise ValueError(f"temperature: must be a finite float, got {self.temperature!r}")
        check_fields(self)


@dataclass
class PropagatedFrame:
    """One frame of a propagated sequence.

    Attributes:
        mask: ``(H, W)`` uint8 label map at the original frame size (frame 0: the given annotation).
        soft_labels: ``(L, h, w)`` float soft label on the feature grid, on the backbone's device (frame 0: the
            one-hot first label). ``L = max_label + 1``.
        context_frames: Context frames it was propagated from (0 for frame 0, then 1 + the queued frames).
    """

    mask: np.ndarray
    soft_labels: Tensor
    context_frames: int


def frame_size(height: int, width: int, short_side: int = 480, stride: int = 1) -> tuple[int, int]:
    """The size a frame is resized to: the short side ``short_side``, the long side floored to a multiple of 64.

    ``(480, 854) -> (480, 832)``; a portrait ``(854, 480) -> (832, 480)``. Both sides are then floored to a multiple of
    ``stride`` (a no-op for strides dividing 64 and a ``short_side`` that is a multiple of the stride), and the long
    side is never floored below the short side.

    Args:
        height: Frame height ``H``.
        width: Frame width ``W``.
        short_side: Target short side.
        stride: The backbone's stride.

    Returns:
        ``(H', W')``.

    Raises:
        ValueError: A non-positive size, or a short side smaller than the stride.
    """
    if height < 1 or width < 1 or short_side < 1 or stride < 1:
        raise ValueError(f"frame_size needs positive sizes, got {height}x{width}, short_side {short_side}, "
                         f"stride {stride}")
    short, long = (width, height) if height > width else (height, width)
    new_long = max(int((short_side * long / short) // LONG_SIDE_MULTIPLE * LONG_SIDE_MULTIPLE), short_side)
    new_short = short_side // stride * stride
    new_long = new_long // stride * stride
    if new_short < stride:
        raise ValueError(f"short_side {short_side} is smaller than the backbone stride {stride}; use a short side of "
                         f"at least {stride} (the protocol's is 480)")
    return (new_long, new_short) if height > width else (new_short, new_long)


def preprocess_frame(frame: np.ndarray, size: tuple[int, int]) -> Tensor:
    """Resize (bilinear) and normalize one frame.

    Args:
        frame: ``(H, W, 3)`` uint8 RGB frame.
        size: ``(H', W')``, from ``frame_size``.

    Returns:
        ``(3, H', W')`` float32: RGB / 255, then ImageNet mean/std normalization.
    """
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames must be (H, W, 3) RGB arrays, got shape {frame.shape}")
    image = rearrange(torch.from_numpy(np.array(frame, dtype=np.float32)) / 255.0, "h w c -> 1 c h w")
    if tuple(image.shape[-2:]) != tuple(size):
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((image - mean) / std)[0]


def label_to_onehot(labels: np.ndarray, grid: tuple[int, int], num_labels: int) -> Tensor:
    """Resize a label map to the feature grid (nearest, as PIL) and one-hot encode it.

    Args:
        labels: ``(H, W)`` uint8 label map; void (255) counts as background.
        grid: ``(h, w)`` feature grid.
        num_labels: ``L``, the number of channels (labels ``0..L-1``).

    Returns:
        ``(L, h, w)`` float32 one-hot.

    Raises:
        ValueError: A label ``>= num_labels`` (other than void).
    """
    labels = np.where(labels == _VOID_LABEL, 0, labels).astype(np.uint8)
    if int(labels.max(initial=0)) >= num_labels:
        raise ValueError(f"label map holds label {int(labels.max())}, but only {num_labels} labels were requested")
    small = np.asarray(Image.fromarray(labels).resize((grid[1], grid[0]), Image.NEAREST))
    onehot = F.one_hot(torch.from_numpy(small.astype(np.int64)), num_classes=num_labels).float()
    return rearrange(onehot, "h w l -> l h w")


def neighborhood_mask(h: int, w: int, radius: int) -> Tensor:
    """Which source cells count for which target cell: ``|i - i'| <= radius`` and ``|j - j'| <= radius``.

    Args:
        h: Grid height.
        w: Grid width.
        radius: Window radius in cells (> 0).

    Returns:
        ``(h*w, h*w)`` bool, rows the target cells and columns the source cells, both in ``(h w)`` order.
    """
    rows, cols = torch.arange(h), torch.arange(w)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= radius  # (h, h): |i - i'| <= r
    near_cols = (cols[:, None] - cols[None, :]).abs() <= radius  # (w, w): |j - j'| <= r
    near = near_rows[:, None, :, None] & near_cols[None, :, None, :]  # (i, j, i', j')
    return rearrange(near, "i j k l -> (i j) (k l)")


def propagate_labels(target: Tensor, context_features: Tensor, context_labels: Tensor,
                     settings: PropagationSettings) -> Tensor:
    """Propagate the context labels to a target frame (step 5 of the module docstring).

    Args:
        target: ``(C, h, w)`` target frame features.
        context_features: ``(T, C, h, w)`` features of the ``T`` context frames.
        context_labels: ``(T, L, h, w)`` their (soft) labels.
        settings: ``neighborhood``, ``topk`` and ``temperature`` are used.

    Returns:
        ``(L, h, w)`` soft label of the target frame; each cell's weights sum to 1.
    """
    if context_features.dim() != 4 or context_features.shape[1:] != target.shape:
        raise ValueError(f"context features {tuple(context_features.shape)} must be (T, C, h, w) with (C, h, w) = the "
                         f"target's {tuple(target.shape)}")
    count, _, h, w = context_features.shape
    if context_labels.dim() != 4 or context_labels.shape[0] != count or context_labels.shape[2:] != (h, w):
        raise ValueError(f"context labels {tuple(context_labels.shape)} must be (T, L, h, w) = ({count}, L, {h}, {w})")
    cells = h * w
    queries = F.normalize(rearrange(target, "c h w -> (h w) c").float(), dim=1)
    keys = F.normalize(rearrange(context_features, "t c h w -> (t h w) c").float(), dim=1)
    values = rearrange(context_labels, "t l h w -> (t h w) l").float()
    allowed = neighborhood_mask(h, w, settings.neighborhood).to(target.device) if settings.neighborhood > 0 else None
    k = min(settings.topk, count * cells)
    chunk = max(1, _CHUNK_ELEMENTS // (count * cells))
    out = []
    for start in range(0, cells, chunk):
        # (n, T*h*w) scores of this chunk's target cells; a fresh tensor, so the steps below work in place
        affinity = torch.einsum("nc,mc->nm", queries[start:start + chunk], keys).div_(settings.temperature)
        if allowed is not None:
            grouped = rearrange(affinity, "n (t m) -> n t m", t=count)  # a view
            grouped.masked_fill_(~allowed[start:start + chunk, None, :], float("-inf"))
        affinity.sub_(affinity.amax(dim=1, keepdim=True)).exp_()  # disallowed cells: exp(-inf) = 0
        kth = affinity.topk(k, dim=1).values[:, -1:]  # the k-th largest (topk sorts in descending order)
        affinity.masked_fill_(affinity < kth, 0.0)
        affinity.div_(affinity.sum(dim=1, keepdim=True))
        out.append(affinity @ values)
    return rearrange(torch.cat(out), "(h w) l -> l h w", h=h, w=w)


def norm_mask(mask: Tensor) -> Tensor:
    """Min-max normalize each channel whose maximum is > 0 (the reference's ``norm_mask``); others are kept.

    Args:
        mask: ``(L, H, W)``.

    Returns:
        ``(L, H, W)``; a constant positive channel becomes 1.
    """
    low = mask.amin(dim=(1, 2), keepdim=True)
    high = mask.amax(dim=(1, 2), keepdim=True)
    span = high - low
    normalized = torch.where(span > 0, (mask - low) / span.clamp_min(torch.finfo(mask.dtype).tiny),
                             torch.ones_like(mask))
    return torch.where(high > 0, normalized, mask)


def labels_to_mask(soft_labels: Tensor, stride: int, size: tuple[int, int]) -> np.ndarray:
    """Turn a soft label on the feature grid into a label map at the original frame size (step 6).

    Args:
        soft_labels: ``(L, h, w)``.
        stride: Upsampling factor (the backbone's stride).
        size: ``(H, W)`` original frame size.

    Returns:
        ``(H, W)`` uint8 label map.
    """
    _, h, w = soft_labels.shape
    upsampled = F.interpolate(soft_labels[None].float(), size=(h * stride, w * stride), mode="bilinear",
                              align_corners=False)[0]
    labels = _first_argmax(norm_mask(upsampled)).cpu().numpy()
    return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))


def _first_argmax(scores: Tensor) -> Tensor:
    """``scores.argmax(dim=0)`` as uint8 (the first channel wins ties), channel by channel: for the few channels of
    a label map this is ~10x faster on CPUs than the strided reduction over dim 0.

    Args:
        scores: ``(L, H, W)``, ``L <= 256``.

    Returns:
        ``(H, W)`` uint8.
    """
    best = scores[0]
    index = torch.zeros(scores.shape[1:], dtype=torch.uint8, device=scores.device)
    for channel in range(1, scores.shape[0]):
        better = scores[channel] > best
        best = torch.where(better, scores[channel], best)
        index.masked_fill_(better, channel)
    return index


def _level_index(backbone: nn.Module, level: int) -> int:
    """Position of feature level ``level`` among ``backbone.levels`` (the maps it returns)."""
    levels = [int(lv) for lv in backbone.levels]
    info = getattr(getattr(backbone, "model", None), "feature_info", None)
    count = len(info) if info is not None else len(levels)
    arch = getattr(backbone, "arch", type(backbone).__name__)
    wanted = normalize_levels([level], count, arch)[0]
    if wanted not in levels:
        raise ValueError(f"backbone {arch!r} returns feature levels {levels}, not level {level}; build it with "
                         f"DenseBackbone({arch!r}, levels=({level},))")
    return levels.index(wanted)


def _device(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.no_grad()
def _features(backbone: nn.Module, frame: np.ndarray, size: tuple[int, int], index: int,
              device: torch.device) -> Tensor:
    """``(C, h, w)`` float32 features of one frame."""
    image = preprocess_frame(frame, size).to(device)
    return backbone(image[None]).maps[index][0].float()


@torch.no_grad()
def _propagate_step(target: Tensor, context: list[tuple[Tensor, Tensor]], settings: PropagationSettings) -> Tensor:
    features = torch.stack([feats for feats, _ in context])
    labels = torch.stack([soft for _, soft in context])
    return propagate_labels(target, features, labels, settings)


def iter_propagation(backbone: nn.Module, frames: Iterable[np.ndarray], first_mask: np.ndarray,
                     settings: PropagationSettings | None = None) -> Iterator[PropagatedFrame]:
    """Propagate the first frame's labels through a sequence, one frame at a time.

    Frames are read from ``frames`` as they are needed (a generator that loads files keeps one frame in memory).

    Args:
        backbone: A ``DenseBackbone`` (or a module with ``levels``, ``strides`` and a ``forward`` returning
            ``DenseFeatures``) computing ``settings.level``.
        frames: ``(H, W, 3)`` uint8 RGB frames, all of one size, frame 0 first.
        first_mask: ``(H, W)`` uint8 label map of frame 0 (0 background, 1..K objects, 255 void).
        settings: Propagation settings (default: the DINO protocol's).

    Yields:
        One ``PropagatedFrame`` per frame, frame 0 first.

    Raises:
        ValueError: No frame, a frame or mask of another size, or a level the backbone does not compute.
    """
    settings = settings or PropagationSettings()
    index = _level_index(backbone, settings.level)
    stride = int(backbone.strides[index])
    device = _device(backbone)
    was_training = backbone.training
    backbone.eval()
    try:
        stream = iter(frames)
        first = next(stream, None)
        if first is None:
            raise ValueError("propagation needs at least one frame")
        height, width = first.shape[:2]
        if first_mask.shape != (height, width):
            raise ValueError(f"first mask is {first_mask.shape[1]}x{first_mask.shape[0]} but the first frame is "
                             f"{width}x{height}; they must have the same size")
        size = frame_size(height, width, settings.short_side, stride)
        first_features = _features(backbone, first, size, index, device)
        labels = np.where(first_mask == _VOID_LABEL, 0, first_mask)
        num_labels = int(labels.max(initial=0)) + 1
        first_labels = label_to_onehot(first_mask, tuple(first_features.shape[-2:]), num_labels).to(device)
        logger.debug("propagation: %dx%d frames -> %dx%d, grid %dx%d, %d labels", width, height, size[1], size[0],
                     first_features.shape[-1], first_features.shape[-2], num_labels)
        yield PropagatedFrame(mask=first_mask.astype(np.uint8, copy=True), soft_labels=first_labels, context_frames=0)
        queue: deque[tuple[Tensor, Tensor]] = deque(maxlen=settings.n_last_frames)
        for number, frame in enumerate(stream, start=1):
            if frame.shape[:2] != (height, width):
                raise ValueError(f"frame {number} is {frame.shape[1]}x{frame.shape[0]}, frame 0 {width}x{height}; all "
                                 f"frames of a sequence must have one size")
            features = _features(backbone, frame, size, index, device)
            context = [(first_features, first_labels), *queue]
            soft = _propagate_step(features, context, settings)
            queue.append((features, soft))
            yield PropagatedFrame(mask=labels_to_mask(soft, stride, (height, width)), soft_labels=soft,
                                  context_frames=len(context))
    finally:
        backbone.train(was_training)


def propagate_sequence(backbone: nn.Module, frames: Iterable[np.ndarray], first_mask: np.ndarray,
                       settings: PropagationSettings | None = None) -> list[np.ndarray]:
    """Propagate the first frame's labels through a whole sequence.

    Args:
        backbone: See ``iter_propagation``.
        frames: ``(H, W, 3)`` uint8 RGB frames, frame 0 first.
        first_mask: ``(H, W)`` uint8 label map of frame 0.
        settings: Propagation settings (default: the DINO protocol's).

    Returns:
        One ``(H, W)`` uint8 label map per frame; frame 0 is ``first_mask``.
    """
    return [frame.mask for frame in iter_propagation(backbone, frames, first_mask, settings)]
