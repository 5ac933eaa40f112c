"""``benchmarks/gpu_check.sh --device cpu --tiny``: every step of the GPU check runs and passes on the CPU.

About 35 s on 2 CPU cores: with ``--tiny`` the single-process steps (fp32, bf16, fp16, channels_last, augment, the
tiny overhead benchmark) run one after the other in the check's own process; torchrun and the SIGTERM/SIGKILL/resume
sequence start real processes. The compile step is skipped there (``tests/train/test_compile.py`` covers it);
``augment_on_device`` runs when this checkout's ``DataConfig`` has ``augment_on``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from densessl.train.config import DataConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu_passes_every_step(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--out",
                           str(out)], check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    status = {step["step"]: step["status"] for step in report["steps"]}
    has_augment_on = "augment_on" in {f.name for f in dataclasses.fields(DataConfig)}
    assert status == {"fp32": "pass", "bf16": "pass", "fp16": "pass", "channels_last": "pass", "compile": "skipped",
                      "augment_on_device": "pass" if has_augment_on else "skipped", "torchrun": "pass",
                      "resume": "pass", "overhead": "pass"}, proc.stdout[-4000:]
    assert report["passed"] is True and report["settings"]["in_process"] is True
    steps = {step["step"]: step for step in report["steps"]}
    assert "iteration 2/2" in (out / "logs" / "fp32.log").read_text()  # an in-process step's output is in its log
    assert "covered by tests/train/test_compile.py" in steps["compile"]["note"]
    assert steps["resume"]["iterations"] == report["settings"]["resume_iterations"]
    assert steps["resume"]["extra"]["sigterm_checkpoint"] < steps["resume"]["iterations"]
    overhead = steps["overhead"]["extra"]["overhead"]
    assert [row["setting"] for row in overhead] == ["fp32", "fp32+channels_last"]  # the engine's CPU step settings
    assert all(row["ratio"] > 0 for row in overhead)
    table = (out / "gpu_check.md").read_text()
    summary = "8 passed, 0 failed, 1 skipped" if has_augment_on else "7 passed, 0 failed, 2 skipped"
    assert "| fp32 " in table and summary in table
    assert table.strip() in proc.stdout  # the table is printed too

    # A second check into the same folder replaces the earlier runs; a folder of something else is refused.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    refused = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny",
                              "--out", str(tmp_path / "other"), "--only", "fp32"], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "PYTHON": sys.executable}, check=False)
    assert refused.returncode != 0 and "pick a new or empty folder" in refused.stderr
    assert (tmp_path / "other" / "keep.txt").exists()


def _load_driver(monkeypatch):
    """``benchmarks/gpu_check.py`` as a module (benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # dataclasses look their module up there
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script adds benchmarks/ to it
    spec.loader.exec_module(module)
    return module


def test_a_failed_step_does_not_stop_the_others_and_the_exit_code_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    driver = _load_driver(monkeypatch)
    ran = []

    def fake(name):
        def step(self, result):
            ran.append(name)
            if name == "fp16":
                raise driver.StepFailed("simulated failure")
            if name == "torchrun":
                raise RuntimeError("simulated crash")
            result.note = "fake"
        return step

    for name in driver.STEPS:
        monkeypatch.setattr(driver.Checker, name, fake(name))
    code = driver.main(["--device", "cpu", "--tiny", "--out", str(tmp_path / "out")])
    assert code == 1 and ran == list(driver.STEPS)
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    status = {step["step"]: step["status"] for step in report["steps"]}
    assert status["fp16"] == status["torchrun"] == "fail" and status["resume"] == "pass" and not report["passed"]
    assert "RuntimeError: simulated crash" in (tmp_path / "out" / "gpu_check.md").read_text()
    assert "7 passed, 2 failed, 0 skipped" in capsys.readouterr().out


def test_overhead_settings_cover_the_engine_step_options(tmp_path: Path, monkeypatch) -> None:
    driver = _load_driver(monkeypatch)

    def names(device: str, tiny: bool, overhead_compile: bool = False) -> list[str]:
        settings = driver.Settings(device, tiny, tmp_path, None, overhead_compile=overhead_compile)
        return [name for name, _ in driver.Checker(settings).overhead_settings()]

    assert names("cuda", False) == ["fp32", "bf16", "fp16", "bf16+channels_last"]
    assert names("cuda", False, overhead_compile=True)[-1] == "bf16+channels_last+compile"
    assert names("cpu", True) == ["fp32", "fp32+channels_last"]  # the engine trains in fp32 on the CPU
