"""The conventions every console command shares (densessl.cli.common): --resume never takes the next argument, and an
unavailable device is one error line naming the command, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from densessl.cli import common

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "pretrain" / "_tiny_test.yaml"
TINY_DET = ROOT / "configs" / "detection" / "faster_rcnn_fpn_r18_synthetic.yaml"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")


def test_explicit_resume_writes_a_bare_resume_as_yes() -> None:
    assert common.explicit_resume(["cfg.yaml", "--resume", "train.epochs=4"]) == [
        "cfg.yaml", "--resume=yes", "train.epochs=4"]
    assert common.explicit_resume(["--resume", "auto", "x=1"]) == ["--resume", "auto", "x=1"]
    assert common.explicit_resume(["--resume"]) == ["--resume=yes"]
    assert common.explicit_resume(["--resume", "--allow-config-change"]) == ["--resume=yes", "--allow-config-change"]


@pytest.mark.parametrize(("module", "config", "override", "printed"), [
    ("densessl.cli.train", TINY, "train.epochs=4", "epochs: 4"),
    ("densessl.cli.finetune_det", TINY_DET, "optim.lr=0.004", "lr: 0.004"),
])
def test_resume_does_not_swallow_the_next_override(module: str, config: Path, override: str, printed: str,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    main = importlib.import_module(module).main
    assert main([str(config), "--output-dir", str(tmp_path / "run"), "--resume", override, "--print-config"]) == 0
    assert printed in capsys.readouterr().out
    assert main([str(config), "--resume", "auto", override, "--print-config"]) == 0  # a mode is still a mode
    assert printed in capsys.readouterr().out


@NO_CUDA
def test_eval_seg_on_an_unavailable_device_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    from densessl.cli.eval_seg import main

    code = main(["--weights", "random", "--arch", "resnet18", "--dataset", "synthetic", "--protocol", "knn",
                 "--device", "cuda", "--synthetic-train", "2", "--synthetic-val", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: densessl-eval-seg: --device cuda: CUDA is not available"), err


@NO_CUDA
@pytest.mark.parametrize(("card", "override", "key"), [
    ("dino_vits16_voc_knn", "seg.features.device=cuda", "--device cuda"),
    ("densecl_r50_voc_det_c4", "detection.train.device=cuda", "train.device cuda"),
])
def test_reproduce_on_an_unavailable_device_is_one_error_line(card: str, override: str, key: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from densessl.cli.reproduce import main

    code = main([card, "--smoke", "--weights", "random", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: densessl-reproduce: {key}: CUDA is not available"), err


def test_an_architecture_typo_fails_at_load_before_the_run_folder_exists(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from densessl.cli.train import main

    assert main([str(TINY), "model.arch=resnet19", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: densessl-train: config error: model.arch: unknown timm architecture 'resnet19'"), err
    assert "did you mean: resnet18" in err[0] and not (tmp_path / "run").exists()


@pytest.mark.parametrize(("module", "shown", "foreign"), [
    ("densessl.cli.train", "optim.base_lr=", "train.max_iters="),
    ("densessl.cli.finetune_det", "optim.lr=", "optim.base_lr="),
])
def test_help_shows_only_the_tools_own_keys(module: str, shown: str, foreign: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    out = capsys.readouterr().out
    assert shown in out and foreign not in out


def test_list_and_bare_shipped_config_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from densessl.cli.finetune_det import main as finetune_det
    from densessl.cli.train import main as train

    assert train(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "vicregl_resnet18_synthetic " in listed and "faster_rcnn" not in listed
    assert finetune_det(["--list"]) == 0 and "faster_rcnn_fpn_r18_synthetic " in capsys.readouterr().out
    assert train(["vicregl_resnet18_synthetic", "train.epochs=3", "--print-config"]) == 0  # a bare name
    assert "epochs: 3" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train([])
    assert "required: config (or --list" in capsys.readouterr().err


def test_print_config_shows_the_chosen_method_and_warns_on_another_methods_keys(
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    import yaml

    from densessl.cli.train import main

    assert main(["vicregl_resnet18_synthetic", "densecl.queue_len=8", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "vicregl" in printed and not {"vicreg", "densecl", "pixpro"} & set(printed)
    assert "densecl.queue_len: set for a method this run does not use (method=vicregl)" in caplog.text


def test_bf16_on_the_cpu_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from densessl.train import engine

    run = engine.start_run(tmp_path / "run", {"x": 1}, recipe="test", device="cpu", precision="bf16")
    engine.finish_run(run)
    assert run.amp_dtype is None and "train.precision=bf16 has no effect on cpu" in caplog.text


def _console_commands() -> dict[str, str]:
    """``command -> module`` from pyproject.toml's [project.scripts]."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0] for name, target in scripts.items()}


# One bad input per console command: a file that does not exist.
BAD_INPUT = {
    "densessl-train": ["no/such/config.yaml"],
    "densessl-finetune-det": ["no/such/config.yaml"],
    "densessl-finetune-seg": ["no/such/config.py"],
    "densessl-eval-seg": ["--weights", "no/such.pt", "--arch", "resnet18", "--dataset", "synthetic", "--protocol",
                          "knn"],
    "densessl-eval-video": ["--weights", "no/such.pt", "--data-root", "no/such/davis"],
    "densessl-eval-depth": ["--weights", "no/such.pt", "--data-root", "no/such/nyu"],
    "densessl-compare-evals": ["no/such.json"],
    "densessl-viz": ["--weights", "no/such.pt", "--arch", "resnet18", "--dataset", "synthetic", "--out", "m.png"],
    "densessl-convert": ["no/such.pth"],
    "densessl-reproduce": ["no_such_card", "--weights", "random", "--smoke"],
}


def test_every_console_command_has_a_bad_input_case() -> None:
    assert set(BAD_INPUT) == set(_console_commands())


@pytest.mark.parametrize("command", sorted(BAD_INPUT))
def test_every_command_reports_bad_input_as_one_error_line_naming_it(command: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    if command == "densessl-finetune-seg":
        pytest.importorskip("mmseg", reason="mmsegmentation is not installed (pip install 'densessl[mmseg]')")
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(_console_commands()[command]).main
    try:
        code = main(BAD_INPUT[command])
    except SystemExit as exit:  # an argparse-level error
        code = exit.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {command}: "), err
    assert "Traceback" not in err[0]
