"""``benchmarks/objective_overhead.py``: the step options it times are the engine's (channels_last, compile, fp16).

Tiny settings (ResNet-18, batch 2, 64/32 px crops, 64-64 / 32-32 heads, 1 round): about 15 s on 2 CPU cores. The
compile case uses the ``aot_eager`` backend (traces the backbone like inductor, without the C++ build).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import objective_overhead  # noqa: E402

TINY = ["--archs", "resnet18", "--objectives", "vicregl", "--batch", "2", "--repeats", "1", "--global-size", "64",
        "--local-size", "32", "--projector", "64-64", "--local-projector", "32-32", "--no-profile", "--no-loss-only",
        "--threads", "1"]


@pytest.mark.slow
def test_channels_last_and_compile_are_timed_for_backbone_and_objective(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    objective_overhead.main([*TINY, "--channels-last", "--compile", "--compile-backend", "aot_eager", "--out",
                             str(out)])
    arch = json.loads(out.read_text())["archs"][0]
    assert arch["options"] == "channels_last+compile(aot_eager)"
    steps = arch["steps"]
    assert set(steps) == {"backbone:2x64+6x32", "vicregl"}
    assert steps["vicregl"]["target_ratio"] is None  # the 1.10x target is judged only for eager fp32 at full size
    assert all(math.isfinite(s["ratio"]) and s["images_per_s"] > 0 for s in steps.values())


def test_stepper_applies_the_options_like_pretraining() -> None:
    views, _ = objective_overhead.make_batch(2, 64, crops=objective_overhead.MultiCropConfig(
        global_size=64, local_size=32, n_local=2))
    options = objective_overhead.StepOptions(channels_last=True, compile=True, compile_backend="aot_eager")
    st = objective_overhead.Stepper("resnet18", "vicregl", views, heads={"projector": "32-32",
                                                                         "local_projector": "16-16"}, options=options)
    conv = st.backbone.model.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert st.backbone._compiled_call_impl is not None  # nn.Module.compile in place: same parameters, same keys
    assert not any(key.startswith("_orig_mod") for key in st.backbone.state_dict())
    assert not st.scaler.is_enabled()  # the loss scaler is on for fp16 autocast only


def test_fp16_needs_cuda() -> None:
    with pytest.raises(SystemExit):
        objective_overhead.main([*TINY, "--precision", "fp16"])
