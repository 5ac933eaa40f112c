"""Faults around the run directory: damaged and foreign checkpoint bytes, a full disk, killed writes' temporary
files, resumes with a changed config, partial metrics lines, slow divergence followed by a NaN."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from densessl.atomic import DiskFullError, atomic_torch_save
from densessl.train import engine
from densessl.train.engine import ResumeError
from tests.train.test_engine import CONFIG, _save_two_checkpoints, _start


def test_damaged_last_checkpoint_is_detected_and_the_previous_one_is_used(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _save_two_checkpoints(tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert engine.load_checkpoint(tmp_path / "run" / "checkpoints" / "previous.pt")["iteration"] == 1
    data = bytearray(last.read_bytes())
    start = data.index(b"\x00\x00\x00@") + 64  # somewhere inside the tensor bytes
    data[start:start + 4096] = bytes(4096)
    last.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"last\.pt.*damaged"):
        engine.load_checkpoint(last)
    with caplog.at_level(logging.WARNING, logger="densessl"):
        run = _start(tmp_path / "run", resume="yes")
    engine.finish_run(run)
    assert run.start_iteration == 1 and "previous checkpoint" in caplog.text


@pytest.mark.parametrize("content", [b"hello, this is text\n" * 10, bytes(range(256)) * 8])
def test_foreign_bytes_get_a_clear_error_without_unsafe_advice(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        engine.load_checkpoint(path)
    assert "last.pt" in str(info.value) and "weights_only=False" not in str(info.value)


def test_both_checkpoints_damaged_is_one_resume_error(tmp_path: Path) -> None:
    _save_two_checkpoints(tmp_path / "run")
    for name in ("last.pt", "previous.pt"):
        path = tmp_path / "run" / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(ResumeError, match="previous.pt.*no usable checkpoint"):
        _start(tmp_path / "run", resume="auto")


def test_full_disk_is_named_and_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.pt"
    atomic_torch_save({"iteration": 1}, target)
    original = torch.save

    def fill_disk(obj, handle, *args, **kwargs):
        handle.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fill_disk)
    with pytest.raises(DiskFullError, match="no space left on device while writing"):
        atomic_torch_save({"iteration": 2}, target)
    monkeypatch.setattr(torch, "save", original)
    assert torch.load(target, weights_only=True) == {"iteration": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_start_up_sweeps_temporary_files_of_killed_writes(tmp_path: Path) -> None:
    _save_two_checkpoints(tmp_path / "run")
    orphan = tmp_path / "run" / "checkpoints" / ".last.pt.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")
    engine.finish_run(_start(tmp_path / "run", resume="auto"))
    assert not orphan.exists()


def test_resume_refuses_breaking_config_changes_before_writing_anything(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _save_two_checkpoints(tmp_path / "run")
    config_before = (tmp_path / "run" / "config.yaml").read_text()
    changed = {**CONFIG, "model": {"arch": "other"}, "data": {"batch_size": 16}}
    with pytest.raises(ResumeError) as info:
        _start(tmp_path / "run", resume="yes", config=changed)
    assert "model.arch: 'tiny' -> 'other'" in str(info.value) and "data.batch_size: 8 -> 16" in str(info.value)
    assert "--allow-config-change" in str(info.value)
    assert (tmp_path / "run" / "config.yaml").read_text() == config_before
    with pytest.raises(ResumeError, match="processes x accumulation"):
        _start(tmp_path / "run", resume="yes", accumulate=2)

    new_lr = {**CONFIG, "optim": {"lr": 0.01}}
    with caplog.at_level(logging.WARNING, logger="densessl"):
        engine.finish_run(_start(tmp_path / "run", resume="yes", config=new_lr))
    assert "optim.lr: 0.1 -> 0.01" in caplog.text
    record = json.loads((tmp_path / "run" / "resumes.jsonl").read_text().splitlines()[-1])
    assert record["iteration"] == 2 and record["config_changes"] == {"optim.lr": [0.1, 0.01]}
    assert "lr: 0.01" in (tmp_path / "run" / "config.yaml").read_text()
    engine.finish_run(_start(tmp_path / "run", resume="yes", config=changed, allow_config_change=True))
    assert "model.arch" in (tmp_path / "run" / "resumes.jsonl").read_text().splitlines()[-1]


def test_metrics_partial_last_line_is_dropped_and_a_fresh_start_does_not_mix_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _save_two_checkpoints(tmp_path / "run")
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text('{"iteration": 1, "loss": 1.0}\n{"iteration": 2, "loss": 0.9}\n{"iteration": 3, "lo')
    with caplog.at_level(logging.WARNING, logger="densessl"):
        engine.finish_run(_start(tmp_path / "run", resume="yes"))
    assert "partial last line" in caplog.text
    assert [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()] == [1, 2]

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "metrics.jsonl").write_text('{"iteration": 7, "loss": 3.0}\n')  # a dead run that saved no checkpoint
    engine.finish_run(_start(fresh))
    assert (fresh / "metrics.jsonl").read_text() == ""


def test_slow_divergence_warns_and_a_nan_resumes_from_before_the_jump(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Loss ~1 for 20 steps, then 2.8e27 (no NaN yet: a checkpoint of ruined weights is written), then NaN."""
    schedule = [1.0 + 0.01 * i for i in range(20)] + [40.0, 2.8e27, float("nan")]
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def forward(module: nn.Module, value: float) -> dict[str, Tensor]:
        return {"loss": module.weight.sum() * 0 + value}

    run = _start(tmp_path / "run")
    caplog.set_level(logging.WARNING, logger="densessl")
    try:
        with pytest.raises(engine.NonFiniteLossError) as info:
            for iteration, value in enumerate(schedule):
                try:  # a recipe's loop: the non-finite policy is the recipe's explicit call
                    engine.optimizer_step(run, model, optimizer, engine.make_scaler(run), [value], forward,
                                          iteration=iteration)
                except engine.NonFiniteLossError as error:
                    raise engine.fall_back_to_stable(run, error) from None
                engine.save_checkpoint(run, iteration + 1, {"model": model.state_dict()})  # every step
    finally:
        engine.finish_run(run)
    assert "may be diverging" in caplog.text and "iteration 21" in caplog.text  # the 40.0 step
    message = str(info.value)
    assert "non-finite loss at iteration 23" in message and "now holds iteration 20" in message
    checkpoints = tmp_path / "run" / "checkpoints"
    assert engine.load_checkpoint(checkpoints / "last.pt")["iteration"] == 20
    assert engine.load_checkpoint(checkpoints / "diverged.pt")["iteration"] == 22
    resumed = _start(tmp_path / "run", resume="yes", config={**CONFIG, "optim": {"lr": 0.01}})  # the advice works
    engine.finish_run(resumed)
    assert resumed.start_iteration == 20
