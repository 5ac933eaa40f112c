"""Reading torch files without trusting them: integrity check and ``weights_only`` loading with clear errors.

Used for every torch file densessl reads (training checkpoints, backbone weights). ``torch.save`` writes a zip
container whose members carry CRC-32 checksums that ``torch.load`` never checks: ``verify_torch_zip`` does, so bytes
zeroed or flipped on disk are an error naming the file instead of silently different weights. ``load_plain`` is
``torch.load(weights_only=True)`` on the CPU whose failures become one ``ValueError`` saying what the file is (a
pickle of Python objects, text, a truncated archive, ...) -- never torch's advice to retry with
``weights_only=False``, which would run code stored in the file.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["allow_checkpoint_args", "file_kind", "first_sentence", "load_plain", "read_safetensors", "verify_torch_zip"]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_MAGIC = b"\x80"  # pickle protocol >= 2: torch.save's legacy format (or a plain pickle)


def first_sentence(error: BaseException) -> str:
    """The first sentence of an exception's message, whitespace collapsed, at most 300 characters."""
    text = " ".join(str(error).split())
    return (text.split(". ")[0].rstrip(".") if text else type(error).__name__)[:300]


def _is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with a little-endian u64 header length, then the JSON header ``{...``."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 8 + header_len <= size


def file_kind(path: Path, what: str, fix: str, noun: str = "file") -> str:
    """``"safetensors"`` or ``"torch"`` by the file's first bytes (not its name); a torch zip is CRC-checked too.

    The caller checks first that ``path`` is an existing file (its messages for a folder or a missing file differ).

    Args:
        path: The file.
        what: How messages name it ("weights file", "checkpoint").
        fix: The next step the messages suggest.
        noun: The kind of file expected, in the "not a torch or safetensors ..." message.

    Raises:
        ValueError: Empty, neither safetensors nor written by ``torch.save``, or a damaged torch zip.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(16)
    if size == 0:
        raise ValueError(f"{what} {str(path)!r} is empty (0 bytes); {fix}")
    if _is_safetensors(head, size):
        return "safetensors"
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise ValueError(f"{str(path)!r} is not a torch or safetensors {noun} (it starts with bytes {head!r}; "
                         "expected a file written by torch.save or safetensors)")
    if head.startswith(_ZIP_MAGIC):
        verify_torch_zip(path, what, fix)
    return "torch"


def read_safetensors(path: Path, what: str, fix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (on the CPU) and the string metadata of a safetensors file; ``ValueError`` if it is damaged."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{what} {str(path)!r} is a damaged or truncated safetensors file "
                         f"({first_sentence(error)}); {fix}") from None
    return state, metadata


def verify_torch_zip(path: str | Path, what: str = "file", fix: str = "write it again") -> None:
    """Check the CRC of every member of a torch zip file.

    Args:
        path: The file.
        what: How messages name it ("checkpoint", "weights file").
        fix: The next step the messages suggest.

    Raises:
        ValueError: Not a complete zip archive, or a member fails its CRC check.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as error:
        raise ValueError(f"{what} {str(path)!r} is damaged or truncated (not a complete torch zip archive: "
                         f"{first_sentence(error)}); {fix}") from None
    if bad is not None:
        raise ValueError(f"{what} {str(path)!r} is damaged: member {bad!r} fails its CRC check (its bytes "
                         f"changed after it was written); {fix}")


def load_plain(path: str | Path, what: str = "file", fix: str = "write it again") -> Any:
    """``torch.load(weights_only=True)`` on the CPU, translating torch's errors into one clear ``ValueError``."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")  # plain pickles: we explain below
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found:
            raise ValueError(f"{what} {str(path)!r} holds Python objects other than tensors ({found.group(1)}); "
                             "densessl never unpickles those. Save a plain state dict instead: "
                             "torch.save(model.state_dict(), path)") from None
        operand = re.search(r"Unsupported operand[^\n]*", str(error))
        detail = operand.group(0).strip() if operand else "not torch.save's format"
        raise ValueError(f"{what} {str(path)!r} is a Python pickle but not a torch weights file ({detail}); "
                         "densessl reads only tensors and plain values. Save a plain state dict with "
                         "torch.save(model.state_dict(), path)") from None
    except RuntimeError as error:
        if "PytorchStreamReader" in str(error) or "zip archive" in str(error):
            raise ValueError(f"{what} {str(path)!r} is damaged or truncated: torch cannot read its zip archive "
                             f"({first_sentence(error)}); {fix}") from None
        raise ValueError(f"cannot read {what} {str(path)!r} as a torch file: {first_sentence(error)}") from None
    except Exception as error:  # noqa: BLE001 (torch raises KeyError, IndexError, EOFError ... on damaged files)
        raise ValueError(f"cannot read {what} {str(path)!r} as a torch file ({type(error).__name__}: "
                         f"{first_sentence(error)}); it is damaged or not written by torch.save") from None


@contextlib.contextmanager
def allow_checkpoint_args() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` rebuild ``argparse.Namespace``: DINO and iBOT store their ``args``.

    A Namespace only holds attributes; its values are still limited to plain types and tensors.
    """
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch 2.4: only the process-wide allowlist
        torch.serialization.add_safe_globals([argparse.Namespace])
        yield
        return
    with safe_globals([argparse.Namespace]):
        yield
