"""tools/eval_seg.py end to end on tiny synthetic data, and its error exit codes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "eval_seg.py"
TINY = ["--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-val", "8", "--input-size", "64",
        "--no-progress", "--device", "cpu"]
KEYS = {"mIoU", "per_class_iou", "pixel_acc", "settings", "weights", "arch", "dataset", "protocol"}


def _load_tool():
    spec = importlib.util.spec_from_file_location("eval_seg_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_linear_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "linear.json"
    cmd = [sys.executable, str(TOOL), "--weights", "random", "--arch", "resnet18", "--protocol", "linear",
           "--epochs", "2", "--out", str(out), "--num-threads", "1", *TINY]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mIoU" in done.stdout and "background" in done.stdout and "settings:" in done.stdout
    record = json.loads(out.read_text())
    assert KEYS <= set(record)
    assert record["protocol"] == "linear" and record["weights"] == "random" and record["dataset"] == "synthetic"
    assert set(record["per_class_iou"]) == {"background", "disk", "square", "triangle", "ring", "cross", "hexagon"}
    assert 0.0 <= record["mIoU"] <= 100.0
    assert record["settings"]["epochs"] == 2 and record["settings"]["input_size"] == 64


def test_cli_knn_with_weights_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from densessl.backbones import DenseBackbone

    weights = tmp_path / "backbone.pt"
    torch.save(DenseBackbone("resnet18").model.state_dict(), weights)
    out = tmp_path / "knn.json"
    code = _load_tool().main(["--weights", str(weights), "--arch", "resnet18", "--protocol", "knn", "--k", "5",
                              "--out", str(out), *TINY])
    assert code == 0
    record = json.loads(out.read_text())
    assert KEYS <= set(record) and record["protocol"] == "knn" and record["weights"] == str(weights)
    assert record["settings"]["k"] == 5 and record["settings"]["memory_patches"] == 16 * 4
    assert "mIoU" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weights", "missing.pt", "--arch", "resnet18", "--dataset", "synthetic"], "weights file not found"),
        (["--weights", "random", "--arch", "no_such_net", "--dataset", "synthetic"], "unknown timm architecture"),
        (["--weights", "random", "--arch", "resnet18", "--dataset", "voc"], "--data-root is required"),
        (["--weights", "random", "--arch", "resnet18", "--dataset", "voc", "--data-root", "/no/such/dir"],
         "not a directory"),
        (["--weights", "random", "--arch", "resnet18", "--dataset", "synthetic", "--k", "0"], "k must be >= 1"),
    ],
)
def test_cli_errors_exit_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    code = _load_tool().main([*args, "--protocol", "knn", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_cli_error_subprocess_has_no_traceback() -> None:
    cmd = [sys.executable, str(TOOL), "--weights", "missing.pt", "--arch", "resnet18", "--dataset", "synthetic",
           "--protocol", "linear"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "weights file not found" in done.stderr
