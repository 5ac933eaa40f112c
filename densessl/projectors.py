"""Projectors (projection heads): the global expander and the per-location projector of VICReg/VICRegL.

``MLP(in_dim, "a-b-c", norm)`` builds ``Linear(in, a) -> Norm(a) -> ReLU -> Linear(a, b) -> Norm(b) -> ReLU ->
Linear(b, c, bias=False)``, the official VICReg/VICRegL builder (``utils.MLP``). ``norm`` is ``"bn"`` (BatchNorm1d,
the official choice for ResNets), ``"ln"`` (LayerNorm, the official choice for ConvNeXt) or ``"none"``.

``LocalProjector`` applies one MLP to every location of a ``(B, C, h, w)`` map, as a ``(B*h*w, C)`` batch, so
BatchNorm statistics are taken over all tokens of the call, like the official maps projector.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

__all__ = ["parse_mlp_spec", "MLP", "LocalProjector", "default_norm"]

NormKind = Literal["bn", "ln", "none"]


def parse_mlp_spec(spec: str | list[int] | tuple[int, ...]) -> list[int]:
    """Parse ``"8192-8192-8192"`` (or a list of ints) into layer widths, with a clear error for bad specs."""
    if isinstance(spec, str):
        try:
            dims = [int(part) for part in spec.split("-")]
        except ValueError:
            raise ValueError(f"MLP spec must look like '512-512-512', got {spec!r}") from None
    else:
        dims = [int(d) for d in spec]
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"MLP spec needs at least one positive width, got {spec!r}")
    return dims


def default_norm(arch: str) -> NormKind:
    """The official normalization per backbone family: BatchNorm for ResNet-like nets, LayerNorm otherwise."""
    return "bn" if any(key in arch for key in ("resnet", "resnext", "regnet", "efficientnet", "mobilenet")) else "ln"


def _norm(kind: NormKind, dim: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm1d(dim)
    if kind == "ln":
        return nn.LayerNorm(dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'bn', 'ln' or 'none', got {kind!r}")


class MLP(nn.Sequential):
    """The VICReg expander: hidden layers with norm + ReLU, a final linear layer without bias.

    Args:
        in_dim: Input width.
        spec: Layer widths, ``"a-b-c"`` or ``[a, b, c]``; the last one is the output width.
        norm: Normalization after each hidden linear layer.

    Shapes:
        ``(N, in_dim) -> (N, out_dim)``.
    """

    def __init__(self, in_dim: int, spec: str | list[int] | tuple[int, ...], norm: NormKind = "bn") -> None:
        dims = [in_dim, *parse_mlp_spec(spec)]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 2):
            layers += [nn.Linear(dims[i], dims[i + 1]), _norm(norm, dims[i + 1]), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-2], dims[-1], bias=False))
        super().__init__(*layers)
        self.out_dim = dims[-1]

    def forward_groups(self, x: Tensor, groups: int) -> Tensor:
        """Apply the MLP to ``groups`` stacked batches at once, with BatchNorm statistics per group.

        Equal to running the MLP on each of the ``groups`` chunks of ``x`` separately (as the official code runs its
        projector once per view), but each Linear layer reads its weights once for all chunks: on a CPU or with small
        per-view batches the 8192-wide expander is bound by weight reads, so this is several times faster.

        Shapes:
            ``(groups * N, in_dim) -> (groups * N, out_dim)``, chunk ``g`` = rows ``g*N .. (g+1)*N - 1``.
        """
        if x.shape[0] % groups:
            raise ValueError(f"{x.shape[0]} rows cannot be split into {groups} equal groups")
        for layer in self:
            if isinstance(layer, nn.BatchNorm1d) and layer.training and groups > 1:
                x = torch.cat([layer(chunk) for chunk in x.chunk(groups)])
            else:
                x = layer(x)
        return x


class LocalProjector(nn.Module):
    """One MLP shared by every location of a dense map.

    Args:
        in_dim: Channels ``C`` of the map.
        spec: MLP widths (official VICRegL: ``"512-512-512"``).
        norm: Normalization after hidden layers.

    Shapes:
        ``(B, C, h, w) -> (B, h*w, D)``, locations in raster order.
    """

    def __init__(self, in_dim: int, spec: str | list[int] | tuple[int, ...], norm: NormKind = "bn") -> None:
        super().__init__()
        self.mlp = MLP(in_dim, spec, norm)
        self.out_dim = self.mlp.out_dim

    def forward(self, maps: Tensor) -> Tensor:
        batch = maps.shape[0]
        tokens = rearrange(maps, "b c h w -> (b h w) c")
        return rearrange(self.mlp(tokens), "(b n) d -> b n d", b=batch)
