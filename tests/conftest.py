"""Shared pytest fixtures: deterministic seeds and small inputs (CPU, tiny models, batch 2-4, 32-96 px)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
