"""The pure-Python ``mmcv.ops`` stand-in: mmseg loads on mmcv-lite, op-based heads fail with a clear message."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("mmseg")

from densessl.seg import (
    mmcv_ops_standin,  # noqa: E402
    mmseg_plugin,  # noqa: E402, F401  (installs the stand-in, registers densessl modules)
)

FULL_MMCV = importlib.util.find_spec("mmcv._ext") is not None
needs_standin = pytest.mark.skipif(FULL_MMCV, reason="full mmcv with compiled ops installed: the real ops are used")


@needs_standin
def test_standin_is_active_and_mmseg_models_import() -> None:
    assert mmcv_ops_standin.is_standin_active()
    assert mmcv_ops_standin.install() is True  # idempotent
    import mmseg.models  # noqa: F401
    from mmcv.ops import get_compiler_version

    assert "no compiled ops" in get_compiler_version()


@needs_standin
def test_point_sample_is_mmcvs_pure_pytorch_code() -> None:
    from mmcv.ops import point_sample

    features = torch.randn(2, 3, 5, 7)
    points = torch.rand(2, 11, 2)  # (x, y) in [0, 1]
    expected = F.grid_sample(features, (2 * points - 1).unsqueeze(2), align_corners=False).squeeze(3)
    torch.testing.assert_close(point_sample(features, points), expected)


@needs_standin
@pytest.mark.parametrize("head_type, op", [("PSAHead", "PSAMask"), ("CCHead", "CrissCrossAttention")])
def test_heads_that_need_compiled_ops_name_the_full_build(head_type: str, op: str) -> None:
    from mmseg.registry import MODELS

    cfg = {"type": head_type, "in_channels": 8, "channels": 4, "num_classes": 3}
    if head_type == "PSAHead":
        cfg["mask_size"] = (4, 4)
    with pytest.raises(mmcv_ops_standin.MissingCompiledOpError, match=rf"mmcv\.ops\.{op}") as info:
        MODELS.build(cfg)
    assert "scripts/build_mmcv.sh" in str(info.value)


@needs_standin
def test_placeholders_work_in_isinstance_checks() -> None:
    from mmcv.ops import DeformConv2d

    assert not isinstance(torch.nn.Conv2d(1, 1, 1), DeformConv2d)
    with pytest.raises(mmcv_ops_standin.MissingCompiledOpError, match="DeformConv2d"):
        DeformConv2d(1, 1, 3)


def test_importing_densessl_eval_does_not_install_the_standin() -> None:
    code = "import sys, densessl.seg.mmcv_ops_standin; assert 'mmcv.ops' not in sys.modules and 'mmcv' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
