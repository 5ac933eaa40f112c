"""Distributed helpers: torchrun environment, rank queries, all-gathers (with and without gradient) and the one
seed-derivation rule.

Every function degrades to the single-process identity when ``torch.distributed`` is not initialized, so library code
calls them unconditionally.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["is_distributed", "get_rank", "get_world_size", "is_main_process", "all_gather_with_grad",
           "concat_all_gather", "derive_seed", "resolve_device"]


def is_distributed() -> bool:
    """Whether a default process group is initialized with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Rank of this process (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Whether this is rank 0."""
    return get_rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient for the local slice.

    Each rank computes the same gathered statistic, so the gradient of the summed per-rank losses with respect to
    this rank's input is the all-reduced gradient's slice for this rank. Uses only ``all_gather`` and
    ``all_reduce``, which every backend (gloo included) supports.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        ctx.batch = tensor.shape[0]
        chunks = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(chunks, tensor)
        return torch.cat(chunks, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, differentiably.

    Args:
        tensor: ``(B, ...)``, the same shape on every rank.

    Returns:
        ``(world_size * B, ...)`` in rank order; ``tensor`` itself when not distributed.
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def concat_all_gather(tensor: Tensor) -> Tensor:
    """All-gather along dim 0 without gradient (keys for the queues); identity when not distributed.

    Args:
        tensor: ``(B, ...)``, the same shape on every rank.

    Returns:
        ``(world_size * B, ...)`` in rank order, detached; ``tensor`` itself when not distributed.
    """
    if not is_distributed():
        return tensor
    chunks = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(chunks, tensor.contiguous())
    return torch.cat(chunks, dim=0)


def derive_seed(*keys: int, bits: int = 63) -> int:
    """The one rule for per-item seeds: ``np.random.SeedSequence(keys)``'s first 64-bit word, keeping ``bits`` bits.

    Every stream densessl seeds per item (pretraining samples, device augmentation, synthetic scenes, kNN memory
    sampling, match diagnostics) derives it here from a tuple of non-negative integers, so two streams differ
    whenever their key tuples do (a constant tag keeps two streams with the same counters apart).

    Args:
        keys: Non-negative integers, e.g. ``(seed, epoch, index)``.
        bits: 63 (default: fits a signed int64, as ``torch.manual_seed`` and ``random.Random`` accept) or 64.

    Returns:
        A seed in ``[0, 2**bits)``.
    """
    if bits not in (63, 64):
        raise ValueError(f"bits must be 63 or 64, got {bits}")
    word = int(np.random.SeedSequence([int(key) for key in keys]).generate_state(1, dtype=np.uint64)[0])
    return word >> (64 - bits)


def resolve_device(name: str | None, option: str = "--device") -> torch.device:
    """The device named ``name`` (``None`` or ``"auto"``: CUDA when available, else the CPU), checked to exist here.

    Raises:
        ValueError: Not a device name, or one this machine does not have; the message starts with ``option`` (the
            flag or config key that named it) and gives the fix.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpu = f"{option} cpu" if option.startswith("--") else f"{option}=cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{option} {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {name}: CUDA is not available on this machine (torch.cuda.is_available() is "
                             f"False); use {cpu}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA device(s); use "
                             f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{option} {name}: MPS is not available on this machine; use {cpu}")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{option} {name}: unsupported device type {device.type!r}; use cpu or cuda")
    return device
