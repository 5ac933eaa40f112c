"""tools/eval_seg.py end to end on tiny synthetic data, weights files without --arch, and its error exit codes."""

from __future__ import annotations

import importlib
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
KEYS = {"mIoU", "per_class_iou", "pixel_acc", "settings", "weights", "weights_source", "arch", "dataset", "protocol"}


def _load_tool():
    return importlib.import_module("densessl.cli.eval_seg")


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
        (["--weights", "random", "--arch", "resnet18", "--dataset", "synthetic", "--k", "0"], "knn.k: must be >= 1"),
    ],
)
def test_cli_errors_exit_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    code = _load_tool().main([*args, "--protocol", "knn", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def _training_checkpoint(path: Path, arch: str = "resnet18") -> None:
    """A checkpoint laid out as pretraining saves it: the Pretrainer state dict under "model"."""
    from densessl.backbones import DenseBackbone

    model = {f"backbone.model.{k}": v for k, v in DenseBackbone(arch).model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "densessl-checkpoint-v2", "recipe": "pretrain", "iteration": 4, "arch": arch,
                "config": {"model": {"arch": arch}}, "model": model}, path)


@pytest.mark.parametrize("kind", ["export", "checkpoint"])
def test_cli_takes_the_arch_from_the_weights_file(tmp_path: Path, kind: str) -> None:
    from densessl.backbones import DenseBackbone
    from densessl.weights import save_backbone

    if kind == "export":
        weights = save_backbone(DenseBackbone("resnet18").model, tmp_path / "run", "resnet18", {"x": 1}).safetensors
        source = "densessl backbone export"
    else:
        weights = tmp_path / "run" / "checkpoints" / "last.pt"
        _training_checkpoint(weights)
        source = "densessl training checkpoint (iteration 4)"
    out = tmp_path / "knn.json"
    code = _load_tool().main(["--weights", str(weights), "--protocol", "knn", "--k", "5", "--out", str(out), *TINY])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["arch"] == "resnet18" and record["weights_source"] == source


def test_cli_arch_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from densessl.backbones import DenseBackbone
    from densessl.weights import save_backbone

    exported = save_backbone(DenseBackbone("resnet18").model, tmp_path / "run", "resnet18").safetensors
    torch.save(DenseBackbone("resnet18").model.state_dict(), tmp_path / "plain.pt")
    (tmp_path / "notes.pt").write_text("not weights\n")
    cases = [
        (["--weights", str(exported), "--arch", "resnet50"],
         (f"--arch resnet50 does not match weights file '{exported}': the weights are for 'resnet18' (from "
          "model.safetensors metadata); drop --arch")),
        (["--weights", str(tmp_path / "plain.pt")], "(timm state dict) states no architecture; pass --arch"),
        (["--weights", "random"], "random weights need an architecture: pass --arch"),
        (["--weights", str(tmp_path / "notes.pt")], "is not a torch or safetensors weights file"),
        (["--weights", str(tmp_path)], "holds no weights file (looked for model.safetensors"),
        (["--weights", "random", "--arch", "resnt18"], "unknown timm architecture 'resnt18'; did you mean: resnet18"),
    ]
    for args, message in cases:
        code = _load_tool().main([*args, "--dataset", "synthetic", "--protocol", "knn", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, args
        assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], (args, err)


def test_cli_error_subprocess_has_no_traceback() -> None:
    cmd = [sys.executable, str(TOOL), "--weights", "missing.pt", "--arch", "resnet18", "--dataset", "synthetic",
           "--protocol", "linear"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "weights file not found" in done.stderr


# --------------------------------------------------------------------------- #
# --config, overrides, --print-config (the EvalSegConfig schema, loaded by densessl.config_io)
# --------------------------------------------------------------------------- #

TINY_YAML = """\
weights: random
arch: resnet18
dataset: synthetic
protocol: knn
features: {input_size: 64, device: cpu, progress: false}
knn: {k: 5}
synthetic: {train_images: 16, val_images: 8}
"""


def test_cli_runs_from_a_config_file_with_an_override_and_a_flag(tmp_path: Path) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(TINY_YAML)
    out = tmp_path / "knn.json"
    code = _load_tool().main(["--config", str(config), "knn.k=4", "knn.temperature=0.1", "--out", str(out),
                              "--temperature", "0.05"])
    assert code == 0
    record = json.loads(out.read_text())
    assert KEYS <= set(record) and record["protocol"] == "knn" and record["arch"] == "resnet18"
    settings = record["settings"]
    assert settings["k"] == 4  # the override wins over the file
    assert settings["temperature"] == 0.05  # the flag wins over the override
    assert settings["input_size"] == 64 and settings["memory_patches"] == 16 * 4


def _print_config(args: list[str], capsys: pytest.CaptureFixture) -> dict:
    import yaml

    code = _load_tool().main([*args, "--print-config"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return yaml.safe_load(captured.out)


def test_print_config_resolves_defaults_file_overrides_and_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from densessl.config_io import from_dict
    from densessl.seg.config import EvalSegConfig

    defaults = _print_config([], capsys)  # nothing required for printing: a template of every key
    assert defaults["weights"] is None and defaults["features"]["input_size"] == 128 and defaults["knn"]["k"] == 30
    assert from_dict(EvalSegConfig, defaults) == EvalSegConfig()

    config = tmp_path / "eval.yaml"
    config.write_text(TINY_YAML)
    printed = _print_config(["--config", str(config), "linear.epochs=3", "--levels", "2", "3", "--seed", "7",
                             "--no-progress", "--faiss", "--synthetic-size", "96"], capsys)
    assert printed["weights"] == "random" and printed["protocol"] == "knn" and printed["seed"] == 7
    assert printed["knn"]["k"] == 5 and printed["knn"]["use_faiss"] is True and printed["linear"]["epochs"] == 3
    assert printed["features"] == {**defaults["features"], "input_size": 64, "device": "cpu", "progress": False,
                                   "levels": [2, 3]}
    assert printed["synthetic"] == {"train_images": 16, "val_images": 8, "size": 96}
    # The flags alone give the same config as before configs existed, defaults included.
    flags = _print_config(["--weights", "random", "--dataset", "voc", "--protocol", "linear", "--ignore-index", "7"],
                          capsys)
    assert flags == {**defaults, "weights": "random", "dataset": "voc", "protocol": "linear", "ignore_index": 7}


@pytest.mark.parametrize(
    ("yaml_text", "args", "message"),
    [
        ("knn: {kk: 5}\n", [], "config error: knn.kk: unknown key; did you mean 'k'?"),
        ("", ["featurs.input_size=64"], "config error: featurs: unknown key; did you mean 'features'?"),
        ("protocol: knnn\n", [], "config error: protocol: must be one of 'linear', 'knn' (or null), got 'knnn'; "
                                 "did you mean 'knn'?"),
        ("", ["linear.optimizer=adam"], "config error: linear.optimizer: must be one of 'sgd', 'adamw', got 'adam'; "
                                        "did you mean 'adamw'?"),
        ("features: {input_size: big}\n", [], "config error: features.input_size: expected int, got 'big' (str)"),
        ("knn: {k: 5}\nknn: {k: 6}\n", [], "duplicate key 'knn'"),
        ("", ["knn.k=0"], "config error: knn.k: must be >= 1, got 0"),
        ("weights: random\n", [], "config error: dataset, protocol: required; pass --dataset, --protocol"),
    ],
)
def test_cli_config_errors_exit_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture, yaml_text: str,
                                                 args: list[str], message: str) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(yaml_text)
    code = _load_tool().main(["--config", str(config), *args, "--print-config"] if "required" not in message
                             else ["--config", str(config), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err


def test_cli_missing_config_file_and_missing_flags(capsys: pytest.CaptureFixture) -> None:
    assert _load_tool().main(["--config", "no/such/eval.yaml"]) == 2
    assert "config error: no/such/eval.yaml: config file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # without a config file, argparse's own message, as before
        _load_tool().main(["--weights", "random", "--dataset", "synthetic"])
    assert info.value.code == 2 and "the following arguments are required: --protocol" in capsys.readouterr().err


def test_every_flag_sets_a_key_of_the_schema() -> None:
    from densessl.config_io import merge
    from densessl.seg.config import EvalSegConfig

    tool = _load_tool()
    dests = {action.dest for action in tool._parser()._actions} - {"help", "overrides", "config", "print_config",
                                                                      "no_progress", "faiss"}
    assert dests == set(tool._FLAG_KEYS)
    for key in tool._FLAG_KEYS.values():  # each key exists (merge raises on an unknown key)
        *parents, leaf = key.split(".")
        node = EvalSegConfig()
        for part in parents:
            node = getattr(node, part)
        merge(node, {leaf: getattr(node, leaf)})
