"""Exact distributed gradients: for every objective (and VICRegL with Gram anchoring), 2 gloo processes with B images
each under DDP give the same loss and the same parameter gradients (backbone, projectors, local and dense heads) as
one process with the 2B images.

The known trap in peers is a gathered loss whose value is right and whose gradient is off by the world size. Here the
whole Pretrainer runs under ``DistributedDataParallel`` (which averages gradients over ranks), so the test sees what
training sees. BatchNorm layers run in eval mode in both runs: on the CPU their batch statistics are per process
(torch's SyncBatchNorm has no CPU kernel; on CUDA ``train.sync_bn`` makes them global), and that per-process
normalisation is a property of BatchNorm, not of the objectives' gathers and queues, which are what is tested.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from densessl.backbones import DenseBackbone
from densessl.data.collate import collate_views
from densessl.data.transforms import MultiCrop, MultiCropConfig
from densessl.objectives import OBJECTIVES
from densessl.objectives.gram import GramConfig
from densessl.train.pretrain import Pretrainer

WORLD = 2
BATCH = 3  # per process
SMALL_HEADS = {"projector": "64-64", "local_projector": "32-32", "hidden_dim": 64, "feat_dim": 16, "queue_len": 32,
               "out_dim": 16}


# case -> (objective, Gram anchoring). The Gram teacher sees 2x views, so the term and its gradient are not zero.
CASES = {**{name: (name, None) for name in OBJECTIVES},
         "vicregl_gram": ("vicregl", GramConfig(enabled=True, weight=10.0, teacher_scale=2.0))}


def _model(case: str) -> Pretrainer:
    torch.manual_seed(0)
    name, gram = CASES[case]
    method_cls, config_cls = OBJECTIVES[name]
    fields = config_cls.__dataclass_fields__
    backbone = DenseBackbone("resnet18")
    model = Pretrainer(backbone, method_cls.from_backbone(backbone, config_cls(**{
        k: v for k, v in SMALL_HEADS.items() if k in fields})), gram=gram)
    model.gram_step(0)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def _samples() -> list:
    multicrop = MultiCrop(MultiCropConfig(global_size=64, local_size=48, n_local=2))
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 80, 100, generator=g) for _ in range(WORLD * BATCH)]
    return [multicrop(image, torch.Generator().manual_seed(s)) for s, image in enumerate(images)]


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    """Every objective in turn, in one process group (one spawn for the whole module)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        views = collate_views(_samples()[rank * BATCH:(rank + 1) * BATCH])
        for name in sorted(CASES):
            model = _model(name)
            ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=not model.objective.uses_pooled)
            out = ddp(views)
            out["loss"].backward()
            torch.save({"loss": out["loss"].detach(), "grads": _grads(model)},
                       os.path.join(out_dir, f"{name}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_give_the_loss_and_gradients_of_one_with_the_doubled_batch(name: str,
                                                                                 distributed_runs: Path) -> None:
    ranks = [torch.load(distributed_runs / f"{name}_rank{r}.pt", weights_only=True) for r in range(WORLD)]

    model = _model(name)
    out = model(collate_views(_samples()))
    out["loss"].backward()
    single = _grads(model)
    if CASES[name][1] is not None:
        assert out["gram"] > 0

    # The objective is a mean over the global batch: the ranks' losses average to the one-process loss.
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), out["loss"].detach(),
                               rtol=1e-5, atol=1e-6)
    # DDP averages gradients over ranks, so every rank holds the one-process gradient, head and backbone alike.
    assert set(ranks[0]["grads"]) == set(single), sorted(set(ranks[0]["grads"]) ^ set(single))[:5]
    heads = [n for n in single if n.startswith("objective.")]
    assert heads and any(n.startswith("backbone.") for n in single)
    for rank in ranks:
        for key, full in single.items():
            scale = full.abs().max().clamp_min(1e-12)
            torch.testing.assert_close(rank["grads"][key] / scale, full / scale, rtol=1e-4, atol=1e-5, msg=key)
