#!/usr/bin/env bash
# The GPU paths end to end + ResNet-50 VICRegL images/s; options in benchmarks/gpu_check.py (--device, --tiny, --out).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"; [ -x "$python" ] || python=python3
exec "$python" "$root/benchmarks/gpu_check.py" "$@"
