"""The shared training engine: accumulation, the finite-loss stop, resume rules, logging (faults: tests/faults/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from densessl.train import engine
from densessl.train.engine import ResumeError

CONFIG = {"model": {"arch": "tiny"}, "optim": {"lr": 0.1}, "data": {"batch_size": 8}}


def _regression(model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
    inputs, targets = batch
    loss = ((model(inputs) - targets) ** 2).mean()
    return {"loss": loss, "mse": loss.detach()}


def _start(run_dir: Path, resume: str = "no", config: dict | None = None, **kwargs) -> engine.Run:
    return engine.start_run(run_dir, config or CONFIG, recipe="test", resume=resume, device="cpu", log_every=1,
                            fixed_keys=("model.arch", "data.batch_size"), **kwargs)


def test_gradient_accumulation_equals_the_full_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    inputs, targets = torch.randn(8, 5), torch.randn(8, 3)
    models = [nn.Linear(5, 3), nn.Linear(5, 3)]
    models[1].load_state_dict(models[0].state_dict())
    run = _start(tmp_path / "run")
    try:
        for model, micro in zip(models, ([(inputs, targets)], [(inputs[:4], targets[:4]), (inputs[4:], targets[4:])])):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
            terms = engine.optimizer_step(run, model, optimizer, engine.make_scaler(run), micro, _regression,
                                          iteration=0, clip_grad=10.0)
            assert set(terms) == {"loss", "mse"}
    finally:
        engine.finish_run(run)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_non_finite_loss_takes_no_step(tmp_path: Path) -> None:
    model = nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    run = _start(tmp_path / "run")
    try:
        batch = (torch.full((2, 2), float("nan")), torch.zeros(2, 1))
        with pytest.raises(engine.NonFiniteLossError, match="non-finite loss at iteration 5"):
            engine.optimizer_step(run, model, torch.optim.SGD(model.parameters(), lr=1.0), engine.make_scaler(run),
                                  [batch], _regression, iteration=4)
    finally:
        engine.finish_run(run)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _save_two_checkpoints(run_dir: Path) -> engine.Run:
    run = _start(run_dir)
    try:
        for iteration in (1, 2):
            engine.save_checkpoint(run, iteration, {"model": {"w": torch.full((4096,), float(iteration))}})
    finally:
        engine.finish_run(run)
    return run


def test_resume_rules(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="no checkpoint"):
        _start(tmp_path / "none", resume="yes")
    assert not (tmp_path / "none").exists()
    _save_two_checkpoints(tmp_path / "run")
    with pytest.raises(FileExistsError, match="already holds a run"):
        _start(tmp_path / "run", resume="no")
    engine.finish_run(run := _start(tmp_path / "run", resume="auto"))
    assert run.start_iteration == 2


def test_progress_line_with_eta_goes_to_train_log(tmp_path: Path) -> None:
    run = _start(tmp_path / "run")
    try:
        for iteration in (1, 2, 3, 4):
            record = engine.log_step(run, iteration, 4, {"loss": torch.tensor(2.0)}, lr=0.01, images=8)
            assert record is not None and record["iteration"] == iteration
    finally:
        engine.finish_run(run)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "iteration 2/4 (50%) | loss 2.0000 | lr 0.01 |" in log and "ETA 0:00:00" in log
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4] and records[0]["loss"] == 2.0


def test_the_run_records_its_environment_and_timestamps_its_metrics(tmp_path: Path) -> None:
    """Versions, git commit, command line and host in environment.jsonl (one line per start) and at the top of
    train.log; a timestamp in every metrics row."""
    import datetime

    run = _start(tmp_path / "run")
    try:
        engine.log_step(run, 1, 1, {"loss": torch.tensor(1.0)}, lr=0.1, images=4)
    finally:
        engine.finish_run(run)
    environment = [json.loads(line) for line in (tmp_path / "run" / "environment.jsonl").read_text().splitlines()]
    assert len(environment) == 1
    assert {"densessl", "python", "torch", "torchvision", "timm", "cuda", "host", "git_commit", "command"} <= set(
        environment[0]) and environment[0]["torch"] == torch.__version__
    log = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert "environment: " in log[0] and f"torch {torch.__version__}" in log[0] and "command: " in log[1]
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert datetime.datetime.fromisoformat(record["time"]).year >= 2024




def test_progress_bar_only_on_a_terminal_and_log_lines_go_through_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging
    import sys

    run = _start(tmp_path / "run")
    try:
        assert engine.ProgressBar(run, total=3, initial=0, desc="x").disable  # pytest's stderr is no terminal
        root = logging.getLogger()
        handler = logging.StreamHandler(sys.stderr)
        root.addHandler(handler)
        monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
        bar = engine.ProgressBar(run, total=3, initial=0, desc="x")
        assert not bar.disable and handler not in root.handlers  # replaced by tqdm's handler while the bar is open
        bar.close()
        assert handler in root.handlers
        root.removeHandler(handler)
        assert engine.ProgressBar(run, total=3, initial=0, desc="x", enabled=False).disable
    finally:
        engine.finish_run(run)
