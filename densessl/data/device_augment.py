"""The photometric half of VICRegL multi-crop, batched on the training device (``data.augment_on=device``).

With eight crops per image the PIL colour operations of ``MultiCrop`` make the CPU input pipeline the bottleneck of a
GPU run. With ``MultiCrop(augment_on="device")`` the loader only decodes, crops, resamples and flips, and returns
uint8 crops; ``DeviceAugment`` then applies, per view and as tensor ops on the whole batch:

    colour jitter (p = ``jitter_p``; brightness, contrast, saturation and hue in a random order per view, as
    torchvision's ``ColorJitter``) -> grayscale (p = ``grayscale_p``) -> Gaussian blur (p = ``blur_p[parity]``,
    sigma uniform in ``blur_sigma``) -> solarization (p = ``solarize_p[parity]``) -> float, ``(x - mean) / std``.

``parity`` is a view's index within its size group (global views, local views) modulo 2, as in ``MultiCrop``: with
the official values the first global view is always blurred and never solarized, the second is blurred with p 0.1
and solarized with p 0.2, and the local views alternate the same way. Factor ranges are ``MultiCrop``'s: brightness,
contrast and saturation uniform in ``[max(0, 1 - x), 1 + x]``, hue shift uniform in ``[-hue, hue]``.

The parameters are drawn on the CPU from an explicit ``torch.Generator`` (a few numbers per view: the same on every
device, and the device never waits for them); the recipe seeds one per (seed, epoch, step, rank, micro-batch) with
``augment_seed``, so runs are reproducible and resume exactly.

Differences from the loader path (the same distributions, not the same pixels):
    * The loader draws its photometric parameters from the per-sample generator; here they come from the per-step
      generator, so a given sample gets other (identically distributed) parameters. Boxes, flips and the
      pre-photometric crops are identical.
    * Arithmetic is float32 throughout; PIL rounds to uint8 after every operation.
    * Blur is Pillow's own algorithm (three extended box blurs along x, then three along y, of the radius Pillow
      derives from sigma; edges repeated at every pass), in float. Hue goes through RGB -> HSV -> RGB
      in float as torchvision's tensor kernel does; PIL quantizes hue to 256 levels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from densessl.data.collate import Views
from densessl.data.transforms import MultiCropConfig
from densessl.dist import derive_seed

__all__ = ["DeviceAugment", "PhotometricParams", "augment_seed", "box_blur_radius", "box_kernel", "gaussian_blur",
           "sample_params", "view_parity"]

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_SOLARIZE_THRESHOLD = 128 / 255  # PIL ImageOps.solarize(threshold=128) inverts values >= 128
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)  # op ids in PhotometricParams.order (torchvision's order ids)
_GRAYSCALE, _BLUR, _SOLARIZE = 4, 5, 6


@dataclass
class PhotometricParams:
    """Photometric choices for a batch of multi-crop views; every field is a CPU tensor of shape ``(B, V)``.

    Attributes:
        jitter: Whether colour jitter is applied.
        order: ``(B, V, 4)`` long, a permutation of the jitter ops (0 brightness, 1 contrast, 2 saturation, 3 hue);
            position ``k`` applies op ``order[..., k]``.
        brightness: Brightness factor.
        contrast: Contrast factor.
        saturation: Saturation factor.
        hue: Hue shift, in turns.
        grayscale: Whether the view becomes grayscale.
        blur: Whether the view is blurred.
        sigma: Blur standard deviation in pixels (used where ``blur``).
        solarize: Whether the view is solarized.
    """

    jitter: Tensor
    order: Tensor
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    grayscale: Tensor
    blur: Tensor
    sigma: Tensor
    solarize: Tensor


def view_parity(n_global: int, n_views: int) -> Tensor:
    """``(V,)`` long: each view's index within its size group (global views, then local views) modulo 2."""
    index = torch.arange(n_views)
    return torch.where(index < n_global, index, index - n_global) % 2


def sample_params(config: MultiCropConfig, batch_size: int, n_views: int, n_global: int,
                  generator: torch.Generator) -> PhotometricParams:
    """Draw the photometric parameters of ``batch_size x n_views`` views with ``MultiCrop``'s distributions.

    One ``torch.rand`` call of ``(B, V, 13)`` uniforms; the jitter order is the argsort of four of them (a uniformly
    random permutation).

    Args:
        config: The multi-crop recipe (probabilities and ranges).
        batch_size: ``B``.
        n_views: ``V``; views ``0 .. n_global - 1`` are global, the rest local.
        n_global: Number of global views.
        generator: A CPU generator.

    Returns:
        The parameters, CPU tensors.
    """
    if generator.device.type != "cpu":
        raise ValueError(f"sample_params needs a CPU generator (parameters are drawn on the CPU), got "
                         f"{generator.device}")
    cfg = config
    u = torch.rand(batch_size, n_views, 13, generator=generator)
    parity = view_parity(n_global, n_views)
    blur_p = torch.tensor(cfg.blur_p, dtype=torch.float32)[parity]
    solarize_p = torch.tensor(cfg.solarize_p, dtype=torch.float32)[parity]

    def between(column: Tensor, low: float, high: float) -> Tensor:
        return low + (high - low) * column

    return PhotometricParams(
        jitter=u[..., 0] < cfg.jitter_p,
        order=u[..., 1:5].argsort(dim=-1),
        brightness=between(u[..., 5], max(0.0, 1 - cfg.brightness), 1 + cfg.brightness),
        contrast=between(u[..., 6], max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
        saturation=between(u[..., 7], max(0.0, 1 - cfg.saturation), 1 + cfg.saturation),
        hue=between(u[..., 8], -cfg.hue, cfg.hue),
        grayscale=u[..., 9] < cfg.grayscale_p,
        blur=u[..., 10] < blur_p,
        sigma=between(u[..., 11], *cfg.blur_sigma),
        solarize=u[..., 12] < solarize_p,
    )


def augment_seed(seed: int, epoch: int, step: int, rank: int = 0, micro_batch: int = 0) -> int:
    """A 63-bit seed for the device augmentation of one micro-batch (distinct from the per-sample seeds)."""
    return derive_seed(seed, epoch, step, rank, micro_batch, 0xD5A6)  # the tag keeps it apart from ``sample_seed``


class DeviceAugment:
    """uint8 ``Views`` (from ``MultiCrop(augment_on="device")``) -> photometrically augmented, normalized float views.

    Works on any device (the views' own); the parameters are drawn on the CPU, the pixels never leave the device, and
    each operation touches only the views it applies to (index lists known on the host, so nothing waits for the
    device). Runs under ``no_grad`` with autocast off: the output is float32 whatever the training precision.

    Example:
        >>> augment = DeviceAugment(MultiCropConfig())
        >>> views = augment(views.to("cuda"), torch.Generator().manual_seed(augment_seed(0, epoch, step)))
    """

    def __init__(self, config: MultiCropConfig | None = None) -> None:
        self.config = config or MultiCropConfig()
        self.config.validate()
        self._blur_half = int(box_blur_radius(self.config.blur_sigma[1])) + 1  # box taps on each side

    def __call__(self, views: Views, generator: torch.Generator) -> Views:
        """Augment ``views`` with parameters drawn from ``generator`` (a CPU generator)."""
        params = sample_params(self.config, views.batch_size, views.num_views, views.n_global, generator)
        return self.apply(views, params)

    @torch.no_grad()
    def apply(self, views: Views, params: PhotometricParams) -> Views:
        """Augment ``views`` with the given parameters (``(B, V)`` each, e.g. from ``sample_params``)."""
        if tuple(params.jitter.shape) != (views.batch_size, views.num_views):
            raise ValueError(f"parameters for {tuple(params.jitter.shape)} views, batch has "
                             f"{(views.batch_size, views.num_views)}")
        images, first = [], 0
        for group in views.images:
            if group.dtype != torch.uint8:
                raise ValueError(f"DeviceAugment expects uint8 views (MultiCrop(augment_on='device')), got "
                                 f"{group.dtype}")
            batch, count = group.shape[:2]
            group_params = _select(params, first, count)
            with torch.autocast(group.device.type, enabled=False):
                out = self._augment(group.reshape(batch * count, *group.shape[2:]), group_params)
            images.append(out.view(group.shape))
            first += count
        return dataclasses.replace(views, images=images)

    def _augment(self, image: Tensor, params: PhotometricParams) -> Tensor:
        """``(N, 3, S, S)`` uint8 -> normalized float32, views in the order of the flattened ``params``."""
        cfg = self.config
        device = image.device
        x = image.float().div_(255.0)
        # Which views each step touches, as host index lists; sent to the device in one copy.
        steps: list[tuple[int, Tensor]] = []
        enabled = {_BRIGHTNESS: cfg.brightness > 0, _CONTRAST: cfg.contrast > 0, _SATURATION: cfg.saturation > 0,
                   _HUE: cfg.hue > 0}
        for position in range(4):
            for op in range(4):
                if enabled[op]:
                    steps.append((op, (params.jitter & (params.order[:, position] == op)).nonzero().flatten()))
        steps += [(_GRAYSCALE, params.grayscale.nonzero().flatten()), (_BLUR, params.blur.nonzero().flatten()),
                  (_SOLARIZE, params.solarize.nonzero().flatten())]
        steps = [(op, index) for op, index in steps if index.numel()]
        if steps:
            sizes = [index.numel() for _, index in steps]
            indices = torch.cat([index for _, index in steps]).to(device, non_blocking=True).split(sizes)
            factors = torch.stack([params.brightness, params.contrast, params.saturation, params.hue, params.sigma],
                                  dim=1).to(device, non_blocking=True)
            for (op, _), index in zip(steps, indices):
                if index.numel() == x.shape[0]:
                    x = self._op(op, x, factors)
                else:
                    x.index_copy_(0, index, self._op(op, x.index_select(0, index), factors.index_select(0, index)))
        mean = torch.tensor(cfg.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        inv_std = 1.0 / torch.tensor(cfg.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        return x.sub_(mean).mul_(inv_std)

    def _op(self, op: int, x: Tensor, factors: Tensor) -> Tensor:
        """One operation on ``(n, 3, S, S)`` floats in ``[0, 1]``; ``factors`` is ``(n, 5)``."""
        if op == _BRIGHTNESS:
            return adjust_brightness(x, factors[:, 0])
        if op == _CONTRAST:
            return adjust_contrast(x, factors[:, 1])
        if op == _SATURATION:
            return adjust_saturation(x, factors[:, 2])
        if op == _HUE:
            return adjust_hue(x, factors[:, 3])
        if op == _GRAYSCALE:
            return grayscale(x).repeat(1, 3, 1, 1)
        if op == _BLUR:
            return gaussian_blur(x, factors[:, 4], self._blur_half)
        return solarize(x)


# ------------------------------------------------------------------------------------------------ batched ops
# Each takes ``(n, 3, H, W)`` floats in [0, 1] and per-view factors ``(n,)``; torchvision's float semantics.


def _per_view(factor: Tensor) -> Tensor:
    return factor.view(-1, 1, 1, 1)


def grayscale(x: Tensor) -> Tensor:
    """``(n, 1, H, W)`` luma with torchvision's weights."""
    r, g, b = x.unbind(dim=1)
    return (r * _GRAY[0] + g * _GRAY[1] + b * _GRAY[2]).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    f = _per_view(factor)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * _per_view(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Shift the hue by ``shift`` turns per view (RGB -> HSV -> RGB, torchvision's tensor algorithm)."""
    h, s, v = _rgb_to_hsv(x).unbind(dim=1)
    h = (h + shift.view(-1, 1, 1)).remainder_(1.0)
    return _hsv_to_rgb(h, s, v)


def solarize(x: Tensor) -> Tensor:
    return torch.where(x >= _SOLARIZE_THRESHOLD, 1.0 - x, x)


def box_blur_radius(sigma: Tensor | float) -> Tensor:
    """Pillow's ``GaussianBlur(radius=sigma)`` box radius: three extended box blurs of this (fractional) radius.

    ``_gaussian_blur_radius`` in Pillow's ``BoxBlur.c`` (Gwosdek et al., "Theoretical foundations of Gaussian
    convolution by extended box filtering", SSVM 2011): integer part ``l`` and fractional part ``a`` such that three
    passes have variance ``sigma ** 2``.
    """
    sigma2 = torch.as_tensor(sigma, dtype=torch.float32) ** 2 / 3.0
    box_length = torch.sqrt(12.0 * sigma2 + 1.0)
    whole = torch.floor((box_length - 1.0) / 2.0)
    frac = (2 * whole + 1) * (whole * (whole + 1) - 3 * sigma2) / (6 * (sigma2 - (whole + 1) ** 2))
    return whole + frac


def box_kernel(sigma: Tensor, half: int) -> Tensor:
    """``(n, 2 * half + 1)``: one pass of Pillow's extended box blur for each view's ``sigma``.

    A pass of radius ``r = l + a`` averages ``2 l + 1`` pixels with weight ``1 / (2 r + 1)`` each and gives the rest to
    the next pixel on each side. ``half`` must be at least ``floor(r_max) + 1``.
    """
    radius = box_blur_radius(sigma).to(sigma.device).view(-1, 1)
    whole = torch.floor(radius)
    offsets = torch.arange(-half, half + 1, device=sigma.device, dtype=torch.float32).abs()
    inner = 1.0 / (2.0 * radius + 1.0)
    edge = (1.0 - (2.0 * whole + 1.0) * inner) / 2.0
    return torch.where(offsets <= whole, inner, torch.where(offsets == whole + 1, edge, torch.zeros_like(inner)))


def gaussian_blur(x: Tensor, sigma: Tensor, half: int) -> Tensor:
    """Pillow's ``GaussianBlur(radius=sigma)`` per view: three box passes along x, then three along y.

    Each pass repeats the edge pixels of its input, as Pillow does, so borders match too (up to Pillow's rounding to
    uint8 after every pass).

    Args:
        x: ``(n, C, H, W)``.
        sigma: ``(n,)`` standard deviations.
        half: Box kernel half-width, ``>= floor(box_blur_radius(max sigma)) + 1``.
    """
    n, c, height, width = x.shape
    kernel = box_kernel(sigma.float(), half).to(x.dtype).repeat_interleave(c, dim=0)  # (n * c, taps)
    taps = kernel.shape[1]
    y = x.reshape(1, n * c, height, width)
    for pad, shape in (((half, half, 0, 0), (n * c, 1, 1, taps)), ((0, 0, half, half), (n * c, 1, taps, 1))):
        weight = kernel.view(shape)
        for _ in range(3):
            y = F.conv2d(F.pad(y, pad, mode="replicate"), weight, groups=n * c)
    return y.view(n, c, height, width)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, _ = x.unbind(dim=1)
    minc, maxc = torch.aminmax(x, dim=1)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, channels_range).unsqueeze(1)
    rc, gc, bc = ((maxc.unsqueeze(1) - x) / divisor).unbind(dim=1)
    maxc_neq_r = maxc != r
    maxc_eq_g = maxc == g
    hr = (bc - gc) * ~maxc_neq_r
    hg = (2.0 + rc - bc) * (maxc_eq_g & maxc_neq_r)
    hb = (4.0 + gc - rc) * (maxc_neq_r & ~maxc_eq_g)
    h = ((hr + hg + hb) / 6.0 + 1.0).fmod_(1.0)
    return torch.stack((h, s, maxc), dim=1)


_HSV_SELECT = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], dtype=torch.long)


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long().remainder_(6)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = ((1.0 - sxf) * v).clamp_(0.0, 1.0)
    t = ((sxf + one_minus_s) * v).clamp_(0.0, 1.0)
    p = (one_minus_s * v).clamp_(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=1)  # (n, 4, H, W)
    select = _HSV_SELECT.to(h.device)[:, i].movedim(0, 1)  # (n, 3, H, W)
    return vpqt.gather(1, select)


def _select(params: PhotometricParams, first: int, count: int) -> PhotometricParams:
    """The parameters of views ``first .. first + count - 1``, flattened batch-major to ``(B * count, ...)``."""
    fields = {}
    for item in dataclasses.fields(params):
        value = getattr(params, item.name)[:, first:first + count]
        fields[item.name] = value.reshape(-1, *value.shape[2:])
    return PhotometricParams(**fields)
