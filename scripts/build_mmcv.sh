#!/usr/bin/env bash
# OPTIONAL: build the full mmcv 2.1.0 wheel (with compiled CPU ops) once per machine and keep it in a wheel cache.
#
# densessl does not need it: its mmseg extra runs mmsegmentation 1.2.2 on mmcv-lite with a pure-Python stand-in for
# mmcv.ops (densessl/seg/mmcv_ops_standin.py), which covers densessl's linear, FCN and UPerNet heads. Build this
# only for mmseg models that call compiled ops (PSA, CCNet, deformable convolutions, ...); they say so when built.
# PyPI has no mmcv 2.1.0 wheel for this project's torch, so it is built from the sdist. Two things stop a plain
# `pip install`:
#   1. mmcv's setup.py imports pkg_resources, which needs setuptools < 70 (and no build isolation, because the
#      build imports torch);
#   2. its setup.py passes -std=c++14/-std=c++17 while torch 2.14's headers need C++20; compiler wrappers (first on
#      PATH, and as CC/CXX) turn any -std=c++1x into -std=c++20.
# The build runs in a throwaway virtual environment that sees the project venv's packages (torch, numpy) through a
# .pth file, with its own setuptools<70 in front of them, so the project venv itself is never modified.
#
# The compiled ops are tied to the torch build, so the wheel is cached per torch version and Python:
#   $DENSESSL_WHEEL_CACHE/torch-<torch version>-<python tag>/mmcv-2.1.0-*.whl
#
# Usage: bash scripts/build_mmcv.sh [--install]   (no-op when the wheel is cached; ~10 min on 2 cores when it is not)
# Prints progress on stderr and the wheel's path, alone, on stdout. --install then replaces mmcv-lite in $VENV by it
# (mmcv-lite and mmcv share the `mmcv` folder, so the lite one is uninstalled first).
# Environment: DENSESSL_WHEEL_CACHE  cache folder (default: $HOME/.cache/densessl/wheels)
#              VENV                  project virtual environment with torch (default: .venv)
#              MAX_JOBS              parallel compile jobs (default: number of cores)
set -euo pipefail
cd "$(dirname "$0")/.."

MMCV_VERSION=2.1.0
VENV="${VENV:-.venv}"
INSTALL=0
[ "${1:-}" = "--install" ] && INSTALL=1
log() { echo "[build_mmcv] $*" >&2; }
fail() { echo "[build_mmcv] error: $*" >&2; exit 1; }

tag="$("$VENV/bin/python" -c 'import sys, torch; print(f"torch-{torch.__version__}-{sys.implementation.cache_tag}")')" \
    || fail "$VENV/bin/python cannot import torch; run scripts/setup.sh (it installs torch first)"
CACHE="${DENSESSL_WHEEL_CACHE:-$HOME/.cache/densessl/wheels}/$tag"

shopt -s nullglob
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
# One build at a time per cache: a second caller waits for the first and then uses its wheel.
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
    log "another mmcv build is running for $CACHE; waiting for it"
    flock 9
fi
install_wheel() {
    [ "$INSTALL" = 1 ] || return 0
    log "installing $1 into $VENV (replacing mmcv-lite)"
    "$VENV/bin/python" -m pip uninstall -q -y mmcv-lite >&2 || true
    "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "$1" >&2
    "$VENV/bin/python" -c "import mmcv._ext" || fail "the installed mmcv cannot load its compiled ops"
}
existing=("$CACHE"/mmcv-"$MMCV_VERSION"-*.whl)
if [ "${#existing[@]}" -gt 0 ]; then
    log "using cached ${existing[0]}"
    install_wheel "${existing[0]}"
    echo "${existing[0]}"
    exit 0
fi

for tool in gcc g++ cc c++; do
    command -v "$tool" >/dev/null || fail "'$tool' not found; install a C++ compiler (apt-get install build-essential)"
done
WORK="$(mktemp -d "${TMPDIR:-/tmp}/densessl-mmcv-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
LOG="$CACHE/mmcv-$MMCV_VERSION-build.log"
: > "$LOG"
show_log() { echo "[build_mmcv] last lines of $LOG:" >&2; tail -n 40 "$LOG" >&2; }

# 1. Compiler wrappers: the real compiler with -std=c++1x / -std=gnu++1x replaced by -std=c++20.
mkdir -p "$WORK/bin"
for tool in gcc g++ cc c++; do
    real="$(command -v "$tool")"
    cat > "$WORK/bin/$tool" <<WRAPPER
#!/usr/bin/env bash
args=()
for a in "\$@"; do
    case "\$a" in
        -std=c++1[0-9]|-std=gnu++1[0-9]) args+=("-std=c++20") ;;
        *) args+=("\$a") ;;
    esac
done
exec "$real" "\${args[@]}"
WRAPPER
    chmod +x "$WORK/bin/$tool"
done

# 2. Throwaway build venv: its own setuptools<70 first on sys.path, then the project venv's packages (torch).
log "preparing a build environment in $WORK"
"$VENV/bin/python" -m venv "$WORK/venv"
project_site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
build_site="$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$project_site" > "$build_site/_densessl_project_venv.pth"
"$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check "setuptools<70" wheel >>"$LOG" 2>&1 \
    || { show_log; fail "could not install setuptools<70 and wheel into the build environment"; }
"$WORK/venv/bin/python" -c "
import setuptools, pkg_resources, torch
assert int(setuptools.__version__.split('.')[0]) < 70, setuptools.__version__
" >>"$LOG" 2>&1 || { show_log; fail "the build environment cannot import torch and pkg_resources (setuptools<70)"; }

# 3. Build (CPU ops only). --no-cache-dir: pip's own wheel cache is not keyed by torch version, so it could hand back
# a wheel compiled against another torch.
start=$(date +%s)
log "building mmcv==$MMCV_VERSION with compiled CPU ops for $tag (about 10 minutes on 2 cores); log: $LOG"
env PATH="$WORK/bin:$PATH" CC="$WORK/bin/gcc" CXX="$WORK/bin/g++" \
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$WORK/venv/bin/python" -m pip wheel --disable-pip-version-check --no-cache-dir --no-deps --no-build-isolation \
    "mmcv==$MMCV_VERSION" -w "$WORK/wheels" >>"$LOG" 2>&1 \
    || { show_log; fail "building mmcv==$MMCV_VERSION failed (see $LOG)"; }
built=("$WORK/wheels"/mmcv-"$MMCV_VERSION"-*.whl)
[ "${#built[@]}" -eq 1 ] || { show_log; fail "expected one mmcv wheel in $WORK/wheels, found ${#built[@]}"; }
# Copy then rename, so an interrupted build never leaves a half-written wheel in the cache.
name="$(basename "${built[0]}")"
cp "${built[0]}" "$CACHE/.$name.partial"
mv "$CACHE/.$name.partial" "$CACHE/$name"
log "built $CACHE/$name ($(du -h "$CACHE/$name" | cut -f1)) in $(( $(date +%s) - start )) s"
install_wheel "$CACHE/$name"
echo "$CACHE/$name"
