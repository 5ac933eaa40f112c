"""Self-contained checkpoints of plain types, written atomically.

Everything in a checkpoint is a tensor, a number, a string, a list/tuple or a dict of those, so
``torch.load(path, weights_only=True)`` reads it. Files are written to a temporary name in the same folder, flushed
to disk, then renamed over the target: a process killed at any moment leaves either the old or the new file, never a
truncated one.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["atomic_save", "load_checkpoint", "capture_rng", "restore_rng", "last_checkpoint_path"]


def last_checkpoint_path(run_dir: str | os.PathLike, resume: bool) -> Path:
    """``<run_dir>/checkpoints/last.pt``, after checking it agrees with ``resume``.

    The run-directory contract of every training tool: ``--resume`` needs that checkpoint; without ``--resume`` a
    directory that already holds one is refused, so a finished or interrupted run is never overwritten.

    Raises:
        FileNotFoundError: ``resume`` is True and there is no checkpoint.
        FileExistsError: ``resume`` is False and the directory already holds a run.
    """
    run_dir = Path(run_dir)
    last_path = run_dir / "checkpoints" / "last.pt"
    if resume and not last_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {str(last_path)!r}")
    if not resume and last_path.exists():
        raise FileExistsError(f"{str(run_dir)!r} already holds a run; pass --resume to continue it or pick another "
                              "output directory")
    return last_path


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` through a temporary file + ``fsync`` + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a densessl checkpoint on the CPU with ``weights_only=True``; a clear error if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several exception types for damaged files
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {type(error).__name__}: {error}") from error
    if not isinstance(state, dict) or "iteration" not in state:
        raise ValueError(f"{str(path)!r} is not a densessl training checkpoint")
    return state


def capture_rng() -> dict[str, Any]:
    """Every RNG state the loop may use (torch CPU and CUDA, numpy, python), as plain types."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
