"""Peak memory of one training step per objective and backbone.

Every configuration runs in a **fresh subprocess** (so no configuration inherits another's allocations), builds the
same training step as ``objective_overhead.py`` (backbone + objective + EMA teacher, LARS, the multi-crop batch
2 x 224 + 6 x 96 for vicregl/vicreg, its two 224 views for densecl/pixpro) plus the backbone-alone baseline with a
trivial loss on the same crops, and runs ``--steps`` training steps (default 2: the second step is the steady state,
with LARS momentum buffers alive during backward).

What is measured:

* CPU: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` -- the process's **resident-set high-water mark** as the kernel
  sees it: Python, the torch libraries, the model, gradients, optimizer state, autograd activations and allocator
  slack, all together. We report it after ``import torch`` (``rss_import``), after building model + batch
  (``rss_built``, current RSS) and the peak at the end (``peak_rss``), and ``step_peak = peak_rss - rss_built``, the
  memory the training step itself adds on top of the built model (activations, gradients, optimizer state). RSS is
  the honest number for "will it fit in RAM"; it is not a per-tensor account (``tracemalloc`` cannot see torch's
  allocations).
* CUDA (when available and ``--device cuda``): ``torch.cuda.max_memory_allocated()`` after
  ``reset_peak_memory_stats()`` (tensor bytes held by torch's caching allocator at the peak), plus the allocated bytes
  after building, so ``step_peak`` has the same meaning.

Usage::

    .venv/bin/python benchmarks/memory.py                       # resnet50, batch 8, all objectives (CPU)
    .venv/bin/python benchmarks/memory.py --quick               # resnet18, batch 4, 1 step
    .venv/bin/python benchmarks/memory.py --archs resnet50 convnext_tiny --batch 16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIGS = ["backbone:2x224+6x96", "backbone:2x224", "vicregl", "vicreg", "densecl", "pixpro"]


def current_rss_mb() -> float:
    """Current resident set size (MiB) from /proc/self/statm."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def peak_rss_mb() -> float:
    """``ru_maxrss`` in MiB (the kernel reports KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def child(arch: str, config: str, batch: int, steps: int, device: str, threads: int | None) -> dict[str, Any]:
    """Run in the subprocess: build one configuration, take ``steps`` steps, report memory."""
    rss_start = current_rss_mb()
    import torch

    if threads:
        torch.set_num_threads(threads)
    sys.path.insert(0, str(HERE))
    from objective_overhead import Stepper, make_batch

    rss_import = current_rss_mb()
    views, two = make_batch(batch, 256)
    method = None if config.startswith("backbone") else config
    crops = two if config in ("backbone:2x224", "densecl", "pixpro") else views
    del views, two
    cuda = device == "cuda"
    st = Stepper(arch, method, crops, device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        built_alloc = torch.cuda.memory_allocated() / 2**20
    rss_built = current_rss_mb()
    peak_before = peak_rss_mb()
    start = time.perf_counter()
    for _ in range(steps):
        st.step()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    out: dict[str, Any] = {
        "arch": arch, "config": config, "batch": batch, "steps": steps, "device": device,
        "crops": "2x224" if crops.num_views == 2 else "2x224+6x96", "trainable_params": st.params,
        "rss_start_mb": rss_start, "rss_import_mb": rss_import, "rss_built_mb": rss_built,
        "peak_rss_before_steps_mb": peak_before, "peak_rss_mb": peak_rss_mb(),
        "step_peak_rss_mb": peak_rss_mb() - rss_built, "steps_s": elapsed,
        "torch_threads": torch.get_num_threads(), "loadavg_end": list(os.getloadavg()),
    }
    if cuda:
        out["cuda_built_allocated_mb"] = built_alloc
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["cuda_step_peak_mb"] = out["cuda_max_allocated_mb"] - built_alloc
        out["cuda_max_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["resnet50"])
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="training steps per configuration (default 2)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each subprocess")
    parser.add_argument("--quick", action="store_true", help="resnet18, batch 4, 1 step")
    parser.add_argument("--out", default=None, help="JSON path (default results/memory.json)")
    parser.add_argument("--child", nargs=2, metavar=("ARCH", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], args.child[1], args.batch, args.steps, args.device,
                                           args.threads)), flush=True)
        return

    sys.path.insert(0, str(HERE))
    from _common import finish_info, machine_info, machine_line, table, write_json

    if args.quick:
        args.archs, args.batch, args.steps = ["resnet18"], 4, 1
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    info = machine_info()
    print(machine_line(info), flush=True)
    results, rows = [], []
    for arch in args.archs:
        base_peak: dict[str, float] = {}
        for config in args.configs:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", arch, config, "--batch", str(args.batch),
                   "--steps", str(args.steps), "--device", args.device]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((out for out in proc.stdout.splitlines() if out.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"{arch} {config}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", flush=True)
                results.append({"arch": arch, "config": config, "error": proc.stderr[-2000:]})
                continue
            res = json.loads(line[len("RESULT "):])
            key = "cuda_max_allocated_mb" if args.device == "cuda" else "peak_rss_mb"
            step_key = "cuda_step_peak_mb" if args.device == "cuda" else "step_peak_rss_mb"
            if config.startswith("backbone"):
                base_peak[res["crops"]] = res[step_key]
            base = base_peak.get(res["crops"])
            res["step_peak_vs_backbone"] = res[step_key] / base if base else None
            results.append(res)
            rows.append([arch, config, res["crops"], res["trainable_params"] / 1e6, res["rss_import_mb"],
                         res["rss_built_mb"], res[key], res[step_key],
                         "-" if res["step_peak_vs_backbone"] is None else f"{res['step_peak_vs_backbone']:.2f}x",
                         res["steps_s"]])
            print(f"  {arch} {config}: peak {res[key]:.0f} MiB, step adds {res[step_key]:.0f} MiB "
                  f"({res['steps_s']:.1f} s)", flush=True)
    unit = "CUDA max allocated" if args.device == "cuda" else "peak RSS"
    t = table(["arch", "config", "crops", "params (M)", "RSS after import (MiB)", "RSS built (MiB)",
               f"{unit} (MiB)", "step adds (MiB)", "step adds vs backbone", "steps time (s)"], rows)
    finish_info(info)
    print(f"\nbatch {args.batch}, {args.steps} step(s), device {args.device}\n{t}\n{machine_line(info)}")
    payload = {"benchmark": "memory", "machine": info, "settings": vars(args), "results": results, "table": t,
               "measures": "CPU: ru_maxrss of a fresh process per configuration (RSS high-water mark); "
                           "CUDA: torch.cuda.max_memory_allocated"}
    path = write_json("memory" + ("_quick" if args.quick else ""), payload, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
