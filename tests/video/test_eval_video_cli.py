"""densessl-eval-video end to end on a tiny generated DAVIS folder, and its one-line errors with exit code 2."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densessl.cli.eval_video import main
from tests.video import SEQUENCES, write_davis

REPO = Path(__file__).resolve().parents[2]
FAST = ["--weights", "random", "--arch", "resnet18", "--short-side", "64", "--no-progress", "--device", "cpu"]
KEYS = {"J&F", "J", "F", "per_sequence", "settings", "weights", "weights_source", "arch", "seconds"}
SETTINGS = {"short_side", "n_last_frames", "neighborhood", "topk", "temperature", "level", "stride", "year",
            "sequences", "max_frames", "device", "seed"}


def test_end_to_end_2016_writes_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_davis(tmp_path / "davis", "2016")
    out = tmp_path / "results" / "video.json"
    assert main([*FAST, "--data-root", str(root), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert KEYS <= set(record) and SETTINGS <= set(record["settings"])
    assert record["weights"] == "random" and record["weights_source"] == "random init" and record["arch"] == "resnet18"
    assert set(record["per_sequence"]) == set(SEQUENCES)
    for scores in record["per_sequence"].values():
        assert scores["frames"] == 3 and 0 <= scores["J"] <= 100 and 0 <= scores["F"] <= 100
        assert scores["J&F"] == pytest.approx((scores["J"] + scores["F"]) / 2)
    assert set(record["J"]) == {"mean", "recall"} and set(record["F"]) == {"mean", "recall"}
    assert record["J&F"] == pytest.approx((record["J"]["mean"] + record["F"]["mean"]) / 2)
    settings = record["settings"]
    assert settings["short_side"] == 64 and settings["stride"] == 32 and settings["year"] == "2016"
    assert settings["sequences"] == list(SEQUENCES) and settings["device"] == "cpu" and settings["seed"] == 0
    assert (settings["topk"], settings["n_last_frames"], settings["neighborhood"]) == (5, 7, 12)
    printed = capsys.readouterr().out
    assert "J&F-mean" in printed and SEQUENCES[0] in printed and "J mean" in printed


def test_2017_subset_with_a_weights_file_and_saved_masks(tmp_path: Path) -> None:
    from densessl.backbones import DenseBackbone

    root = write_davis(tmp_path / "davis", "2017", frames=4)
    weights = tmp_path / "backbone.pt"
    torch.save(DenseBackbone("resnet18").model.state_dict(), weights)
    out, masks = tmp_path / "video.json", tmp_path / "masks"
    args = ["--weights", str(weights), "--arch", "resnet18", "--data-root", str(root), "--year", "2017",
            "--sequences", SEQUENCES[1], "--max-frames", "3", "--short-side", "64", "--topk", "3",
            "--no-progress", "--device", "cpu", "--out", str(out), "--save-masks", str(masks)]
    assert main(args) == 0
    record = json.loads(out.read_text())
    assert list(record["per_sequence"]) == [SEQUENCES[1]] and record["weights_source"] == "timm state dict"
    assert record["per_sequence"][SEQUENCES[1]]["frames"] == 3 and record["per_sequence"][SEQUENCES[1]]["objects"] == 2
    assert record["settings"]["max_frames"] == 3 and record["settings"]["topk"] == 3
    written = sorted(p.name for p in (masks / SEQUENCES[1]).iterdir())
    assert written == ["00000.png", "00001.png", "00002.png"]
    with Image.open(masks / SEQUENCES[1] / "00000.png") as first:
        assert first.mode == "P" and set(np.unique(np.asarray(first))) == {0, 1, 2}  # frame 0: the annotation


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data-root", "{tmp}/no_such_dir"], "--data-root"),
        (["--data-root", "{root}", "--sequences", "blackswam"], "did you mean: blackswan"),
        (["--data-root", "{root}", "--year", "2017"], "ImageSets/2017/val.txt"),
        (["--data-root", "{root}", "--weights", "{tmp}/missing.pt"], "weights file not found"),
        (["--data-root", "{root}", "--arch", "resnt18"], "unknown timm architecture 'resnt18'; did you mean"),
        (["--data-root", "{root}", "--topk", "0"], "--topk must be >= 1"),
        (["--data-root", "{root}", "--max-frames", "2"], "--max-frames must be >= 3"),
        (["--data-root", "{root}", "--level", "7"], "--level 7: levels [7] out of range"),
        (["--data-root", "{root}", "--out", "{tmp}"], "is a folder"),
    ],
)
def test_errors_are_one_line_and_exit_2(extra: list[str], message: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    root = write_davis(tmp_path / "davis", "2016")
    out = tmp_path / "never.json"
    args = [*FAST, "--out", str(out), *[a.format(tmp=tmp_path, root=root) for a in extra]]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: densessl-eval-video: ") and message in err[0], err
    assert not out.exists()


def test_random_weights_need_an_arch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_davis(tmp_path, "2016")
    assert main(["--weights", "random", "--data-root", str(root), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --arch" in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_davis(tmp_path, "2016")
    out = tmp_path / "never.json"
    args = [*FAST[:-2], "--device", "cuda", "--data-root", str(root), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: densessl-eval-video: --device cuda: CUDA is not available")
    assert not out.exists()


def test_usage_errors_are_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--weights", "random"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: densessl-eval-video: the following arguments are required")


def test_the_tools_wrapper_runs_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["eval_video.py", *FAST, "--data-root", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "tools" / "eval_video.py"), run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: densessl-eval-video: --data-root")


def test_first_frame_baseline_repeats_the_first_mask(tmp_path: Path) -> None:
    root = write_davis(tmp_path / "davis", "2016")
    out = tmp_path / "first.json"
    assert main(["--weights", "first-frame", "--data-root", str(root), "--no-progress", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    # The 16x16 square moved 4 px by frame 1 (the one scored frame of 3): IoU = 12*16 / (2*256 - 12*16) = 0.6.
    assert record["J"]["mean"] == pytest.approx(60.0)
    assert record["arch"] is None and record["settings"]["stride"] is None
    assert record["weights_source"].startswith("no features")
