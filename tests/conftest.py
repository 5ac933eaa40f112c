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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests marked slow first: with one xdist worker per core, the long files then overlap instead of
    finishing alone at the end (the suite's wall time is set by the last worker)."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1)
