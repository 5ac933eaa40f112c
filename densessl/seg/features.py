"""Frozen dense features for segmentation evaluation: eval transform, loader, and ``extract_features``.

Eval transform (``SegEvalTransform``), selected by ``FeatureConfig.resize_mode``:
    * ``"shorter_crop"`` (default): resize so the shorter side is ``input_size`` (aspect ratio kept), then
      center-crop ``input_size x input_size``. Nothing is distorted; the borders of the longer side are not evaluated.
    * ``"square"``: resize straight to ``input_size x input_size`` (aspect ratio changes; every pixel is evaluated).
The image is resized bilinearly (PIL, antialiased when shrinking) and normalized with the ImageNet mean/std; the mask
gets the identical geometry with NEAREST resampling, so ``ignore_index`` pixels stay ignored. Metrics are therefore
computed at the eval resolution ``input_size x input_size``, not at the original image resolution.

Levels. ``FeatureConfig.levels`` uses ``DenseBackbone``'s meaning (indices into the timm model's ``feature_info``,
negative from the end); the backbone must have been built with (at least) those levels. With several levels the maps
are resized bilinearly to the last selected level's ``(h, w)`` and concatenated along channels ("resize_concat", as
in the VICRegL ConvNeXt segmentation protocol).
"""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass
from typing import Annotated, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from densessl.data.images import to_rgb
from densessl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from densessl.schema import Range, check_fields
from densessl.seg.dataset import SegSample

__all__ = [
    "RESIZE_MODES",
    "FeatureConfig",
    "SegEvalTransform",
    "SegBatch",
    "collate_seg",
    "make_eval_loader",
    "resolve_levels",
    "resize_concat",
    "FeatureBank",
    "iter_features",
    "extract_features",
    "backbone_device",
]

logger = logging.getLogger("densessl")

ResizeMode = Literal["shorter_crop", "square"]
RESIZE_MODES: tuple[str, ...] = typing.get_args(ResizeMode)
_FLOAT16_MAX = 65504.0


@dataclass
class FeatureConfig:
    """How frozen features are extracted (shared by the linear probe and kNN configs).

    Attributes:
        input_size: Side ``S`` of the square eval crop; masks and metrics live at ``S x S``.
        resize_mode: ``"shorter_crop"`` (shorter side -> ``S``, center crop) or ``"square"`` (plain resize).
        levels: Backbone feature levels (``DenseBackbone`` indices, negative from the end), resize-concatenated.
        batch_size: Images per forward pass.
        num_workers: DataLoader workers for decoding and transforming images.
        device: Where the backbone runs; ``None`` = the device of the backbone's parameters (CPU if it has none).
        progress: Show tqdm progress bars.
    """

    input_size: Annotated[int, Range(ge=8)] = 128
    resize_mode: ResizeMode = "shorter_crop"
    levels: tuple[int, ...] = (-1,)
    batch_size: Annotated[int, Range(ge=1)] = 32
    num_workers: Annotated[int, Range(ge=0)] = 0
    device: str | None = None
    progress: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first impossible value."""
        check_fields(self)
        if not self.levels:
            raise ValueError("levels: must name at least one backbone level, got ()")


class SegEvalTransform:
    """``SegSample`` -> normalized ``(3, S, S)`` image and ``(S, S)`` uint8 mask (see the module docstring).

    Args:
        input_size: Output side ``S``.
        resize_mode: ``"shorter_crop"`` or ``"square"``.
        mean: Normalization mean (RGB, in ``[0, 1]`` units).
        std: Normalization std.
    """

    def __init__(
        self,
        input_size: int,
        resize_mode: str = "shorter_crop",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        self.input_size = int(input_size)
        self.resize_mode = resize_mode
        self.mean = tuple(mean)
        self.std = tuple(std)

    def geometry(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """Resize target and crop box for an image of ``(width, height)``.

        Returns:
            ``((resized_w, resized_h), (left, top, right, bottom))`` of the crop in the resized image.
        """
        size = self.input_size
        if self.resize_mode == "square":
            return (size, size), (0, 0, size, size)
        scale = size / min(width, height)
        new_w = size if width <= height else max(size, int(round(width * scale)))
        new_h = size if height < width else max(size, int(round(height * scale)))
        left = (new_w - size) // 2
        top = (new_h - size) // 2
        return (new_w, new_h), (left, top, left + size, top + size)

    def __call__(self, sample: SegSample) -> tuple[Tensor, Tensor]:
        """Transform one sample.

        Returns:
            ``image (3, S, S)`` float32 normalized and ``mask (S, S)`` uint8.
        """
        image = to_rgb(sample.image)
        mask = np.ascontiguousarray(sample.mask)
        if mask.ndim != 2 or mask.shape != (image.height, image.width):
            raise ValueError(
                f"sample {sample.name!r}: mask shape {mask.shape} does not match image (H, W) = "
                f"{(image.height, image.width)}"
            )
        if mask.dtype != np.uint8:
            if mask.size and (mask.min() < 0 or mask.max() > 255):
                raise ValueError(f"sample {sample.name!r}: mask values must fit uint8, got range "
                                 f"[{mask.min()}, {mask.max()}]")
            mask = mask.astype(np.uint8)
        resized, box = self.geometry(image.width, image.height)
        image = image.resize(resized, resample=Image.Resampling.BILINEAR).crop(box)
        mask_image = Image.fromarray(mask).resize(resized, resample=Image.Resampling.NEAREST).crop(box)
        tensor = TF.normalize(TF.pil_to_tensor(image).float().div_(255.0), self.mean, self.std)
        return tensor, torch.from_numpy(np.array(mask_image, dtype=np.uint8))


class _TransformedDataset(torch.utils.data.Dataset):
    """Applies a ``SegEvalTransform`` inside the dataset so DataLoader workers do the work."""

    def __init__(self, dataset: torch.utils.data.Dataset, transform: SegEvalTransform) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        sample = self.dataset[index]
        image, mask = self.transform(sample)
        return image, mask, str(sample.name)


@dataclass
class SegBatch:
    """A batch of transformed segmentation samples.

    Attributes:
        images: ``(B, 3, S, S)`` normalized images.
        masks: ``(B, S, S)`` uint8 class indices (or ``ignore_index``).
        names: ``B`` sample names.
    """

    images: Tensor
    masks: Tensor
    names: list[str]


def collate_seg(items: list[tuple[Tensor, Tensor, str]]) -> SegBatch:
    """Stack transformed ``(image, mask, name)`` triples into a ``SegBatch``."""
    images, masks, names = zip(*items)
    return SegBatch(images=torch.stack(images), masks=torch.stack(masks), names=list(names))


def make_eval_loader(
    dataset: torch.utils.data.Dataset, cfg: FeatureConfig, transform: SegEvalTransform | None = None
) -> torch.utils.data.DataLoader:
    """A deterministic (unshuffled) loader of ``SegBatch`` for a ``SegSample`` dataset.

    Args:
        dataset: Yields ``SegSample``.
        cfg: Supplies ``input_size``, ``resize_mode``, ``batch_size``, ``num_workers``.
        transform: Overrides the transform built from ``cfg``.
    """
    transform = transform or SegEvalTransform(cfg.input_size, cfg.resize_mode)
    return torch.utils.data.DataLoader(
        _TransformedDataset(dataset, transform),
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=cfg.num_workers,
        collate_fn=collate_seg,
        generator=torch.Generator().manual_seed(0),  # worker seeds; keeps the global RNG untouched
    )


def resolve_levels(backbone: nn.Module, levels: Sequence[int]) -> list[int]:
    """Positions in ``backbone(...).maps`` of the requested feature levels.

    A ``DenseBackbone`` exposes ``levels`` (non-negative ``feature_info`` indices of its maps) and its timm model's
    ``feature_info``; other modules may expose ``levels`` and ``num_levels``, or nothing, in which case ``levels``
    index the returned maps directly.

    Raises:
        ValueError: A requested level is not among the maps the backbone returns.
    """
    count = len(backbone.channels)
    have = [int(v) for v in getattr(backbone, "levels", range(count))]
    total = getattr(backbone, "num_levels", None)
    model = getattr(backbone, "model", None)
    if total is None and model is not None and hasattr(model, "feature_info"):
        total = len(model.feature_info)
    total = int(total) if total is not None else max(have) + 1
    positions = []
    for level in levels:
        normalized = level % total if -total <= level < total else None
        if normalized is None or normalized not in have:
            raise ValueError(
                f"level {level} is not returned by the backbone (it returns levels {have} of {total}); "
                f"build it with DenseBackbone(arch, levels={list(levels)})"
            )
        positions.append(have.index(normalized))
    return positions


def resize_concat(maps: Sequence[Tensor]) -> Tensor:
    """Resize maps bilinearly to the last map's ``(h, w)`` and concatenate along channels.

    Args:
        maps: ``L`` tensors ``(B, C_l, h_l, w_l)``.

    Returns:
        ``(B, sum C_l, h_L, w_L)``; the single map itself when ``L == 1``.
    """
    if len(maps) == 1:
        return maps[0]
    size = maps[-1].shape[-2:]
    resized = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
               for m in maps]
    return torch.cat(resized, dim=1)


def backbone_device(backbone: nn.Module, device: str | None) -> torch.device:
    """``device`` if given, else the device of the backbone's first parameter or buffer, else CPU."""
    if device is not None:
        return torch.device(device)
    for tensor in (*backbone.parameters(), *backbone.buffers()):
        return tensor.device
    return torch.device("cpu")


@dataclass
class FeatureBank:
    """Cached frozen features of a whole dataset.

    Attributes:
        features: ``(N, C, h, w)`` float16 on CPU.
        masks: ``(N, S, S)`` uint8 masks at the eval resolution.
        names: ``N`` sample names.
    """

    features: Tensor
    masks: Tensor
    names: list[str]

    @property
    def nbytes(self) -> int:
        """Memory held by ``features`` and ``masks``."""
        return self.features.numel() * self.features.element_size() + self.masks.numel()


@torch.no_grad()
def iter_features(
    backbone: nn.Module,
    dataset: torch.utils.data.Dataset,
    cfg: FeatureConfig,
    description: str = "features",
) -> Iterator[tuple[Tensor, SegBatch]]:
    """Yield frozen features batch by batch (backbone in ``eval()`` mode, no gradients).

    The backbone's train/eval mode is restored when the iterator finishes.

    Args:
        backbone: Returns ``DenseFeatures``; exposes ``channels`` (and ``levels`` for ``DenseBackbone``).
        dataset: Yields ``SegSample``.
        cfg: Extraction settings.
        description: Progress-bar label.

    Yields:
        ``(features (B, C, h, w) float32 on the backbone's device, batch)`` with the batch's masks on CPU.
    """
    cfg.validate()
    positions = resolve_levels(backbone, cfg.levels)
    device = backbone_device(backbone, cfg.device)
    was_training = backbone.training
    backbone.eval()
    try:
        loader = make_eval_loader(dataset, cfg)
        for batch in tqdm(loader, desc=description, disable=not cfg.progress, leave=False):
            out = backbone(batch.images.to(device, non_blocking=True))
            yield resize_concat([out.maps[p] for p in positions]).float(), batch
    finally:
        backbone.train(was_training)


def extract_features(backbone: nn.Module, dataset: torch.utils.data.Dataset, cfg: FeatureConfig) -> FeatureBank:
    """Frozen features of every sample, cached on CPU in float16.

    Args:
        backbone: Returns ``DenseFeatures`` (see ``iter_features``).
        dataset: Yields ``SegSample``.
        cfg: Extraction settings (``input_size``, ``resize_mode``, ``levels``, ``batch_size``, ``num_workers``).

    Returns:
        ``FeatureBank`` with ``features (N, C, h, w)`` float16 and ``masks (N, S, S)`` uint8.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("cannot extract features from an empty dataset")
    features, masks, names = [], [], []
    clamped = False
    for feats, batch in iter_features(backbone, dataset, cfg):
        if bool((feats.abs() > _FLOAT16_MAX).any()):
            clamped = True
            feats = feats.clamp(-_FLOAT16_MAX, _FLOAT16_MAX)
        features.append(feats.to("cpu", torch.float16))
        masks.append(batch.masks)
        names.extend(batch.names)
    if clamped:
        logger.warning("features exceeded the float16 range and were clamped to +-%g", _FLOAT16_MAX)
    return FeatureBank(features=torch.cat(features), masks=torch.cat(masks), names=names)
