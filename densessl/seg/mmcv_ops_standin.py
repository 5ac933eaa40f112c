"""A pure-Python stand-in for ``mmcv.ops``, so that mmsegmentation 1.2.2 runs on ``mmcv-lite`` (no compiled mmcv).

Why: mmsegmentation 1.2.2 imports ``mmcv.ops`` while it loads (``mmseg.utils.mask_classification`` and
``mmseg.models.utils.point_sample`` import ``point_sample``, ``mmseg.models.losses.focal_loss`` imports
``sigmoid_focal_loss``), and the real ``mmcv/ops/__init__.py`` loads the compiled extension ``mmcv._ext``, which
``mmcv-lite`` does not have and which PyPI ships for no recent torch (building it takes ~10 minutes,
``scripts/build_mmcv.sh``). None of densessl's heads (the VICRegL linear head, FCN, UPerNet) calls a compiled op.

What ``install()`` does when ``mmcv._ext`` is missing: it puts a module named ``mmcv.ops`` into ``sys.modules``
*instead of running* ``mmcv/ops/__init__.py``. Its ``__path__`` is the real ``mmcv/ops`` folder, so the pure-Python
submodules that mmcv-lite ships still import as usual (``mmcv.ops.point_sample``). It provides:

* ``point_sample`` and ``SimpleRoIAlign``: mmcv's own pure-PyTorch code (``F.grid_sample``), unchanged;
* ``get_compiler_version`` / ``get_compiling_cuda_version``: for environment reports, saying that no ops are compiled;
* every other name (``PSAMask``, ``CrissCrossAttention``, ``DeformConv2d``, ``sigmoid_focal_loss``, ...): a
  placeholder class that imports fine (mmseg imports some of them at load time, mmengine uses some in
  ``isinstance`` checks) and raises ``MissingCompiledOpError`` -- naming the op and the optional full-mmcv build --
  as soon as it is called or instantiated, e.g. when a config builds a PSA or CCNet head.

With a full mmcv (``mmcv._ext`` importable, e.g. the wheel ``scripts/build_mmcv.sh`` builds) ``install()`` does
nothing and the real ops are used. ``densessl.seg.mmseg_plugin`` calls ``install()`` before it imports mmseg;
code of your own that imports mmseg first should call it first too.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["MissingCompiledOpError", "install", "is_standin_active"]

STANDIN_MARKER = "__densessl_standin__"

FULL_MMCV_HINT = (
    "build the full mmcv 2.1.0 once with `bash scripts/build_mmcv.sh` from a densessl checkout (about 10 minutes on "
    "2 cores; it prints the wheel's path), then `pip install <that wheel>` into this environment, which replaces "
    "mmcv-lite. densessl's own heads (linear, FCN, UPerNet) do not need compiled ops."
)


class MissingCompiledOpError(RuntimeError):
    """A compiled ``mmcv.ops`` operator was used, but only mmcv-lite (no compiled ops) is installed."""


def _raise_missing(name: str) -> NoReturn:
    raise MissingCompiledOpError(
        f"mmcv.ops.{name} is a compiled mmcv operator, and this environment has mmcv-lite without compiled ops "
        f"(densessl's pure-Python stand-in for mmcv.ops is active). To use a model that needs it, {FULL_MMCV_HINT}"
    )


class _MissingOp:
    """Base of the placeholders: importable and usable in ``isinstance``; instantiating or calling one raises."""

    op_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> NoReturn:
        _raise_missing(cls.op_name)


def _placeholder(name: str) -> type:
    return type(name, (_MissingOp,), {"op_name": name, "__module__": "mmcv.ops"})


def _compiler_version() -> str:
    return "none (mmcv-lite with densessl's mmcv.ops stand-in: no compiled ops)"


def is_standin_active() -> bool:
    """True when ``mmcv.ops`` in this process is densessl's stand-in (not the compiled mmcv ops)."""
    module = sys.modules.get("mmcv.ops")
    return bool(module is not None and getattr(module, STANDIN_MARKER, False))


def install() -> bool:
    """Register the ``mmcv.ops`` stand-in when mmcv is installed without its compiled extension.

    Returns:
        True when the stand-in is active after the call (installed now or before); False when the real ``mmcv.ops``
        is (or will be) used, or mmcv is not installed at all.

    Raises:
        RuntimeError: ``mmcv.ops`` was already imported from a broken install (neither real nor stand-in).
    """
    if is_standin_active():
        return True
    if importlib.util.find_spec("mmcv") is None:
        return False
    if importlib.util.find_spec("mmcv._ext") is not None:
        return False  # full mmcv with compiled ops: use them
    if "mmcv.ops" in sys.modules:
        return False  # someone imported the real package already (it would have failed without _ext)
    import mmcv

    ops_dir = Path(mmcv.__file__).resolve().parent / "ops"
    module = types.ModuleType("mmcv.ops", __doc__)
    module.__path__ = [str(ops_dir)] if ops_dir.is_dir() else []
    module.__package__ = "mmcv.ops"
    setattr(module, STANDIN_MARKER, True)
    module.get_compiler_version = _compiler_version
    module.get_compiling_cuda_version = _compiler_version

    def module_getattr(name: str) -> Any:
        # Dunder lookups (``__file__``, ``__all__``, ...) must fail normally so that tooling is not confused.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(f"module 'mmcv.ops' has no attribute {name!r}")
        placeholder = _placeholder(name)
        setattr(module, name, placeholder)
        return placeholder

    module.__getattr__ = module_getattr
    sys.modules["mmcv.ops"] = module
    mmcv.ops = module
    # mmcv.cnn.bricks.transformer imports this submodule for backward compatibility; the real file needs _ext (and
    # would warn "install mmcv rather than mmcv-lite" on every import), so it gets a placeholder too.
    deform_attn = types.ModuleType("mmcv.ops.multi_scale_deform_attn")
    deform_attn.MultiScaleDeformableAttention = module_getattr("MultiScaleDeformableAttention")
    sys.modules[deform_attn.__name__] = deform_attn
    module.multi_scale_deform_attn = deform_attn
    if (ops_dir / "point_sample.py").is_file():
        # mmcv's own pure-PyTorch point sampling (no compiled code), as mmseg's PointRend and mask utilities expect.
        point_sample_module = importlib.import_module("mmcv.ops.point_sample")
        module.point_sample = point_sample_module.point_sample
        module.SimpleRoIAlign = point_sample_module.SimpleRoIAlign
    return True
