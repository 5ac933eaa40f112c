"""The linear depth probe (densessl.depth): the loss and metrics by hand, the RGB-D folder reader, a probe that
recovers a known depth on generated scenes, and the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from densessl.depth.data import SYNTHETIC_SURFACES, DepthFolder, write_synthetic_rgbd
from densessl.depth.probe import EIGEN_CROP, DepthProbeConfig, _valid, depth_metrics, run_depth_probe, sig_loss
from tests.seg.helpers import MeanColourBackbone


def test_sig_loss_by_hand() -> None:
    target = torch.tensor([1.0, 2.0, 4.0, 8.0])
    valid = torch.ones(4, dtype=torch.bool)
    assert sig_loss(target.clone(), target, valid).item() == pytest.approx(0.0, abs=1e-6)
    # A constant log ratio: var(g) = 0, so the loss is weight * sqrt(0.15) * |log 2|.
    assert sig_loss(2 * target, target, valid, weight=10.0).item() == pytest.approx(10 * 0.15**0.5 * np.log(2),
                                                                                     rel=1e-5)
    g = torch.log(torch.tensor([1.5, 2.0, 3.0, 8.0])) - torch.log(target)
    expected = 10 * torch.sqrt(torch.var(g) + 0.15 * g.mean() ** 2)
    assert sig_loss(torch.tensor([1.5, 2.0, 3.0, 8.0]), target, valid).item() == pytest.approx(expected.item())


def test_depth_metrics_by_hand() -> None:
    target = np.array([[1.0, 2.0], [4.0, 5.0]])
    pred = np.array([[1.1, 2.0], [2.0, 5.0]])
    valid = np.array([[True, True], [True, False]])
    m = depth_metrics(pred, target, valid)
    assert m["abs_rel"] == pytest.approx((0.1 + 0.0 + 0.5) / 3)
    assert m["rmse"] == pytest.approx(np.sqrt((0.01 + 0 + 4) / 3))
    assert m["delta1"] == m["delta2"] == m["delta3"] == pytest.approx(2 / 3)  # the ratio 2 is above 1.25^3


def test_the_eigen_crop_applies_to_480x640_maps_only() -> None:
    cfg = DepthProbeConfig()
    nyu = _valid(np.full((480, 640), 2.0), cfg)
    top, bottom, left, right = EIGEN_CROP
    assert nyu.sum() == (bottom - top) * (right - left) and nyu[top, left] and not nyu[0, 0]
    assert _valid(np.full((48, 64), 2.0), cfg).all()
    assert not _valid(np.array([[0.0, 20.0]]), cfg).any()  # no measurement, beyond max_depth


def test_the_folder_reader(tmp_path: Path) -> None:
    root = write_synthetic_rgbd(tmp_path, {"train": 2})
    sample = DepthFolder(root, "train")[0]
    assert sample.depth.dtype == np.float32 and sample.depth.shape == (48, 64)
    assert set(np.unique(sample.depth[1:])) <= set(SYNTHETIC_SURFACES.values()) and (sample.depth[0] == 0).all()
    (root / "depth" / "train" / "001.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 train images have no depth PNG"):
        DepthFolder(root, "train")
    with pytest.raises(FileNotFoundError, match="no val images"):
        DepthFolder(root, "val")


def test_the_probe_recovers_a_known_depth(tmp_path: Path) -> None:
    """Colour tells depth: a linear head on mean-colour features must recover it (delta1 near 1)."""
    root = write_synthetic_rgbd(tmp_path, {"train": 12, "val": 4})
    cfg = DepthProbeConfig(input_size=48, head="regression", epochs=60, lr=0.05, batch_size=4, upsample=1)
    result = run_depth_probe(MeanColourBackbone(), DepthFolder(root, "train"), DepthFolder(root, "val"), cfg)
    m = result["metrics"]
    assert m["abs_rel"] < 0.1 and m["delta1"] > 0.9, m
    assert result["settings"]["num_train"] == 12 and result["settings"]["head"] == "regression"
    bins = run_depth_probe(MeanColourBackbone(), DepthFolder(root, "train"), DepthFolder(root, "val"),
                           DepthProbeConfig(input_size=48, epochs=2, n_bins=16))
    assert np.isfinite(bins["metrics"]["rmse"]) and bins["settings"]["n_bins"] == 16


def test_the_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from densessl.cli.eval_depth import main

    root = write_synthetic_rgbd(tmp_path / "rgbd", {"train": 3, "val": 2}, size=(64, 96))
    out = tmp_path / "depth.json"
    assert main(["--weights", "random", "--arch", "resnet18", "--data-root", str(root), "--input-size", "64",
                 "--epochs", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert set(record["metrics"]) >= {"rmse", "abs_rel", "delta1"} and record["arch"] == "resnet18"
    assert record["settings"]["protocol"] == "depth_linear" and "RMSE" in capsys.readouterr().out
    assert main(["--weights", "random", "--arch", "resnet18", "--data-root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: densessl-eval-depth: no train images")
