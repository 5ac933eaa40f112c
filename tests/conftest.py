"""Shared pytest fixtures: deterministic seeds and small inputs (CPU, tiny models, batch 2-4, 32-96 px)."""

from __future__ import annotations

import os

import pytest
import torch

# Under pytest-xdist (scripts/test.sh runs one worker per core) each worker computes on one thread; alone, on two.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
