"""The one atomic file writer: every file densessl writes that a crash must not leave half-written goes through here.

A file is written to a temporary name in the target's folder (``.<name>.<random>.tmp``), flushed and ``fsync``-ed,
then renamed over the target with ``os.replace``: a process killed at any moment leaves the old file or the new one,
never a truncated one. A killed writer can leave its temporary file behind; ``sweep_temporary_files`` removes them
(the training engine does at start-up). A full disk becomes ``DiskFullError`` ("no space left on device", with the
size the write needed) instead of torch's ``[enforce fail at inline_container.cc]``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

__all__ = ["DiskFullError", "atomic_write", "atomic_write_text", "atomic_write_json", "atomic_torch_save",
           "sweep_temporary_files"]

logger = logging.getLogger("densessl")

_TMP_SUFFIX = ".tmp"


class DiskFullError(OSError):
    """Writing a file failed because the disk (or quota) is full; the previous file, if any, is intact."""


def _is_disk_full(error: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, also when torch wraps it (``RuntimeError: ... file write failed``)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error).lower()
        if "no space left" in text or "file write failed" in text or "disk quota" in text:
            return True
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return False


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` atomically: ``write(handle)`` fills a temporary file that then replaces ``path``.

    Raises:
        DiskFullError: No space left (the temporary file is removed; ``path`` is unchanged).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException as error:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, Exception) and _is_disk_full(error):
            free = shutil.disk_usage(path.parent).free
            raise DiskFullError(
                errno.ENOSPC,
                f"no space left on device while writing {str(path)!r}: {written / 2**20:.1f} MiB were written before "
                f"the disk filled ({free / 2**20:.1f} MiB free now); free some space (or point the output "
                f"elsewhere) and run again - the previous file is intact",
            ) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``atomic_write`` of UTF-8 text."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    """``atomic_write`` of ``value`` as indented JSON with a final newline."""
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def sweep_temporary_files(folder: str | os.PathLike) -> int:
    """Remove the temporary files that killed ``atomic_write`` calls left in ``folder`` (not recursive).

    Only call it when no other process is writing into ``folder``. Returns the number of files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed, size = 0, 0
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(_TMP_SUFFIX) and entry.is_file():
            size += entry.stat().st_size
            entry.unlink()
            removed += 1
    if removed:
        logger.info("removed %d unfinished temporary file(s) (%.1f MiB) left by an interrupted write in %s",
                    removed, size / 2**20, folder)
    return removed
