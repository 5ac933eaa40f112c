"""The optional W&B logger of the training engine (``train.wandb=<project>``): what it logs, the run id a resume
continues, offline mode, and training going on without wandb."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from densessl.train.config import load_config
from densessl.train.pretrain import train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "pretrain" / "_tiny_test.yaml"


class _FakeRun:
    def __init__(self, calls: dict[str, list]) -> None:
        self.calls = calls
        self.settings = types.SimpleNamespace(mode="offline")

    def log(self, data: dict[str, Any], step: int) -> None:
        self.calls["log"].append((step, data))

    def finish(self) -> None:
        self.calls["finish"].append(True)


def _fake_wandb(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    calls: dict[str, list] = {"init": [], "log": [], "finish": []}
    fake = types.ModuleType("wandb")

    def init(**kwargs: Any) -> _FakeRun:
        calls["init"].append(kwargs)
        return _FakeRun(calls)

    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return calls


def test_every_metrics_row_is_logged_at_its_iteration_and_a_resume_continues_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_wandb(monkeypatch)
    run = tmp_path / "run"
    train(load_config(TINY, ["train.max_iters=2", "train.wandb=my-project"]), run)
    (init,) = calls["init"]
    run_id = (run / "wandb_id").read_text().strip()
    assert len(run_id) == 8 and all(c in "0123456789abcdef" for c in run_id)
    assert init["project"] == "my-project" and init["id"] == run_id and init["resume"] == "allow"
    assert init["dir"] == str(run) and init["job_type"] == "pretrain" and init["config"]["method"] == "vicregl"
    assert [step for step, _ in calls["log"]] == [1, 2] and calls["finish"] == [True]
    step, data = calls["log"][0]
    assert {"train/loss", "train/lr", "train/inv_local"} <= set(data) and "train/iteration" not in data
    assert all(isinstance(value, (int, float)) for value in data.values())

    # Extending the finished run continues the same W&B run from the next iteration.
    train(load_config(TINY, ["train.max_iters=3", "train.wandb=my-project"]), run, resume="yes")
    assert [c["id"] for c in calls["init"]] == [run_id, run_id]
    assert [step for step, _ in calls["log"]] == [1, 2, 3] and len(calls["finish"]) == 2


def test_without_wandb_installed_training_goes_on_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with caplog.at_level(logging.WARNING, logger="densessl"):
        result = train(load_config(TINY, ["train.max_iters=1", "train.wandb=p"]), tmp_path / "run")
    assert result.iteration == 1 and not result.interrupted
    assert "wandb is not installed (pip install 'densessl[wandb]'); logging to metrics.jsonl only" in caplog.text


def test_a_wandb_that_fails_to_start_does_not_stop_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    _fake_wandb(monkeypatch)

    def refuse(**kwargs: Any) -> None:
        raise RuntimeError("no network")

    monkeypatch.setattr(sys.modules["wandb"], "init", refuse)
    with caplog.at_level(logging.WARNING, logger="densessl"):
        result = train(load_config(TINY, ["train.max_iters=1", "train.wandb=p"]), tmp_path / "run")
    assert result.iteration == 1 and "W&B did not start (RuntimeError: no network)" in caplog.text


def test_offline_mode_of_the_real_wandb_writes_the_run_into_the_run_folder(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'densessl[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    run = tmp_path / "run"
    train(load_config(TINY, ["train.max_iters=2", "train.wandb=densessl-test"]), run)
    run_id = (run / "wandb_id").read_text().strip()
    (offline,) = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert (offline / f"run-{run_id}.wandb").stat().st_size > 0
