"""tools/visualize_matches.py: one real CLI run and the error exit codes (in-process, to stay fast)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'densessl[viz]')")

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "visualize_matches.py"


def _load_tool():
    return importlib.import_module("densessl.cli.visualize_matches")


def test_cli_writes_the_figure_and_prints_precision(tmp_path: Path) -> None:
    out = tmp_path / "viz.png"
    result = subprocess.run(
        [sys.executable, str(TOOL), "--weights", "random", "--arch", "resnet18", "--dataset", "synthetic",
         "--size", "96", "--scene-size", "128", "--out", str(out), "--dpi", "60"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "match precision (view A -> B):" in result.stdout
    with Image.open(out) as png:
        assert png.size == (14 * 60, 7 * 60)


def test_cli_with_an_image_file_augment_and_dataset_precision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "in.png"
    Image.new("RGB", (120, 90), (30, 140, 200)).save(image)
    out = tmp_path / "viz.png"
    code = _load_tool().main(["--weights", "random", "--arch", "resnet18", "--image", str(image), "--out", str(out),
                              "--size", "64", "--dpi", "40", "--augment", "--seed", "2",
                              "--scene-size", "64", "--precision-images", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.exists() and "match precision (view A -> B)" in captured.out
    assert "dataset match precision over 2 synthetic val images" in captured.out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--weights", "random", "--arch", "resnet18", "--image", "/nonexistent.png"], "image file not found"),
        (["--weights", "/nonexistent.pt", "--arch", "resnet18", "--dataset", "synthetic"], "weights file not found"),
        (["--weights", "random", "--arch", "not_a_model", "--dataset", "synthetic"], "unknown timm architecture"),
        (["--weights", "random", "--arch", "resnet18", "--dataset", "synthetic", "--level", "9"], "out of range"),
        (["--weights", "random", "--arch", "resnet18", "--dataset", "synthetic", "--query", "2", "0"], "--query"),
        (["--weights", "random", "--arch", "resnet18"], "one of the arguments --image --dataset is required"),
    ],
)
def test_cli_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                         message: str) -> None:
    tool = _load_tool()
    try:
        code = tool.main([*args, "--out", str(tmp_path / "x.png")])
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()


def test_cli_bad_weights_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not a checkpoint")
    code = _load_tool().main(["--weights", str(weights), "--arch", "resnet18", "--dataset", "synthetic",
                              "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "is not a torch or safetensors weights file" in err and len(err.strip().splitlines()) == 1


def test_cli_takes_the_arch_from_the_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from densessl.backbones import DenseBackbone
    from densessl.weights import save_backbone

    exported = save_backbone(DenseBackbone("resnet18").model, tmp_path / "run", "resnet18")
    out = tmp_path / "viz.png"
    code = _load_tool().main(["--weights", str(exported.safetensors), "--dataset", "synthetic", "--size", "64",
                              "--scene-size", "64", "--dpi", "30", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.exists() and "match precision (view A -> B)" in captured.out
    for args, message in [
        (["--weights", str(exported.folder), "--arch", "resnet34"],
         "--arch resnet34 does not match weights file"),
        (["--weights", str(exported.folder), "--arch", "resnet34"],
         "the weights are for 'resnet18' (from model.safetensors metadata)"),
        (["--weights", "random"], "--weights random needs --arch"),
    ]:
        code = _load_tool().main([*args, "--dataset", "synthetic", "--out", str(tmp_path / "x.png")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
