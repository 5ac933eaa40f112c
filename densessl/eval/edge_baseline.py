"""An edge-only dense feature map: the control that shows a segmentation benchmark is not solved by edges alone.

A benchmark whose objects are pasted onto backgrounds (``densessl.data.photo_benchmark``) could be won by a probe that
only finds paste seams. ``EdgeFeatures`` is a fixed (non-learned) "backbone" whose features are image-gradient
magnitudes, pooled to the same output stride as a ResNet's last stage with a 3 x 3 cell neighbourhood, so a linear
probe or kNN on it sees exactly the edge and seam evidence around each cell and nothing else. The linear probe and kNN
of ``densessl.eval`` accept it in place of a ``DenseBackbone``; a real backbone must score far above it.

Features per output cell, from the normalized image ``(B, 3, H, W)``: Sobel gradient magnitude of each colour
channel and of the grey image after Gaussian blurs of sigma 0, 1 and 2 px (12 maps), each average- and max-pooled
over the ``stride x stride`` cell (24 channels), then the 3 x 3 neighbourhood of cells stacked (216 channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from densessl.backbones import DenseFeatures

__all__ = ["EdgeFeatures"]


def _gaussian_kernel(sigma: float) -> Tensor:
    """``(1, 1, k, k)`` normalized Gaussian, ``k = 2 * ceil(3 sigma) + 1``."""
    radius = max(1, int(torch.tensor(3.0 * sigma).ceil()))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


class EdgeFeatures(nn.Module):
    """Fixed edge-magnitude features with the interface of ``DenseBackbone`` (``channels``, ``levels``, ``strides``).

    Args:
        stride: Output stride (32 = a ResNet's last stage).
        sigmas: Gaussian blur scales before the Sobel filter (0 = none).

    Forward: ``(B, 3, H, W)`` -> ``DenseFeatures`` with one map ``(B, 216, ceil(H / stride), ceil(W / stride))``
    and ``pooled`` its spatial mean.
    """

    arch = "edges-sobel"

    def __init__(self, stride: int = 32, sigmas: tuple[float, ...] = (0.0, 1.0, 2.0)) -> None:
        super().__init__()
        self.stride = stride
        self.sigmas = sigmas
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.register_buffer("sobel", torch.stack([sobel_x, sobel_x.T])[:, None], persistent=False)  # (2, 1, 3, 3)
        self.levels = [0]
        self.num_levels = 1
        self.strides = [stride]
        self.channels = [4 * len(sigmas) * 2 * 9]

    def forward(self, images: Tensor) -> DenseFeatures:
        batch = images.shape[0]
        planes = torch.cat([images, images.mean(dim=1, keepdim=True)], dim=1)  # (B, 4, H, W)
        planes = rearrange(planes, "b c h w -> (b c) 1 h w")
        magnitudes = []
        for sigma in self.sigmas:
            blurred = planes
            if sigma > 0:
                kernel = _gaussian_kernel(sigma).to(planes)
                blurred = F.conv2d(F.pad(planes, [kernel.shape[-1] // 2] * 4, mode="replicate"), kernel)
            grad = F.conv2d(F.pad(blurred, [1, 1, 1, 1], mode="replicate"), self.sobel.to(planes))
            magnitudes.append(grad.pow(2).sum(dim=1, keepdim=True).sqrt())
        edges = rearrange(torch.cat(magnitudes, dim=1), "(b c) s h w -> b (c s) h w", b=batch)
        pooled = torch.cat([
            F.avg_pool2d(edges, self.stride, ceil_mode=True),
            F.max_pool2d(edges, self.stride, ceil_mode=True),
        ], dim=1)  # (B, 24, h, w)
        height, width = pooled.shape[-2:]
        context = F.unfold(F.pad(pooled, [1, 1, 1, 1], mode="replicate"), kernel_size=3)  # (B, 24 * 9, h * w)
        maps = rearrange(context, "b c (h w) -> b c h w", h=height, w=width)
        return DenseFeatures(maps=[maps], pooled=maps.mean(dim=(2, 3)))
