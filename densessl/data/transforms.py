"""Multi-crop augmentation that remembers where every crop came from.

``MultiCrop`` turns one image into ``n_global`` large and ``n_local`` small views with the VICRegL recipe
(random resized crop, horizontal flip, colour jitter, grayscale, Gaussian blur, solarization) and returns, next to
the pixels, each crop's box in the original image, its flip flag and the original image size. ``densessl.coords``
turns those into feature-cell grids.

Reference: Bardes, Ponce, LeCun, "VICRegL: Self-Supervised Learning of Local Visual Features", NeurIPS 2022;
facebookresearch/VICRegL ``transforms.py`` (``MultiCropTrainDataTransform``, ``get_color_distortion``).

Differences from the reference transform:
    * Normalization std is ImageNet's ``(0.229, 0.224, 0.225)``; the official code has ``0.228`` for red (a typo).
      Set ``MultiCropConfig.std`` to reproduce it.
    * Randomness comes from an explicit ``torch.Generator`` per call instead of the global RNGs, so a sample's views
      depend only on (seed, epoch, index): data order and augmentations are reproducible across workers and resumes.
    * Boxes and flips are always returned; whether a loss honours the flip is the loss's choice (the official default
      ``--no-flip-grid 1`` ignores it, see ``densessl.objectives.vicregl``).

Every random choice of one image's views is drawn first (``MultiCrop.plan``: windows, flips and photometric draws,
from the image size alone, in the order the reference draws them) and then applied (``MultiCrop.apply``). That split
serves two options of the pretraining data (``data.*`` in ``densessl.train.config``):

    * ``augment_on="device"``: the loader keeps only the geometric half (crop, resample, flip) and returns **uint8**
      crops; ``densessl.data.device_augment`` applies the photometric half batched on the training device. The plan
      still draws (and drops) the photometric choices, so the boxes, flips and pre-photometric pixels of a sample are
      the same under both settings.
    * ``fast_decode``: a JPEG is decoded at 1/2, 1/4 or 1/8 of its size (``MultiCrop.decode_scale``, PIL's
      ``Image.draft``) when every crop window stays at least as large as its output crop; boxes stay normalized to
      the original image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Literal, NamedTuple

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor
from torchvision.transforms import InterpolationMode

from densessl.coords import crop_to_box
from densessl.data.images import to_rgb
from densessl.schema import Range, check_fields

__all__ = ["AugmentOn", "CropPlan", "CropViews", "MultiCrop", "MultiCropConfig", "sample_crop"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AugmentOn = Literal["loader", "device"]
"""Where the photometric half of multi-crop runs: in the data loader (PIL, the reference) or on the training device."""


@dataclass
class MultiCropConfig:
    """Multi-crop recipe. Defaults are the official VICRegL ConvNeXt recipe (2 x 224 + 6 x 96).

    Per crop-size group, even-indexed crops get ``blur_p[0]`` / ``solarize_p[0]`` and odd-indexed crops get
    ``blur_p[1]`` / ``solarize_p[1]`` (the BYOL asymmetry the official code uses).
    """

    n_global: Annotated[int, Range(ge=1)] = 2  # >= 1: the losses pair every view with a global view
    global_size: Annotated[int, Range(ge=8)] = 224
    global_scale: Annotated[tuple[float, float], Range(gt=0, le=1, ordered=True)] = (0.4, 1.0)
    n_local: Annotated[int, Range(ge=0)] = 6
    local_size: Annotated[int, Range(ge=8)] = 96
    local_scale: Annotated[tuple[float, float], Range(gt=0, le=1, ordered=True)] = (0.08, 0.4)
    ratio: Annotated[tuple[float, float], Range(gt=0, ordered=True)] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: Annotated[float, Range(ge=0, le=1)] = 0.5
    jitter_p: Annotated[float, Range(ge=0, le=1)] = 0.8
    brightness: Annotated[float, Range(ge=0)] = 0.4
    contrast: Annotated[float, Range(ge=0)] = 0.4
    saturation: Annotated[float, Range(ge=0)] = 0.2
    hue: Annotated[float, Range(ge=0, le=0.5)] = 0.1
    grayscale_p: Annotated[float, Range(ge=0, le=1)] = 0.2
    blur_p: Annotated[tuple[float, float], Range(ge=0, le=1)] = (1.0, 0.1)
    blur_sigma: Annotated[tuple[float, float], Range(gt=0, ordered=True)] = (0.1, 2.0)
    solarize_p: Annotated[tuple[float, float], Range(ge=0, le=1)] = (0.0, 0.2)
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"  # the keys of _INTERPOLATIONS
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: Annotated[tuple[float, float, float], Range(gt=0)] = IMAGENET_STD

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first impossible value."""
        check_fields(self)

    @property
    def sizes(self) -> list[int]:
        """Crop size of every view, global views first."""
        return [self.global_size] * self.n_global + [self.local_size] * self.n_local


def geometry_only_config(global_size: int, global_scale: tuple[float, float] = (0.4, 1.0)) -> MultiCropConfig:
    """Two global views of ``global_size`` px with the geometry of multi-crop only (random resized crops and flips, no
    colour jitter, grayscale, blur or solarization, no local views): the views of the match diagnostics and figures,
    where the photometric half would only add noise to a measure of where features match."""
    return MultiCropConfig(n_global=2, global_size=global_size, global_scale=global_scale, n_local=0, jitter_p=0.0,
                           grayscale_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))


_INTERPOLATIONS = {
    "bicubic": (InterpolationMode.BICUBIC, Image.Resampling.BICUBIC),
    "bilinear": (InterpolationMode.BILINEAR, Image.Resampling.BILINEAR),
    "nearest": (InterpolationMode.NEAREST, Image.Resampling.NEAREST),
}


@dataclass
class CropViews:
    """The views of one image.

    Attributes:
        crops: ``V`` tensors ``(3, S_v, S_v)``, normalized float; global views first. With
            ``MultiCrop(augment_on="device")``: uint8 in ``[0, 255]``, geometry only (no photometric change, not
            normalized).
        boxes: ``(V, 4)`` normalized ``(x1, y1, x2, y2)`` of each crop in the original image.
        flipped: ``(V,)`` bool, whether each crop was mirrored horizontally after cropping.
        image_size: ``(2,)`` original ``(W, H)`` in pixels.
        n_global: Number of global views (the first ``n_global`` crops).
    """

    crops: list[Tensor]
    boxes: Tensor
    flipped: Tensor
    image_size: Tensor
    n_global: int = 2
    extras: dict[str, Tensor] = field(default_factory=dict)


class _Photometric(NamedTuple):
    """One view's photometric draws, in the reference order: jitter (order + factors), grayscale, blur, solarize."""

    jitter: tuple[list[int], list[float]] | None  # (order of the 4 ops, [brightness, contrast, saturation, hue])
    grayscale: bool
    blur_sigma: float | None
    solarize: bool


@dataclass
class CropPlan:
    """Every random choice for the views of one image, drawn before any pixel is read (``MultiCrop.plan``).

    Attributes:
        width: Original image width ``W`` in pixels.
        height: Original image height ``H``.
        windows: Per view ``(top, left, crop_height, crop_width)`` in original pixels.
        flips: Per view, whether the crop is mirrored.
        photometric: Per view, the photometric draws (applied only with ``augment_on="loader"``).
    """

    width: int
    height: int
    windows: list[tuple[int, int, int, int]]
    flips: list[bool]
    photometric: list[_Photometric]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _bernoulli(generator: torch.Generator, p: float) -> bool:
    if p <= 0.0:
        return False
    if p >= 1.0:
        return True
    return torch.rand((), generator=generator).item() < p


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Integer in ``[low, high)``."""
    return int(torch.randint(low, high, (), generator=generator).item())


def sample_crop(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[int, int, int, int]:
    """Sample a random-resized-crop window, as torchvision's ``RandomResizedCrop.get_params`` does.

    Ten tries at an area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``; then a centre crop at the
    closest allowed ratio. Works for images smaller than the output size (the crop is upsampled afterwards).

    Args:
        height: Image height ``H``.
        width: Image width ``W``.
        scale: Range of the crop area as a fraction of ``H * W``.
        ratio: Range of the crop aspect ratio ``w / h``.
        generator: Source of randomness.

    Returns:
        ``(top, left, crop_height, crop_width)`` in pixels.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(generator, scale[0], scale[1])
        aspect = math.exp(_uniform(generator, log_ratio[0], log_ratio[1]))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = _randint(generator, 0, height - crop_h + 1)
            left = _randint(generator, 0, width - crop_w + 1)
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_w = width
        crop_h = max(1, min(height, int(round(crop_w / min(ratio)))))
    elif in_ratio > max(ratio):
        crop_h = height
        crop_w = max(1, min(width, int(round(crop_h * max(ratio)))))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def _hue_lut(hue_factor: float) -> list[int]:
    """The uint8 hue-channel shift of torchvision's PIL ``adjust_hue`` as a 256-entry lookup table (wraps around)."""
    shift = int(np.int32(hue_factor * 255).astype(np.uint8))
    return [(value + shift) % 256 for value in range(256)]


def adjust_hue_pil(image: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision's ``adjust_hue`` for RGB PIL images, pixel-identical, with the shift as one ``point`` lookup.

    torchvision converts to HSV, shifts H through a numpy round trip and merges back; ``Image.point`` applies the same
    modular uint8 shift in C, which saves the array copies.
    """
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5]")
    h, s, v = image.convert("HSV").split()
    return Image.merge("HSV", (h.point(_hue_lut(hue_factor)), s, v)).convert("RGB")


def grayscale_pil(image: Image.Image) -> Image.Image:
    """torchvision's ``rgb_to_grayscale(num_output_channels=3)`` for PIL images, pixel-identical (L -> RGB in C)."""
    return image.convert("L").convert("RGB")


class MultiCrop:
    """Image -> ``CropViews`` with the VICRegL multi-crop recipe and exact crop geometry.

    Accepts a ``PIL.Image`` in any mode (converted to RGB) or a float tensor ``(C, H, W)`` in ``[0, 1]``; tensors skip
    the blur and solarization (PIL-only operations) and are meant for geometry tests and already-decoded data.

    Args:
        config: The recipe.
        augment_on: ``"loader"`` (default, the reference): full recipe, normalized float crops. ``"device"``: geometry
            only (crop, resample, flip), uint8 crops; ``densessl.data.device_augment.DeviceAugment`` does the rest on
            the batch. The generator is consumed identically, so boxes and flips do not depend on this setting.

    Example:
        >>> views = MultiCrop(MultiCropConfig(n_local=2))(image, torch.Generator().manual_seed(0))
    """

    def __init__(self, config: MultiCropConfig | None = None, *, augment_on: AugmentOn = "loader") -> None:
        self.config = config or MultiCropConfig()
        self.config.validate()
        if augment_on not in ("loader", "device"):
            raise ValueError(f"augment_on must be 'loader' or 'device', got {augment_on!r}")
        self.augment_on = augment_on
        self._tv_interp, self._pil_interp = _INTERPOLATIONS[self.config.interpolation]
        # uint8 -> normalized float in one pass: (x / 255 - mean) / std = x * scale + shift, per channel.
        std = torch.tensor(self.config.std, dtype=torch.float32)
        mean = torch.tensor(self.config.mean, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std)).view(3, 1, 1)
        self._shift = (-mean / std).view(3, 1, 1)

    def __call__(self, image: Image.Image | Tensor, generator: torch.Generator | None = None) -> CropViews:
        """Make all views of one image.

        Args:
            image: The original image.
            generator: Source of randomness; a fresh unseeded one when ``None``.

        Returns:
            The views with their boxes, flips and the original size.
        """
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        image = self._check_image(image)
        height, width = _image_hw(image)
        return self._apply(image, self.plan(width, height, generator), 1)

    def plan(self, width: int, height: int, generator: torch.Generator) -> CropPlan:
        """Draw every random choice of one image's views, from its size alone.

        The draws are made in the reference order (per view: window, flip, then the photometric draws), so
        ``apply(image, plan(W, H, g))`` equals ``multicrop(image, g)``.
        """
        if height < 1 or width < 1:
            raise ValueError(f"image has zero size {width}x{height}")
        cfg = self.config
        windows, flips, photometric = [], [], []
        for count, scale in ((cfg.n_global, cfg.global_scale), (cfg.n_local, cfg.local_scale)):
            for index in range(count):
                windows.append(sample_crop(height, width, scale, cfg.ratio, generator))
                flips.append(_bernoulli(generator, cfg.flip_p))
                photometric.append(self._draw_photometric(index % 2, generator))
        return CropPlan(width, height, windows, flips, photometric)

    def decode_scale(self, plan: CropPlan) -> int:
        """The largest JPEG decode reduction (1, 2, 4 or 8) that keeps every crop window >= its output crop.

        A window of ``h x w`` source pixels resampled to ``S x S`` is read from the image decoded at ``1/r`` of its
        size only when ``min(h, w) >= r * S``: the crop is still downsampled (never upsampled) from the reduced image.
        """
        ratio = min(min(h, w) / size for (_, _, h, w), size in zip(plan.windows, self.config.sizes))
        return next((r for r in (8, 4, 2) if ratio >= r), 1)

    def apply(self, image: Image.Image | Tensor, plan: CropPlan, scale: int = 1) -> CropViews:
        """Cut and augment the views of ``plan`` from ``image``.

        Args:
            image: The image the plan was drawn for, or (PIL only) that image decoded at ``1/scale`` of its size:
                pixel ``i`` of it covers original pixels ``[i * scale, (i + 1) * scale)``, as JPEG reduced decoding
                (``Image.draft``) makes it.
            plan: From ``plan(W, H, generator)`` with the original size.
            scale: 1, or the decode reduction of ``image`` (``decode_scale``).

        Returns:
            The views; boxes are normalized to the original image whatever ``scale`` is.
        """
        image = self._check_image(image)
        height, width = _image_hw(image)
        expected = (-(-plan.height // scale), -(-plan.width // scale))
        if scale < 1 or (scale > 1 and not isinstance(image, Image.Image)) or (height, width) != expected:
            raise ValueError(f"image of {width}x{height} does not match a plan for {plan.width}x{plan.height} "
                             f"decoded at 1/{scale}")
        return self._apply(image, plan, scale)

    def _check_image(self, image: Image.Image | Tensor) -> Image.Image | Tensor:
        if isinstance(image, Image.Image):
            return to_rgb(image)
        if isinstance(image, Tensor):
            if image.dim() != 3 or not image.is_floating_point():
                raise ValueError(f"tensor images must be float (C, H, W), got {image.dtype} {tuple(image.shape)}")
            return image
        raise TypeError(f"MultiCrop expects a PIL image or a tensor, got {type(image).__name__}")

    def _apply(self, image: Image.Image | Tensor, plan: CropPlan, scale: int) -> CropViews:
        crops, boxes = [], []
        for (top, left, crop_h, crop_w), flip, draws, size in zip(
                plan.windows, plan.flips, plan.photometric, self.config.sizes):
            crop = self._crop(image, top, left, crop_h, crop_w, size, flip, scale)
            if self.augment_on == "device":
                crops.append(self._to_uint8(crop))
            else:
                crops.append(self._to_tensor(self._photometric(crop, draws)))
            boxes.append(crop_to_box(top, left, crop_h, crop_w, plan.height, plan.width))
        return CropViews(
            crops=crops,
            boxes=torch.stack(boxes),
            flipped=torch.tensor(plan.flips, dtype=torch.bool),
            image_size=torch.tensor([plan.width, plan.height], dtype=torch.float32),
            n_global=self.config.n_global,
        )

    def _crop(self, image: Image.Image | Tensor, top: int, left: int, crop_h: int, crop_w: int, size: int, flip: bool,
              scale: int = 1):
        if isinstance(image, Image.Image):
            # One PIL call crops and resamples, filtering over the whole source window (antialiased downscaling).
            box = (left, top, left + crop_w, top + crop_h)
            if scale != 1:  # the same window in the reduced image (pixel edges scale exactly by 1/scale)
                box = tuple(value / scale for value in box)
            crop = image.resize((size, size), resample=self._pil_interp, box=box)
            return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else crop
        crop = TF.resized_crop(image, top, left, crop_h, crop_w, [size, size], self._tv_interp, antialias=True)
        return TF.hflip(crop) if flip else crop

    def _draw_photometric(self, parity: int, generator: torch.Generator) -> _Photometric:
        """The reference's photometric draws for one view (made whether or not they are applied here)."""
        cfg = self.config
        jitter = None
        if _bernoulli(generator, cfg.jitter_p):
            # torchvision ColorJitter: a random order of the four ops, factors drawn uniformly.
            order = torch.randperm(4, generator=generator).tolist()
            factors = [
                _uniform(generator, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness),
                _uniform(generator, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
                _uniform(generator, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation),
                _uniform(generator, -cfg.hue, cfg.hue),
            ]
            jitter = (order, factors)
        grayscale = _bernoulli(generator, cfg.grayscale_p)
        sigma = _uniform(generator, *cfg.blur_sigma) if _bernoulli(generator, cfg.blur_p[parity]) else None
        solarize = _bernoulli(generator, cfg.solarize_p[parity])
        return _Photometric(jitter, grayscale, sigma, solarize)

    def _photometric(self, crop: Image.Image | Tensor, draws: _Photometric):
        if draws.jitter is not None:
            crop = self._color_jitter(crop, *draws.jitter)
        if draws.grayscale:
            if isinstance(crop, Image.Image):
                crop = grayscale_pil(crop)
            else:
                crop = TF.rgb_to_grayscale(crop, num_output_channels=3)
        if draws.blur_sigma is not None and isinstance(crop, Image.Image):
            crop = crop.filter(ImageFilter.GaussianBlur(radius=draws.blur_sigma))
        if draws.solarize and isinstance(crop, Image.Image):
            crop = ImageOps.solarize(crop, threshold=128)
        return crop

    def _color_jitter(self, crop: Image.Image | Tensor, order: list[int], factors: list[float]):
        """torchvision ``ColorJitter`` semantics: the four adjustments in a random order, factors drawn uniformly."""
        cfg = self.config
        for op in order:
            if op == 0 and cfg.brightness > 0:
                crop = TF.adjust_brightness(crop, factors[0])
            elif op == 1 and cfg.contrast > 0:
                crop = TF.adjust_contrast(crop, factors[1])
            elif op == 2 and cfg.saturation > 0:
                crop = TF.adjust_saturation(crop, factors[2])
            elif op == 3 and cfg.hue > 0:
                if isinstance(crop, Image.Image):
                    crop = adjust_hue_pil(crop, factors[3])
                else:
                    crop = TF.adjust_hue(crop, factors[3])
        return crop

    def _to_tensor(self, crop: Image.Image | Tensor) -> Tensor:
        """Normalized float ``(3, S, S)``: ``(x / 255 - mean) / std`` for uint8 PIL crops (one fused pass)."""
        if isinstance(crop, Image.Image):
            return torch.addcmul(self._shift, TF.pil_to_tensor(crop).float(), self._scale)
        return TF.normalize(crop, self.config.mean, self.config.std)

    @staticmethod
    def _to_uint8(crop: Image.Image | Tensor) -> Tensor:
        """uint8 ``(3, S, S)``, unnormalized (``augment_on="device"``)."""
        if isinstance(crop, Image.Image):
            return TF.pil_to_tensor(crop)
        return crop.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def _image_hw(image: Image.Image | Tensor) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.height, image.width
    return int(image.shape[-2]), int(image.shape[-1])
