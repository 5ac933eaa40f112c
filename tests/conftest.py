"""Shared pytest fixtures: deterministic seeds and small inputs (CPU, tiny models, batch 2-4, 32-96 px)."""

from __future__ import annotations

import os

import pytest
import torch

# Under pytest-xdist (scripts/test.sh runs one worker per core) each worker computes on one thread; alone, on two.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(_THREADS)
# The processes the tests start (CLI runs, kill/resume runs, torchrun) get the same share. Left to OpenMP's default
# (one thread per core in every child of every worker), the cores are oversubscribed and the spinning OpenMP threads
# make a 7 s training subprocess take 30 s or more on a shared 2-core machine. Always set, not setdefault: the xdist
# controller loads this file too (as one process: 2 threads) and its workers inherit its environment. (Only
# OMP_NUM_THREADS: an MKL_NUM_THREADS that differs from it, e.g. where a tool sets OMP_NUM_THREADS=1, makes torch's
# CPU kernels some 30x slower.)
os.environ["OMP_NUM_THREADS"] = str(_THREADS)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests marked slow first: with one xdist worker per core, the long files then overlap instead of
    finishing alone at the end (the suite's wall time is set by the last worker)."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1)
