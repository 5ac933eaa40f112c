"""densessl-compare-evals: columns labelled by run folder, files of different protocols refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densessl.cli.compare_evals import main


def _result(path: Path, weights: str, protocol: str = "linear", miou: float = 40.0) -> str:
    path.write_text(json.dumps({"mIoU": miou, "pixel_acc": 80.0, "per_class_iou": {"sky": 90.0}, "weights": weights,
                                "protocol": protocol, "dataset": "folder", "settings": {"input_size": 224}}))
    return str(path)


def test_columns_are_labelled_by_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _result(tmp_path / "a.json", "runs/vicregl_s0/export/model.safetensors")
    b = _result(tmp_path / "b.json", "random", miou=30.0)
    c = _result(tmp_path / "c.json", "runs/vicreg_s0/checkpoints/last.pt")
    d = _result(tmp_path / "d.json", "runs/dense_s1")  # a run folder
    e = _result(tmp_path / "e.json", "runs/old_s2/backbone.safetensors")  # the older export layout
    assert main([a, b, c, d, e]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header == ["vicregl_s0", "random", "vicreg_s0", "dense_s1", "old_s2"]


def test_different_protocols_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _result(tmp_path / "a.json", "runs/x", protocol="linear")
    b = _result(tmp_path / "b.json", "runs/y", protocol="knn")
    assert main([a, b]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: densessl-compare-evals: the files are evaluations of different")
    assert main([a, b, "--allow-different"]) == 0
