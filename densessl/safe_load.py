"""Reading torch files without trusting them: integrity check and ``weights_only`` loading with clear errors.

Used for every torch file densessl reads (training checkpoints, backbone weights). ``torch.save`` writes a zip
container whose members carry CRC-32 checksums that ``torch.load`` never checks: ``verify_torch_zip`` does, so bytes
zeroed or flipped on disk are an error naming the file instead of silently different weights. ``load_plain`` is
``torch.load(weights_only=True)`` on the CPU whose failures become one ``ValueError`` saying what the file is (a
pickle of Python objects, text, a truncated archive, ...) -- never torch's advice to retry with
``weights_only=False``, which would run code stored in the file.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["first_sentence", "load_plain", "verify_torch_zip"]


def first_sentence(error: BaseException) -> str:
    """The first sentence of an exception's message, whitespace collapsed, at most 300 characters."""
    text = " ".join(str(error).split())
    return (text.split(". ")[0].rstrip(".") if text else type(error).__name__)[:300]


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
