"""Helpers shared by the benchmark scripts: machine facts, interleaved timing, tables and JSON output.

Benchmarks are scripts, never part of the test suite. Every timing compares a thing with its baseline measured
**interleaved in the same run** (round-robin, the order rotated every repeat), because this machine is shared and its
load changes from minute to minute; we report medians of the repeats and the ratio of medians, together with the
load average and the thread count seen while measuring.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD/matrix flags that matter for torch's CPU kernels (AVX2, AVX-512, AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16",
                                                        "amx_tile", "avx512_vnni"))
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (torch is imported lazily so the data benchmark stays light)."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def finish_info(info: dict[str, Any]) -> dict[str, Any]:
    info["loadavg_end"] = list(os.getloadavg())
    return info


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                sync: Callable[[], None] | None = None, log: bool = True) -> tuple[dict[str, list[float]], list[list[float]]]:
    """Time every function once per round, rotating the order each round.

    Args:
        fns: name -> zero-argument callable (one "thing" to time).
        repeats: Measured rounds.
        warmup: Unmeasured rounds first (allocator, lazy init, caches).
        sync: Called before reading the clock (``torch.cuda.synchronize`` on GPUs).

    Returns:
        ``(times, loads)``: seconds per name (one per round, in round order) and the load average before every round.
    """
    names = list(fns)
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    loads: list[list[float]] = []
    for r in range(repeats):
        loads.append(list(os.getloadavg()))
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
        if log:
            print(f"  round {r + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names)
                  + f" (load {loads[-1][0]:.2f})", flush=True)
    return times, loads


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max and the raw values of one timing series."""
    return {"median_s": median(values), "min_s": min(values), "max_s": max(values), "runs_s": values}


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-markdown table (also readable in a terminal)."""
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in cells)])


def write_json(name: str, payload: dict[str, Any], path: str | None = None) -> Path:
    """Write ``payload`` to ``results/<name>.json`` (or ``path``) and return the path."""
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return out


def machine_line(info: dict[str, Any]) -> str:
    load = info.get("loadavg_start", [float("nan")] * 3)
    end = info.get("loadavg_end", load)
    return (f"machine: {info['cpu_model']}, {info['cpus_usable']} usable CPUs, torch {info.get('torch', '?')} "
            f"({info.get('torch_threads', '?')} threads), load avg start {load[0]:.2f} / end {end[0]:.2f}")
