"""Pretraining end to end: short runs, exact resume after SIGKILL, signals, NaN stop, torchrun, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from densessl.train.config import load_config
from densessl.train.engine import ResumeError, load_checkpoint
from densessl.train.pretrain import NonFiniteLossError, train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "pretrain" / "_tiny_test.yaml"
TRAIN = ROOT / "tools" / "train.py"


def _run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


KILLED_RUN = """
import os, signal, sys
from densessl.train.config import load_config
from densessl.train.pretrain import train
config, run_dir, kill_after, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
kill = lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == kill_after else None
train(load_config(config, overrides), run_dir, on_step=kill)
"""


def _run_killed(run_dir: Path, kill_after: int, *overrides: str) -> subprocess.CompletedProcess:
    """Pretrain in a subprocess that SIGKILLs itself right after step ``kill_after`` (an on_step callback)."""
    return subprocess.run([sys.executable, "-c", KILLED_RUN, str(TINY), str(run_dir), str(kill_after), *overrides],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_three_iterations_and_export_loads_into_timm(tmp_path: Path, arch: str) -> None:
    cfg = load_config(TINY, [f"model.arch={arch}", "train.max_iters=3"])
    result = train(cfg, tmp_path / "run")
    assert result.iteration == 3 and not result.interrupted and np.isfinite(result.last_loss)
    run = tmp_path / "run"
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "last.pt").exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert {"loss", "inv_local", "var_global", "lr", "images_per_s", "epoch"} <= set(records[0])
    state = load_file(run / "export" / "model.safetensors")
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    model.load_state_dict(state)  # strict
    from_timm = timm.create_model(f"local-dir:{run / 'export'}", pretrained=True)  # timm reads the export itself
    assert all(torch.equal(v, state[k]) for k, v in from_timm.state_dict().items())
    with_head = timm.create_model(arch, pretrained=False)
    missing, unexpected = with_head.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("fc.", "head.")) for k in missing)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")  # weights_only=True
    assert ckpt["iteration"] == 3 and ckpt["config"]["model"]["arch"] == arch


def test_sigkill_then_resume_is_bit_identical(tmp_path: Path) -> None:
    common = [str(TINY), "train.max_iters=6", "train.checkpoint_every_iters=2"]
    reference = _run_cli(*common, "data.num_workers=2", "--output-dir", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed = _run_killed(tmp_path / "run", 3, *common[1:])
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"] == 2
    resumed = _run_cli(*common, "--output-dir", str(tmp_path / "run"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref = load_file(tmp_path / "ref" / "export" / "model.safetensors")
    got = load_file(tmp_path / "run" / "export" / "model.safetensors")
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref), "resumed weights differ from the uninterrupted run"
    ref_heads = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")["model"]
    got_heads = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(ref_heads[k], got_heads[k]) for k in ref_heads)
    iterations = [json.loads(line)["iteration"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert iterations == [1, 2, 3, 4, 5, 6]


def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    cfg = load_config(TINY, ["train.max_iters=5"])

    def terminate_after_second_step(step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    result = train(cfg, tmp_path / "run", on_step=terminate_after_second_step)
    assert result.interrupted and result.iteration == 2 and result.backbone_path is None
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"] == 2
    resumed = train(cfg, tmp_path / "run", resume=True)
    assert resumed.iteration == 5 and resumed.backbone_path is not None


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    cfg = load_config(TINY, ["train.max_iters=4", "train.checkpoint_every_iters=1", "optim.base_lr=1e30"])
    with pytest.raises(NonFiniteLossError, match="non-finite loss at iteration"):
        train(cfg, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_refuses_to_overwrite_and_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    cfg = load_config(TINY, ["train.max_iters=1"])
    train(cfg, tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, tmp_path / "run")
    with pytest.raises(ResumeError, match="no checkpoint"):
        train(cfg, tmp_path / "other", resume=True)
    assert not (tmp_path / "other").exists()  # a refused start writes nothing
    assert train(cfg, tmp_path / "auto", resume="auto").iteration == 1  # --resume auto: starts
    more = load_config(TINY, ["train.max_iters=2"])
    assert train(more, tmp_path / "auto", resume="auto").iteration == 2  # --resume auto: continues


def test_image_folder_skips_and_counts_corrupt_files(tmp_path: Path) -> None:
    folder = tmp_path / "images" / "class_a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(folder / "gray.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    cfg = load_config(TINY, ["data.source=folder", f"data.root={tmp_path / 'images'}", "train.max_iters=2",
                             "data.batch_size=5"])
    train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped_images"] >= 1
    strict = load_config(TINY, ["data.source=folder", f"data.root={tmp_path / 'images'}", "data.strict=true",
                                "train.max_iters=2", "data.batch_size=10"])
    with pytest.raises(ValueError, match="broken.jpg"):
        train(strict, tmp_path / "strict")


def test_cli_config_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from densessl.cli.train import main  # in-process: the same code path as the console command, without 4 startups

    def run(*args: str) -> tuple[int, str]:
        code = main([str(TINY), *args])
        return code, capsys.readouterr().err

    code, err = run("optim.base_lrr=0.1", "--output-dir", str(tmp_path / "a"))
    assert code == 2 and "optim.base_lrr" in err and "base_lr" in err
    code, err = run("data.batch_size=many", "--output-dir", str(tmp_path / "b"))
    assert code == 2 and "data.batch_size" in err
    code, err = run("vicregl.alpha=2", "--output-dir", str(tmp_path / "c"))
    assert code == 2 and "alpha" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run("data.source=folder", f"data.root={empty}", "--output-dir", str(tmp_path / "d"))
    assert code == 2 and "no images" in err and "Traceback" not in err


def test_torchrun_two_processes(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(TRAIN), str(TINY), "train.max_iters=2", "train.device=cpu", "--output-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "export" / "model.safetensors").exists()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)


def test_accumulation_and_channels_last_run(tmp_path: Path) -> None:
    cfg = load_config(TINY, ["train.max_iters=2", "optim.accumulate=2", "train.channels_last=true",
                             "optim.name=adamw", "optim.clip_grad=1.0", "optim.base_lr=0.001"])
    result = train(cfg, tmp_path / "run")
    assert result.iteration == 2 and np.isfinite(result.last_loss)
    with pytest.raises(ValueError, match="divisible"):
        train(load_config(TINY, ["optim.accumulate=3"]), tmp_path / "bad")


def test_diagnostics_are_logged_during_pretraining(tmp_path: Path) -> None:
    cfg = load_config(TINY, ["train.max_iters=2", "train.diagnostics_every=2", "train.diagnostics_images=4",
                             "train.diagnostics_size=64"])
    train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    diagnostics = [r for r in records if "match_precision" in r]
    assert [r["iteration"] for r in diagnostics] == [0, 2]
    for r in diagnostics:
        assert 0.0 <= r["match_precision"] <= 1.0 and r["rankme_global"] >= 1.0 and r["rankme_local"] >= 1.0
        assert r["std_global"] > 0 and r["std_local"] > 0


def test_tensorboard_event_files_and_progress_lines(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")  # the tensorboard extra (installed by scripts/test.sh)
    cfg = load_config(TINY, ["train.max_iters=2", "train.tensorboard=true"])
    train(cfg, tmp_path / "run")
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "iteration 2/2 (100%) | loss" in log and "ETA" in log
