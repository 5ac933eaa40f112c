"""SIGKILL at the worst moments -- in the middle of a checkpoint write, and between the two renames that rotate
``last.pt`` -- then ``--resume``: both recipes end bit-identical to an uninterrupted run (CPU)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from densessl.train.engine import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN = ROOT / "configs" / "pretrain" / "_tiny_test.yaml"
DETECTION = ROOT / "configs" / "detection" / "faster_rcnn_fpn_r18_synthetic.yaml"
PRETRAIN_OVERRIDES = ["train.max_iters=6", "train.checkpoint_every_iters=1"]
DETECTION_OVERRIDES = [
    "data.synthetic_size=32", "data.min_size_train=[32]", "data.min_size_test=32", "data.max_size=32",
    "data.synthetic_train_images=8", "data.synthetic_val_images=2", "data.num_workers=0", "train.batch_size=2",
    "train.progress=false", "train.log_every=1", "optim.warmup_iters=2", "optim.steps=[]", "model.out_channels=16",
    "model.representation_size=32", "model.anchor_sizes=[8,16,32,64,128]", "model.rpn_proposals_train=32",
    "model.rpn_proposals_test=32", "model.roi_batch_size=32", "train.checkpoint_every=1", "train.max_iters=4",
]

# Runs a recipe with --resume auto semantics; optionally dies (SIGKILL) at the N-th checkpoint write, either halfway
# through writing the temporary file ("write") or between the renames that rotate last.pt ("rotate").
SCRIPT = """
import io, os, signal, sys, torch
recipe, config, run_dir, mode, nth = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
overrides = sys.argv[6:]
count = {"save": 0, "replace": 0}
real_save, real_replace = torch.save, os.replace

def save(obj, f, *args, **kwargs):
    count["save"] += 1
    if mode == "write" and count["save"] == nth and hasattr(f, "write"):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2]); f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if str(dst).endswith("previous.pt"):
        count["replace"] += 1
        if mode == "rotate" and count["replace"] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

torch.save, os.replace = save, replace
if recipe == "pretrain":
    from densessl.train.config import load_config
    from densessl.train.pretrain import train
    train(load_config(config, overrides), run_dir, resume="auto")
else:
    from densessl.config_io import load_config
    from densessl.det.finetune import DetConfig, finetune
    finetune(load_config(DetConfig, config, overrides), run_dir, resume="auto")
"""


def _run(recipe: str, run_dir: Path, mode: str = "none", nth: int = 0) -> subprocess.CompletedProcess:
    config, overrides = (PRETRAIN, PRETRAIN_OVERRIDES) if recipe == "pretrain" else (DETECTION, DETECTION_OVERRIDES)
    command = [sys.executable, "-c", SCRIPT, recipe, str(config), str(run_dir), mode, str(nth), *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One uninterrupted run per recipe (same process settings as the killed ones)."""
    out = {}
    for recipe in ("pretrain", "detection"):
        run_dir = tmp_path_factory.mktemp(f"ref-{recipe}") / "run"
        result = _run(recipe, run_dir)
        assert result.returncode == 0, result.stderr[-3000:]
        out[recipe] = run_dir
    return out


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["pretrain", "detection"])
@pytest.mark.parametrize("mode, nth", [("write", 3), ("rotate", 2)])
def test_sigkill_during_a_checkpoint_write_then_resume_is_bit_identical(
        references: dict[str, Path], tmp_path: Path, recipe: str, mode: str, nth: int) -> None:
    run_dir = tmp_path / "run"
    killed = _run(recipe, run_dir, mode, nth)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    if mode == "write":
        assert list(checkpoints.glob(".*.tmp")), "the kill should leave a half-written temporary file"
    else:
        assert not (checkpoints / "last.pt").exists() and (checkpoints / "last.pt.new").is_file()
    resumed = _run(recipe, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(checkpoints.glob(".*.tmp")), "stale temporary files are swept at start-up"
    ref = load_checkpoint(references[recipe] / "checkpoints" / "last.pt")
    got = load_checkpoint(checkpoints / "last.pt")
    assert ref["iteration"] == got["iteration"]
    assert ref["model"].keys() == got["model"].keys()
    assert all(torch.equal(ref["model"][k], got["model"][k]) for k in ref["model"]), "resumed weights differ"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in lines if "loss" in r]
    assert iterations == sorted(set(iterations)), "an iteration was logged twice"
