"""``train.compile``: torch.compile of the backbone gives the same run, checkpoints and export; failures are clear.

The compiled run uses ``resnet10t`` and the two global views only (one crop resolution, so one static graph each
way): compiling it on this 2-core CPU takes ~50 s with an empty inductor cache and ~5 s with a warm one (the cache
lives in ``/tmp/torchinductor_$USER`` and is reused across runs). ResNet-18 on both crop resolutions of the tiny
config gave the same losses too (~110 s cold); the GPU path is exercised by ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch._dynamo
from safetensors.torch import load_file

from densessl.cli.train import main as train_main
from densessl.schema import ConfigError
from densessl.train.config import load_config
from densessl.train.engine import load_checkpoint
from densessl.train.pretrain import CompileFailedError, train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "pretrain" / "_tiny_test.yaml"
SMALL = ["model.arch=resnet10t", "data.multicrop.n_local=0", "train.max_iters=2"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from a clean dynamo state (no cached frames of another test's backend)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_compiled_run_matches_eager_with_the_same_checkpoint_keys(tmp_path: Path) -> None:
    eager = train(load_config(TINY, SMALL), tmp_path / "eager")
    # aot_eager: the same dynamo capture, in-place module compile and AOT autograd as inductor, without minutes of
    # C++ code generation on a cold cache; inductor itself is exercised by the failure test below (up to the C++
    # build) and by benchmarks/gpu_check.sh on a GPU.
    compiled = train(load_config(TINY, [*SMALL, "train.compile=true", "train.compile_backend=aot_eager"]),
                     tmp_path / "compiled")
    assert eager.iteration == compiled.iteration == 2
    # Step 1's loss checks the compiled forward; step 2's loss also the compiled backward of step 1.
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-4)

    eager_state = load_checkpoint(tmp_path / "eager" / "checkpoints" / "last.pt")["model"]
    compiled_state = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.pt")["model"]
    assert list(compiled_state) == list(eager_state)
    assert not any("_orig_mod" in key for key in compiled_state)
    for key, value in eager_state.items():
        if value.is_floating_point():
            torch.testing.assert_close(compiled_state[key], value, rtol=1e-3, atol=1e-4, msg=key)
    exported = [load_file(tmp_path / name / "export" / "model.safetensors") for name in ("eager", "compiled")]
    assert list(exported[0]) == list(exported[1])


def test_compile_failure_is_one_clear_error_naming_the_fix(tmp_path: Path, monkeypatch, capsys) -> None:
    import torch._inductor.config as inductor_config

    # A missing C++ compiler, as on a machine without g++ (the caches off, so nothing compiled earlier is reused).
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "/nonexistent/g++"))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setattr(inductor_config, "autotune_local_cache", False)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
    cfg = load_config(TINY, [*SMALL, "train.compile=true"])
    with pytest.raises(CompileFailedError, match="train.compile=false") as caught:
        train(cfg, tmp_path / "run")
    assert "No working C++ compiler" in str(caught.value)
    torch._dynamo.reset()

    code = train_main([str(TINY), *SMALL, "train.compile=true", "--output-dir", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert code == 2 and "train.compile=false" in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip().splitlines()[-1]]


def test_compile_options_are_checked() -> None:
    cfg = load_config(TINY, ["train.compile=true", "train.compile_mode=max-autotune"])
    assert cfg.train.compile and cfg.train.compile_mode == "max-autotune"
    assert load_config(TINY).train.compile is False
    with pytest.raises(ConfigError, match="train.compile_mode: must be one of"):
        load_config(TINY, ["train.compile_mode=fast"])
