"""GPU check: every GPU path of pretraining end to end, then ResNet-50 VICRegL images/s. One command, one table.

``bash benchmarks/gpu_check.sh`` (this script) runs, each in a fresh process of ``python -m densessl.cli.train`` (the
``densessl-train`` command) on a small config, and checks what each one must produce:

========== ==========================================================================================================
step       what runs / what is checked
========== ==========================================================================================================
fp32       ``train.precision=fp32``: exit 0, ``checkpoints/last.pt`` at the last iteration, finite losses, export
bf16       ``train.precision=bf16``: the same, and ``train.log`` says bf16 autocast (CUDA)
fp16       ``train.precision=fp16``: the same with the ``GradScaler`` on: its state is in the checkpoint (CUDA)
channels   ``train.channels_last=true``: the same; first loss close to fp32's
compile    ``train.compile=true``: the same; checkpoint keys identical to fp32's; first loss close to fp32's
augment    ``data.augment_on=device``, only when ``DataConfig`` has that field (skipped otherwise)
torchrun   ``torchrun --standalone --nproc_per_node 1 -m densessl.cli.train``: the same checks
resume     SIGTERM mid-run (exit 130, checkpoint saved), ``--resume auto`` then SIGKILL, ``--resume auto`` again:
           finishes at the requested iteration with metrics for every iteration exactly once
overhead   ``benchmarks/objective_overhead.py``: VICRegL full-step images/s and the ratio to the backbone alone
           (ResNet-50, batch 64, 2x224+6x96) per step setting: fp32, bf16, fp16, bf16 + channels_last on a GPU
           (+ bf16 + channels_last + compile with --overhead-compile); fp32 and fp32 + channels_last on the CPU
========== ==========================================================================================================

Every step is run even when an earlier one failed; each one's pass/fail, time and numbers go to
``<out>/gpu_check.json`` and ``<out>/gpu_check.md`` (the table printed at the end), the processes' output to
``<out>/logs/<step>.log`` and the run directories to ``<out>/runs/``. The exit code is 1 when any step failed.

Sizes: on a GPU, the shipped ``pretrain/vicregl_resnet18_synthetic.yaml`` (ResNet-18, 96/64 px crops, batch 32) cut
to 10 iterations (resume: 30); the whole check takes about 5-8 minutes on one GPU, most of it process start-up, the
compile and the ResNet-50 benchmark. ``--tiny``: ``configs/pretrain/_tiny_test.yaml`` (ResNet-18, 48/32 px, batch 4),
2 iterations, the benchmark with ResNet-18 at batch 2, 64/32 px crops, small heads and one round. With ``--tiny``
the single-process steps (fp32 ... augment, overhead) call the same ``main(argv)`` in this process, one after the
other, instead of starting a Python (and importing torch) for each; torchrun and resume keep their own processes (a
real launcher, real signals). ``--fresh-processes`` runs every step in its own process as without ``--tiny``.
``--device cpu --tiny`` runs in about half a minute on 2 CPU cores (there, bf16/fp16 run in fp32 as the CPU recipe
does, the compile step is skipped: ``tests/train/test_compile.py`` covers it, and resume runs 16 iterations).

Usage::

    bash benchmarks/gpu_check.sh                          # on a GPU machine: everything, results in runs/gpu_check
    bash benchmarks/gpu_check.sh --device cpu --tiny      # the same paths on a CPU in about half a minute
    bash benchmarks/gpu_check.sh --only fp16 resume       # a subset (after fixing something)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _common import machine_info, table

TINY_CONFIG = ROOT / "configs" / "pretrain" / "_tiny_test.yaml"
GPU_CONFIG = ROOT / "configs" / "pretrain" / "vicregl_resnet18_synthetic.yaml"
STEPS = ("fp32", "bf16", "fp16", "channels_last", "compile", "augment_on_device", "torchrun", "resume", "overhead")
MARKER = ".gpu_check"  # marks an output folder as ours: its runs/ and logs/ are replaced on the next check


@dataclass
class Settings:
    device: str
    tiny: bool
    out: Path
    threads: int | None
    python: str = sys.executable
    fresh_processes: bool = False  # with --tiny: every step in its own process anyway
    overhead_compile: bool = False  # the overhead step also times bf16 + channels_last + compile (minutes of compile)

    @property
    def in_process(self) -> bool:
        """The single-process steps call ``main(argv)`` here instead of starting a process (``--tiny``)."""
        return self.tiny and not self.fresh_processes

    @property
    def config(self) -> Path:
        return TINY_CONFIG if self.tiny else GPU_CONFIG

    @property
    def iterations(self) -> int:
        return 2 if self.tiny else 10

    @property
    def resume_iterations(self) -> int:
        # --device cpu --tiny: 16 (a step there takes 0.1-0.3 s, the signals land by iteration ~8); elsewhere 30, which
        # leaves room for the 50 ms polling when a GPU runs a tiny step in a few milliseconds.
        return 16 if self.tiny and self.device == "cpu" else 30

    @property
    def timeout(self) -> int:
        return 240 if self.tiny else 300

    def overrides(self) -> list[str]:
        """What every training step sets: device, length, logging every step, no progress bar or diagnostics."""
        common = [f"train.device={self.device}", "train.log_every=1", "train.progress=false",
                  "train.diagnostics_every=0", "train.epochs=100"]
        if not self.tiny:
            common += ["data.num_workers=4"]
        return common

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(":")}
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        return env


@dataclass
class StepResult:
    step: str
    status: str = "fail"  # pass | fail | skipped
    seconds: float = 0.0
    iterations: int | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    images_per_s: float | None = None
    note: str = ""
    problems: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    log: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class StepFailed(Exception):
    """A check of a step failed (the message says which)."""


# --------------------------------------------------------------------------- #
# Processes
# --------------------------------------------------------------------------- #


def _start(cmd: list[str], settings: Settings, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    stream = log.open("a", encoding="utf-8")
    stream.write(f"$ {' '.join(cmd)}\n")
    stream.flush()
    # Its own session, so a timeout can kill the process and its DataLoader workers without touching anything else.
    return subprocess.Popen(cmd, stdout=stream, stderr=subprocess.STDOUT, env=settings.env(), cwd=ROOT,
                            start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(proc: subprocess.Popen, timeout: float, until: Callable[[], bool] | None = None,
          send: int | None = None) -> tuple[int, bool]:
    """Wait for ``proc``; when ``until()`` turns true first, send it ``send``. Returns ``(exit code, signal sent)``.

    Raises:
        StepFailed: The process ran past ``timeout`` (it is killed, with its workers).
    """
    deadline = time.monotonic() + timeout
    sent = False
    while True:
        code = proc.poll()
        if code is not None:
            if sent and send == signal.SIGKILL:
                _kill_group(proc)  # DataLoader workers of a SIGKILLed process
            return code, sent
        if time.monotonic() > deadline:
            _kill_group(proc)
            proc.wait()
            raise StepFailed(f"timed out after {timeout:.0f} s")
        if until is not None and not sent and until():
            proc.send_signal(send)  # the training process only, as a scheduler would
            sent = True
        time.sleep(0.05)


def run(cmd: list[str], settings: Settings, result: StepResult, *, timeout: float | None = None,
        until: Callable[[], bool] | None = None, send: int | None = None) -> tuple[int, bool]:
    log = settings.out / "logs" / f"{result.step}.log"
    result.log = str(log)
    result.commands.append(" ".join(cmd))
    return _wait(_start(cmd, settings, log), timeout or settings.timeout, until, send)


@contextlib.contextmanager
def _redirected(log: Path) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2, so C++ warnings too) appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with log.open("a", encoding="utf-8") as stream:
            os.dup2(stream.fileno(), 1)
            os.dup2(stream.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def run_in_process(main: Callable[[list[str]], int | None], argv: list[str], shown: list[str], settings: Settings,
                   result: StepResult) -> int:
    """``main(argv)`` in this process, its output in the step's log; returns what the process's exit code would be.

    The command line ``shown`` is what the step would run as a process (recorded, and written to the log). Torch's
    thread count and the logging handlers the command adds are restored afterwards.
    """
    import logging

    import torch

    log = settings.out / "logs" / f"{result.step}.log"
    result.log = str(log)
    result.commands.append(" ".join(shown) + "  (in the gpu_check process)")
    root = logging.getLogger()
    handlers, level, threads = list(root.handlers), root.level, torch.get_num_threads()
    with _redirected(log):
        print(f"$ {' '.join(shown)}  (in the gpu_check process)", flush=True)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        try:
            code = main(argv)
        except SystemExit as error:  # argparse
            code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
        except Exception:  # noqa: BLE001 (the crash a process would print, and its exit code)
            traceback.print_exc()
            code = 1
        finally:
            torch.set_num_threads(threads)
            for handler in root.handlers[:]:
                if handler not in handlers:
                    root.removeHandler(handler)
            root.setLevel(level)
    return int(code or 0)


def train_args(settings: Settings, run_dir: Path, overrides: list[str], *, resume: str | None = None) -> list[str]:
    """The arguments of ``densessl.cli.train`` for a step."""
    args = [str(settings.config), *settings.overrides(), *overrides, "--output-dir", str(run_dir)]
    return [*args, "--resume", resume] if resume else args


def train_cmd(settings: Settings, run_dir: Path, overrides: list[str], *, torchrun: bool = False,
              resume: str | None = None) -> list[str]:
    launcher = [settings.python, "-m", "densessl.cli.train"]
    if torchrun:
        launcher = [settings.python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m",
                    "densessl.cli.train"]
    return [*launcher, *train_args(settings, run_dir, overrides, resume=resume)]


# --------------------------------------------------------------------------- #
# Checks of a finished run directory
# --------------------------------------------------------------------------- #


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a partial last line, from a process still writing, is ignored)."""
    path = run_dir / "metrics.jsonl"
    records = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def last_iteration(run_dir: Path) -> int:
    records = [r for r in metrics(run_dir) if "loss" in r]
    return int(records[-1]["iteration"]) if records else 0


def load_checkpoint(path: Path) -> dict[str, Any]:
    from densessl.train.engine import load_checkpoint as load

    return load(path)


def check_run(run_dir: Path, iterations: int, result: StepResult) -> dict[str, Any]:
    """Exit-0 run checks: the checkpoint at ``iterations``, one finite loss per iteration, the export. Fills ``result``.

    Returns:
        The last checkpoint (for step-specific checks).
    """
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        raise StepFailed(f"no checkpoint at {last}")
    state = load_checkpoint(last)
    records = [r for r in metrics(run_dir) if "loss" in r]
    result.iterations = int(state["iteration"])
    if records:
        result.first_loss, result.last_loss = float(records[0]["loss"]), float(records[-1]["loss"])
        speeds = [float(r["images_per_s"]) for r in records[1:] or records]  # the first step includes warm-up
        result.images_per_s = statistics.median(speeds)
    if result.iterations != iterations:
        raise StepFailed(f"checkpoint at iteration {result.iterations}, expected {iterations}")
    seen = [int(r["iteration"]) for r in records]
    if seen != list(range(1, iterations + 1)):
        raise StepFailed(f"metrics.jsonl iterations {seen}, expected 1..{iterations} once each")
    if not all(math.isfinite(float(r["loss"])) for r in records):
        raise StepFailed("a non-finite loss in metrics.jsonl")
    if not (run_dir / "export" / "model.safetensors").is_file():
        raise StepFailed("no exported export/model.safetensors")
    return state


def logged_precision(run_dir: Path) -> str:
    """The autocast dtype the run reported in ``train.log`` (``torch.bfloat16``, ``torch.float16`` or ``fp32``)."""
    match = re.search(r"precision (\S+)", (run_dir / "train.log").read_text(encoding="utf-8"))
    return match.group(1) if match else "?"


def relative_difference(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return math.nan
    return abs(a - b) / max(abs(b), 1e-12)


# --------------------------------------------------------------------------- #
# The steps
# --------------------------------------------------------------------------- #


class Checker:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.reference: dict[str, Any] = {}  # the fp32 run: first loss and checkpoint keys

    def run_dir(self, name: str) -> Path:
        return self.s.out / "runs" / name

    def simple(self, result: StepResult, overrides: list[str], **kwargs: Any) -> dict[str, Any]:
        run_dir = self.run_dir(result.step)
        iterations = self.s.iterations
        overrides = [f"train.max_iters={iterations}", *overrides]
        cmd = train_cmd(self.s, run_dir, overrides, **kwargs)
        if self.s.in_process and not kwargs.get("torchrun"):
            from densessl.cli.train import main

            code = run_in_process(main, train_args(self.s, run_dir, overrides), cmd, self.s, result)
        else:
            code, _ = run(cmd, self.s, result)
        if code != 0:
            raise StepFailed(f"exit code {code}")
        return check_run(run_dir, iterations, result)

    def compare_with_fp32(self, result: StepResult, state: dict[str, Any], tolerance: float) -> None:
        """First loss within ``tolerance`` (relative) of the fp32 run's, and the same checkpoint keys."""
        if not self.reference:
            result.note += "; no fp32 reference to compare with"
            return
        diff = relative_difference(result.first_loss, self.reference["first_loss"])
        result.extra["first_loss_rel_diff_vs_fp32"] = diff
        result.note += f"; first loss vs fp32: {diff:.1e} rel."
        if not diff <= tolerance:
            raise StepFailed(f"first loss {result.first_loss} vs fp32 {self.reference['first_loss']} "
                             f"(relative difference {diff:.2e} > {tolerance})")
        if list(state["model"]) != self.reference["keys"]:
            raise StepFailed("checkpoint model keys differ from the fp32 run's")

    def fp32(self, result: StepResult) -> None:
        started = time.perf_counter()
        state = self.simple(result, ["train.precision=fp32"])
        self.reference = {"first_loss": result.first_loss, "keys": list(state["model"]),
                          "seconds": time.perf_counter() - started}
        result.note = f"precision {logged_precision(self.run_dir(result.step))}"

    def bf16(self, result: StepResult) -> None:
        self.simple(result, ["train.precision=bf16"])
        logged = logged_precision(self.run_dir(result.step))
        result.note = f"precision {logged}"
        if self.s.device == "cuda" and logged != "torch.bfloat16":
            raise StepFailed(f"train.log reports precision {logged}, expected torch.bfloat16")
        if self.s.device == "cpu":
            result.note += " (the CPU runs fp32)"

    def fp16(self, result: StepResult) -> None:
        state = self.simple(result, ["train.precision=fp16"])
        logged = logged_precision(self.run_dir(result.step))
        scaler = state.get("scaler") or {}
        result.note = f"precision {logged}"
        if self.s.device == "cuda":
            if logged != "torch.float16":
                raise StepFailed(f"train.log reports precision {logged}, expected torch.float16")
            if "scale" not in scaler:
                raise StepFailed("the checkpoint holds no GradScaler state: the scaler was off")
            result.note += f", GradScaler scale {float(scaler['scale']):g}"
        else:
            result.note += " (the CPU runs fp32, GradScaler off)"

    def channels_last(self, result: StepResult) -> None:
        state = self.simple(result, ["train.precision=fp32", "train.channels_last=true"])
        result.note = "channels_last model and inputs"
        self.compare_with_fp32(result, state, tolerance=1e-2)

    def compile(self, result: StepResult) -> None:
        if self.s.device == "cpu" and self.s.tiny:
            result.status = "skipped"
            result.note = "skipped on cpu --tiny: covered by tests/train/test_compile.py"
            return
        started = time.perf_counter()
        state = self.simple(result, ["train.precision=fp32", "train.compile=true"])
        result.note = "train.compile=true (mode default)"
        if self.reference:
            extra = time.perf_counter() - started - self.reference["seconds"]
            result.extra["compile_overhead_s"] = extra
            result.note += f", {extra:.0f} s longer than fp32 (the compile)"
        self.compare_with_fp32(result, state, tolerance=1e-2)

    def augment_on_device(self, result: StepResult) -> None:
        from densessl.train.config import DataConfig

        if "augment_on" not in {f.name for f in dataclasses.fields(DataConfig)}:
            result.status = "skipped"
            result.note = "skipped: this checkout's DataConfig has no augment_on option"
            return
        self.simple(result, ["data.augment_on=device"])
        result.note = "data.augment_on=device"

    def torchrun(self, result: StepResult) -> None:
        self.simple(result, ["train.precision=fp32"], torchrun=True)
        result.note = "torchrun --standalone --nproc_per_node 1"

    def resume(self, result: StepResult) -> None:
        """SIGTERM -> exit 130 with a checkpoint; --resume auto + SIGKILL; --resume auto -> the requested end."""
        run_dir = self.run_dir(result.step)
        total = self.s.resume_iterations
        overrides = [f"train.max_iters={total}", "train.checkpoint_every_iters=2"]
        code, sent = run(train_cmd(self.s, run_dir, overrides), self.s, result,
                         until=lambda: last_iteration(run_dir) >= 3, send=signal.SIGTERM)
        if not sent:
            raise StepFailed(f"the run ended (exit {code}) before SIGTERM could be sent; raise resume_iterations")
        if code != 130:
            raise StepFailed(f"SIGTERM: exit code {code}, expected 130 (checkpoint saved, stopped)")
        stopped_at = int(load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"])
        if not 3 <= stopped_at < total:
            raise StepFailed(f"SIGTERM: checkpoint at iteration {stopped_at}, expected 3..{total - 1}")

        code, sent = run(train_cmd(self.s, run_dir, overrides, resume="auto"), self.s, result,
                         until=lambda: last_iteration(run_dir) >= stopped_at + 3, send=signal.SIGKILL)
        if not sent:
            raise StepFailed(f"the resumed run ended (exit {code}) before SIGKILL could be sent; raise "
                             f"resume_iterations")
        killed_at = int(load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"])

        code, _ = run(train_cmd(self.s, run_dir, overrides, resume="auto"), self.s, result)
        if code != 0:
            raise StepFailed(f"final --resume auto: exit code {code}")
        check_run(run_dir, total, result)
        resumes = (run_dir / "resumes.jsonl").read_text(encoding="utf-8").splitlines()
        if len(resumes) != 2:
            raise StepFailed(f"resumes.jsonl has {len(resumes)} lines, expected 2")
        result.note = (f"SIGTERM -> exit 130 at iteration {stopped_at}; resumed, SIGKILL after checkpoint "
                       f"{killed_at}; resumed -> {total}/{total}")
        result.extra.update({"sigterm_checkpoint": stopped_at, "sigkill_checkpoint": killed_at})

    def overhead_settings(self) -> list[tuple[str, list[str]]]:
        """(name, extra objective_overhead.py options) per measured step setting: every precision of the engine and
        channels_last on a GPU (+ compile with ``--overhead-compile``); on the CPU the engine trains in fp32, so fp32
        eager and channels_last."""
        if self.s.device == "cpu":
            return [("fp32", ["--precision", "fp32"]), ("fp32+channels_last", ["--precision", "fp32", "--channels-last"])]
        settings = [("fp32", ["--precision", "fp32"]), ("bf16", ["--precision", "bf16"]),
                    ("fp16", ["--precision", "fp16"]),
                    ("bf16+channels_last", ["--precision", "bf16", "--channels-last"])]
        if self.s.overhead_compile:  # opt-in: compiling ResNet-50 twice (backbone alone, VICRegL) takes minutes
            settings.append(("bf16+channels_last+compile", ["--precision", "bf16", "--channels-last", "--compile"]))
        return settings

    def overhead(self, result: StepResult) -> None:
        if self.s.tiny:
            args = ["--archs", "resnet18", "--batch", "2", "--global-size", "64", "--local-size", "32", "--repeats",
                    "1", "--projector", "64-64", "--local-projector", "32-32"]
        else:
            args = ["--archs", "resnet50", "--batch", "64", "--repeats", "3"]
        if self.s.threads:
            args += ["--threads", str(self.s.threads)]
        rows, notes = [], []
        for name, options in self.overhead_settings():
            path = self.s.out / f"objective_overhead_{name.replace('+', '_')}.json"
            argv = [*args, "--objectives", "vicregl", "--no-profile", "--no-loss-only", "--device", self.s.device,
                    *options, "--out", str(path)]
            cmd = [self.s.python, str(HERE / "objective_overhead.py"), *argv]
            if self.s.in_process:
                from objective_overhead import main as overhead_main

                code = run_in_process(overhead_main, argv, cmd, self.s, result)
            else:
                code, _ = run(cmd, self.s, result, timeout=600 if not self.s.tiny else self.s.timeout)
            if code != 0:
                raise StepFailed(f"objective_overhead.py ({name}): exit code {code}")
            arch = json.loads(path.read_text(encoding="utf-8"))["archs"][0]
            vicregl = arch["steps"]["vicregl"]
            backbone = arch["steps"][arch["baselines"]["multi_crop"]]
            rows.append({"setting": name, "arch": arch["arch"], "batch": arch["batch"], "crops": arch["crops"],
                         "vicregl_images_per_s": vicregl["images_per_s"],
                         "backbone_images_per_s": backbone["images_per_s"], "ratio": vicregl["ratio"]})
            notes.append(f"{name}: backbone alone {backbone['images_per_s']:.1f} img/s, ratio {vicregl['ratio']:.2f}x")
        first = rows[0]
        result.images_per_s = first["vicregl_images_per_s"]
        result.note = (f"{first['arch']} VICRegL, batch {first['batch']}, {first['crops']}: "
                       + "; ".join(f"{r['setting']} {r['vicregl_images_per_s']:.1f} img/s" for r in rows)
                       + " (" + "; ".join(notes) + ")")
        result.extra["overhead"] = rows


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #


def _foreign(out: Path) -> bool:
    """``out`` holds files and is not the folder of an earlier check."""
    return out.exists() and any(out.iterdir()) and not (out / MARKER).exists()


def _prepare_out(out: Path) -> None:
    """Create ``out``, or reuse an earlier check's folder (its runs/ and logs/ are replaced)."""
    import shutil

    for sub in ("runs", "logs"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by benchmarks/gpu_check.py; runs/ and logs/ are replaced on each check\n")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render(results: list[StepResult], settings: Settings, info: dict[str, Any], wall: float) -> str:
    rows = [[r.step, r.status.upper(), f"{r.seconds:.1f}", _fmt(r.iterations), _fmt(r.last_loss),
             _fmt(r.images_per_s, 3), "; ".join([*r.problems, r.note]).strip("; ")] for r in results]
    where = info.get("gpu") or info.get("cpu_model", "?")
    head = (f"gpu_check: --device {settings.device}{' --tiny' if settings.tiny else ''} on {where}, torch "
            f"{info.get('torch', '?')}, {info.get('time_utc', '')}; total {wall:.0f} s")
    passed = sum(r.status == "pass" for r in results)
    failed = sum(r.status == "fail" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    tail = f"{passed} passed, {failed} failed, {skipped} skipped"
    headers = ["step", "status", "time (s)", "iterations", "last loss", "img/s", "notes"]
    return "\n".join([head, "", table(headers, rows), "", tail])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda", help="default cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (1-2 minutes on a CPU)")
    parser.add_argument("--out", default="runs/gpu_check", help="output folder (default runs/gpu_check)")
    parser.add_argument("--only", nargs="+", choices=STEPS, metavar="STEP",
                        help=f"run only these steps ({', '.join(STEPS)}); compile and channels_last compare with "
                             f"fp32 when it runs too")
    parser.add_argument("--fresh-processes", action="store_true",
                        help="with --tiny: run every step in its own process (without --tiny they always do)")
    parser.add_argument("--overhead-compile", action="store_true",
                        help="the overhead step also times bf16 + channels_last + compile (adds minutes of compile; "
                             "the compile step already checks that compiled training works)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP threads per process (default: torch's; 1 with --device cpu --tiny, which is faster "
                             "on a small shared CPU)")
    args = parser.parse_args(argv)
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" and args.tiny else None)
    settings = Settings(device=args.device, tiny=args.tiny, out=Path(args.out).resolve(), threads=threads,
                        fresh_processes=args.fresh_processes, overhead_compile=args.overhead_compile)
    if _foreign(settings.out):
        print(f"error: --out {settings.out} holds files of something else; pick a new or empty folder",
              file=sys.stderr)
        return 2

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device; run on a GPU machine, or use --device cpu",
              file=sys.stderr)
        return 2
    _prepare_out(settings.out)
    info = machine_info()
    checker = Checker(settings)
    steps = [s for s in STEPS if not args.only or s in args.only]
    results: list[StepResult] = []
    start = time.perf_counter()
    print(f"gpu_check: {len(steps)} steps, --device {settings.device}{' --tiny' if settings.tiny else ''}, output in "
          f"{settings.out}", flush=True)
    for index, name in enumerate(steps, 1):
        result = StepResult(step=name)
        began = time.perf_counter()
        try:
            getattr(checker, name)(result)
            if result.status != "skipped":
                result.status = "pass"
        except StepFailed as error:
            result.status = "fail"
            result.problems.append(str(error))
        except Exception as error:  # noqa: BLE001 (a broken step must not stop the others)
            result.status = "fail"
            result.problems.append(f"{type(error).__name__}: {error}")
        result.seconds = time.perf_counter() - began
        results.append(result)
        print(f"[{index}/{len(steps)}] {name}: {result.status} ({result.seconds:.1f} s) "
              f"{'; '.join([*result.problems, result.note]).strip('; ')}", flush=True)
        if result.status == "fail" and result.log and Path(result.log).exists():
            lines = Path(result.log).read_text(encoding="utf-8", errors="replace").splitlines()
            print("    " + "\n    ".join(lines[-15:]), flush=True)
    wall = time.perf_counter() - start
    info["loadavg_end"] = list(os.getloadavg())
    text = render(results, settings, info, wall)
    payload = {"benchmark": "gpu_check", "machine": info, "wall_s": wall,
               "settings": {"device": settings.device, "tiny": settings.tiny, "threads": settings.threads,
                            "in_process": settings.in_process,
                            "config": str(settings.config), "iterations": settings.iterations,
                            "resume_iterations": settings.resume_iterations},
               "passed": all(r.status != "fail" for r in results),
               "steps": [dataclasses.asdict(r) for r in results], "table": text}
    (settings.out / "gpu_check.json").write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    (settings.out / "gpu_check.md").write_text(text + "\n", encoding="utf-8")
    print("\n" + text + f"\n\nwrote {settings.out / 'gpu_check.json'} and {settings.out / 'gpu_check.md'}", flush=True)
    return 0 if payload["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
