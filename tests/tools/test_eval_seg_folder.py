"""Issue "your own data": a folder of images + masks + classes.txt evaluates from one command; broken layouts fail
with a message naming the files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _make_folder(root: Path, ignore: int = 255) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    for split, count in (("train", 12), ("val", 4)):
        for i in range(count):
            image = np.zeros((48, 64, 3), dtype=np.uint8)
            mask = np.zeros((48, 64), dtype=np.uint8)
            cut = int(rng.integers(16, 48))
            image[:, :cut] = (200, 30, 30)
            image[:, cut:] = (30, 30, 200)
            mask[:, cut:] = 1
            image[:8, :8] = (30, 200, 30)
            mask[:8, :8] = 2
            mask[-2:, :] = ignore
            (root / "images" / split / "sub").mkdir(parents=True, exist_ok=True)
            (root / "masks" / split / "sub").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / split / "sub" / f"img{i}.jpg", quality=95)
            Image.fromarray(mask).save(root / "masks" / split / "sub" / f"img{i}.png")


def _eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "eval_seg.py"), "--weights", "random", "--arch",
                           "resnet18", "--dataset", "folder", "--input-size", "64", "--no-progress", *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_folder_dataset_from_one_command(tmp_path: Path) -> None:
    _make_folder(tmp_path / "data", ignore=7)
    for protocol in ("knn", "linear"):
        out = tmp_path / f"{protocol}.json"
        proc = _eval("--data-root", str(tmp_path / "data"), "--protocol", protocol, "--ignore-index", "7",
                     "--levels", "2", "--out", str(out), *(("--epochs", "30", "--lr", "0.5") if protocol == "linear" else ()))
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads(out.read_text())
        assert set(result["per_class_iou"]) == {"sky", "road", "car"}
        assert "sky" in proc.stdout and "car" in proc.stdout
        assert result["mIoU"] > 60.0, result


def test_broken_folder_names_the_files(tmp_path: Path) -> None:
    _make_folder(tmp_path / "data")
    (tmp_path / "data" / "images" / "train" / "sub" / "img3.jpg").unlink()
    proc = _eval("--data-root", str(tmp_path / "data"), "--protocol", "knn")
    assert proc.returncode == 2
    assert "img3" in proc.stderr and "without" in proc.stderr
