"""Faults at the tools' edges: output paths checked before any compute, segmentation folders checked split by split.

The reader-level cases of a broken segmentation folder are in ``tests/data/test_segmentation.py`` (``test_folder_*``,
both splits in ``test_folder_reports_the_problems_of_both_splits``); here is what the tools print.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# --- 5. visualize_matches: a bad --out fails before the backbone is built ------------------------------------------


def _viz(tmp_path: Path, out: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'densessl[viz]')")
    import densessl.backbones
    from densessl.cli.visualize_matches import main

    def no_compute(*args: object, **kwargs: object) -> None:
        raise AssertionError("the backbone was built before --out was checked")

    monkeypatch.setattr(densessl.backbones, "DenseBackbone", no_compute)
    code = main(["--weights", "random", "--arch", "resnet18", "--dataset", "synthetic", "--out", out])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: densessl-viz: --out "), err
    return err


def test_viz_out_is_an_existing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    err = _viz(tmp_path, str(tmp_path), capsys, monkeypatch)
    assert "is a folder; give a file path, e.g. --out " in err and "viz.png" in err


def test_viz_out_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notes.txt").write_text("x")
    err = _viz(tmp_path, str(tmp_path / "notes.txt" / "sub" / "viz.png"), capsys, monkeypatch)
    assert f"{str(tmp_path / 'notes.txt')!r} is a file, not a folder" in err


def test_viz_out_in_a_folder_that_is_not_writable(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    # Tests run as root, where a chmod would not stop the write: report the folder as not writable instead.
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and access(path, mode, **kw))
    err = _viz(tmp_path, str(locked / "missing" / "viz.png"), capsys, monkeypatch)
    assert f"folder {str(locked)!r} is not writable; choose another output path" in err


# --- 6. eval_seg on a folder: the problems of both splits in one error --------------------------------------------


def _seg_folder(root: Path) -> Path:
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("a\nb\n")
    for split in ("train", "val"):
        for name in ("x", "y"):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 50), (9, 9, 9)).save(root / "images" / split / f"{name}.jpg")
            Image.fromarray(np.zeros((50, 40), dtype=np.uint8)).save(root / "masks" / split / f"{name}.png")
    return root


def test_eval_seg_reports_train_and_val_problems_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from densessl.cli.eval_seg import main

    root = _seg_folder(tmp_path / "data")
    (root / "masks" / "train" / "x.png").unlink()
    Image.fromarray(np.full((50, 40), 7, dtype=np.uint8)).save(root / "masks" / "val" / "y.png")
    code = main(["--weights", "random", "--arch", "resnet18", "--dataset", "folder", "--data-root", str(root),
                 "--protocol", "knn", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"invalid segmentation folder {root} (split 'train'), 1 problem:" in err
    assert "images without a mask (1): images/train/x.jpg" in err
    assert "and split 'val' of the same folder, 1 problem:" in err
    assert "masks/val/y.png has values [7]" in err


@pytest.mark.parametrize("tool", ["eval_seg", "reproduce"])
def test_json_output_path_is_checked_before_any_compute(tool: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    main = importlib.import_module(f"densessl.cli.{tool}").main
    args = (["--weights", "random", "--arch", "resnet18", "--dataset", "synthetic", "--protocol", "knn"]
            if tool == "eval_seg" else ["vicregl_r50_voc_linear", "--weights", "random", "--arch", "resnet18",
                                        "--smoke"])
    code = main([*args, "--out", str(tmp_path)])  # a folder
    err = capsys.readouterr().err
    assert code == 2 and "is a folder" in err and "Traceback" not in err
