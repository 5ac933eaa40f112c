"""Under DDP the VICReg/VICRegL statistics see the global batch: 2 gloo processes x B == 1 process x 2B."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from densessl.dist import all_gather_with_grad, get_world_size
from densessl.objectives.vicreg import VICRegLoss
from densessl.objectives.vicregl import VICRegLLocalLoss

WORLD = 2
BATCH = 4  # per process


def _inputs():
    g = torch.Generator().manual_seed(0)
    total = WORLD * BATCH
    z = [torch.randn(total, 24, generator=g) for _ in range(4)]  # 2 global + 2 local views
    maps = [torch.randn(total, n, 16, generator=g) for n in (9, 9, 4, 4)]
    grids = [torch.rand(total, n, 2, generator=g) * 50 for n in (9, 9, 4, 4)]
    return z, maps, grids


def _loss(z, maps, grids):
    glob = VICRegLoss()(z, n_global=2)
    loc = VICRegLLocalLoss(num_matches=(4, 2))(maps, grids, n_global=2)
    terms = {f"{k}_g": v for k, v in glob.items()} | {f"{k}_l": v for k, v in loc.items()}
    return terms, glob["loss"] + loc["loss"]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        z, maps, grids = _inputs()
        part = slice(rank * BATCH, (rank + 1) * BATCH)
        z = [t[part].clone().requires_grad_() for t in z]
        maps = [t[part].clone().requires_grad_() for t in maps]
        grids = [t[part] for t in grids]
        terms, loss = _loss(z, maps, grids)
        loss.backward()
        torch.save({"terms": {k: v.detach() for k, v in terms.items()}, "z_grad": [t.grad for t in z],
                    "maps_grad": [t.grad for t in maps]}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_loss_equals_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    z, maps, grids = _inputs()
    z = [t.clone().requires_grad_() for t in z]
    maps = [t.clone().requires_grad_() for t in maps]
    terms, loss = _loss(z, maps, grids)
    loss.backward()
    for key, value in terms.items():
        # Invariance is a per-rank mean (DDP averages it); var/cov are identical on every rank.
        mean_over_ranks = torch.stack([r["terms"][key] for r in ranks]).mean()
        torch.testing.assert_close(mean_over_ranks, value.detach(), rtol=1e-5, atol=1e-6, msg=key)
    for key in ("var_g", "cov_g", "var_l", "cov_l"):
        torch.testing.assert_close(ranks[0]["terms"][key], ranks[1]["terms"][key])
    # DDP averages parameter gradients over ranks, so rank gradients / WORLD must equal the single-process ones.
    for r, result in enumerate(ranks):
        part = slice(r * BATCH, (r + 1) * BATCH)
        for grad, full in zip(result["z_grad"] + result["maps_grad"], z + maps):
            torch.testing.assert_close(grad / WORLD, full.grad[part], rtol=1e-4, atol=1e-7)


def test_gather_is_identity_without_process_group() -> None:
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x and get_world_size() == 1


def _queue_worker(rank: int, init_file: str, out_dir: str) -> None:
    from densessl.objectives.densecl import KeyQueue

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        queue = KeyQueue(8, 2)
        queue.push(torch.full((3, 2), float(rank)))
        torch.save({"keys": queue.keys, "ptr": queue.ptr}, os.path.join(out_dir, f"queue{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_queue_enqueues_keys_from_every_rank(tmp_path: Path) -> None:
    mp.spawn(_queue_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for r in range(WORLD):
        state = torch.load(tmp_path / f"queue{r}.pt", weights_only=True)
        assert int(state["ptr"]) == 6
        assert torch.equal(state["keys"][:3], torch.zeros(3, 2)) and torch.equal(state["keys"][3:6], torch.ones(3, 2))


def test_derive_seed_is_the_seed_sequence_rule() -> None:
    import numpy as np

    from densessl.dist import derive_seed

    word = int(np.random.SeedSequence([3, 1, 4]).generate_state(1, dtype=np.uint64)[0])
    assert derive_seed(3, 1, 4, bits=64) == word and derive_seed(3, 1, 4) == word >> 1
    assert derive_seed(3, 1, 4) != derive_seed(3, 1, 5) and 0 <= derive_seed(0) < 2**63
    with pytest.raises(ValueError, match="bits must be 63 or 64"):
        derive_seed(1, bits=32)
