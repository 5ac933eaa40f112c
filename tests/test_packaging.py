"""The built wheel: configs shipped as package data, console commands that work outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("densessl-train", "densessl-eval-seg", "densessl-compare-evals", "densessl-viz", "densessl-finetune-det",
            "densessl-finetune-seg", "densessl-convert", "densessl-eval-video",
            "densessl-reproduce")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel built from this checkout, and a folder it is installed into (``pip install --target``)."""
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "-w", str(out / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((out / "dist").glob("densessl-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                              str(out / "site"), str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    return wheel, out / "site"


def test_wheel_holds_every_config_and_declares_the_commands(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    shipped = {str(p.relative_to(ROOT / "densessl")) for p in (ROOT / "densessl" / "configs").rglob("*")
               if p.is_file() and p.suffix in (".yaml", ".py")}
    assert shipped and {f"densessl/{name}" for name in shipped} <= names
    assert "densessl/seg/mmcv_ops_standin.py" in names
    for command in COMMANDS:
        assert f"{command} = densessl.cli." in entry_points


def test_console_command_finds_shipped_configs_outside_the_checkout(installed: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    _, site = installed
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import densessl; print(densessl.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr  # not the checkout
    command = site / "bin" / "densessl-train"
    result = subprocess.run([sys.executable, str(command), "pretrain/_tiny_test.yaml", "train.max_iters=3",
                             "--print-config"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "arch: resnet18" in result.stdout and "max_iters: 3" in result.stdout
    missing = subprocess.run([sys.executable, str(command), "pretrain/nope.yaml"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "the configs shipped with densessl are in" in missing.stderr


def test_the_timm_lower_bound_has_what_densessl_uses() -> None:
    """pyproject's timm bound is the first release with the local-dir: loader (the export) and the DINOv3 models;
    scripts/check_min_versions.sh runs the suite on exactly that release."""
    import re

    import timm
    import tomllib
    from packaging.version import Version

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bound = next(re.match(r"timm>=([\d.]+)", d).group(1) for d in dependencies if d.startswith("timm"))
    assert bound == "1.0.20" and Version(timm.__version__) >= Version(bound)
    assert f'"timm=={bound}"' in (ROOT / "scripts" / "check_min_versions.sh").read_text()
    assert timm.list_models("vit_*_dinov3*") and timm.list_models("convnext_*")
