"""The real-photograph benchmark: a pretraining pool of natural photos and a segmentation/detection set of real
object photos pasted onto real background photos, built only from files that registry packages ship.

``scripts/get_real_data.sh`` fetches the packages (Debian: ``tuxpaint-stamps-default``, ``plasma-workspace-wallpapers``,
``mate-backgrounds``, ``opencv-doc``; PyPI: ``mvtb-data``, ``scikit-image``), unpacks them under
``<cache>/sources/<package>/`` and runs ``python -m densessl.data.photo_benchmark --sources <cache>/sources --out
<cache>/photos``. Nothing of it is committed: each package keeps its own licence (listed in ``<out>/SOURCES.txt``).

Layout written to ``--out`` (every file is derived deterministically from the sources and ``--seed``)::

    pretrain/            natural photos (short side <= 480 px) + the train composites: data.source=folder
    seg/classes.txt      background + the 9 object groups below (line k = class k)
    seg/images/{train,val}/NNNNN.jpg      composites, 400 x 300 (W x H)
    seg/masks/{train,val}/NNNNN.png       semantic class indices (0 = background)
    seg/instances/{train,val}/NNNNN.png   instance ids (0 = none, k = k-th pasted object still visible)
    seg/annotations/instances_{train,val}.json   COCO boxes + RLE masks (category id = class index)
    SOURCES.txt          every photo and stamp used, with its package
    views/{figure,coarse,seen}/   with --views: diagnostic label views of the same scenes (``build_views``)

Composites: each scene is a random crop of a background photo (train and val use disjoint background photos) with
1-4 object cut-outs (train and val use disjoint cut-outs of each group; a class is drawn uniformly, then one of
its cut-outs), each 30-65 % of the scene's short side.
The cut-outs come with exact alpha masks; so that a probe cannot find objects by their paste seams, the alpha is
feathered (Gaussian, sigma 1.2 px), each cut-out's brightness and contrast are moved halfway toward the background
under it, and the whole scene is then blurred slightly and JPEG-compressed once, so object and background share one
sharpness and one compression noise. ``benchmarks/quality.py --data photos`` reports a probe on an edge-only feature
map (Sobel magnitudes) to show that seams alone do not solve the task.

Object groups (Tux Paint stamp folders; drawings are dropped by a flat-fill test, cut-outs marked ``_mirror`` too):
bird, mammal (+ marsupials), fish (+ shellfish), insect, fruit, vegetable (+ nuts), flower, vehicle (+ military
vehicles), household (tools, dishes, objects). Counted on Tux Paint 2022.06.04: 221 photographic cut-outs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from collections.abc import Sequence
from io import BytesIO
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "CLASSES",
    "STAMP_GROUPS",
    "Stamp",
    "Scene",
    "COARSE_GROUPS",
    "LABEL_VIEWS",
    "build",
    "build_views",
    "collect_photos",
    "collect_stamps",
    "compose_scene",
    "is_drawing",
    "is_photo",
]

STAMP_GROUPS: dict[str, tuple[str, ...]] = {
    "bird": ("animals/birds",),
    "mammal": ("animals/mammals", "animals/marsupials"),
    "fish": ("animals/fish", "animals/shellfish"),
    "insect": ("animals/insects",),
    "fruit": ("food/fruit",),
    "vegetable": ("food/vegetables", "food/nuts"),
    "flower": ("plants/flowers",),
    "vehicle": ("vehicles", "military/vehicles"),
    "household": ("household",),
}
CLASSES: tuple[str, ...] = ("background", *STAMP_GROUPS)
COARSE_GROUPS: dict[str, tuple[str, ...]] = {
    "animal": ("bird", "mammal", "fish", "insect"),
    "plant": ("fruit", "vegetable", "flower"),
    "object": ("vehicle", "household"),
}
# Diagnostic views (``build_views``): name -> (classes, class index of each of CLASSES).
LABEL_VIEWS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "figure": (("background", "object"), (0,) + (1,) * len(STAMP_GROUPS)),
    "coarse": (("background", *COARSE_GROUPS),
               (0, *(1 + [name in members for members in COARSE_GROUPS.values()].index(True)
                     for name in STAMP_GROUPS))),
}
SCENE_SIZE = (400, 300)  # (W, H)
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png")


# ----------------------------------------------------------------------------------------------------------- photos
def _thumbnail(path: Path, size: int = 256) -> tuple[tuple[int, int], np.ndarray] | None:
    """The file's full ``(W, H)`` and an ``(h, w, 3)`` float32 RGB thumbnail (long side ``size``), from one open;
    None if the file is unreadable."""
    try:
        with Image.open(path) as image:
            full_size = image.size
            image.draft("RGB", (size, size))
            image = image.convert("RGB")
            image.thumbnail((size, size))
            return full_size, np.asarray(image, dtype=np.float32)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def is_photo(rgb: np.ndarray) -> bool:
    """Whether a thumbnail ``(h, w, 3)`` looks like a colour photograph, not a drawing, diagram or grey image.

    Photographs have colour (mean distance to grey > 6 levels), few exactly flat neighbours (< 35 % of horizontal
    neighbours differ by < 1 level), many distinct colours (> 150 of 4096 bins) and texture (mean gradient > 2).
    """
    saturation = np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean()
    grey = rgb.mean(axis=2)
    dx = np.abs(np.diff(grey, axis=1))
    quantized = rgb.astype(np.int32) // 16
    colours = len(np.unique(quantized[..., 0] * 256 + quantized[..., 1] * 16 + quantized[..., 2]))
    return bool(saturation > 6 and (dx < 1.0).mean() < 0.35 and colours > 150 and dx.mean() > 2)


def _average_hash(rgb: np.ndarray) -> int:
    """64-bit average hash of a thumbnail (near-duplicates, e.g. one wallpaper at several resolutions, collide)."""
    grey = Image.fromarray(rgb.mean(axis=2).astype(np.uint8)).resize((8, 8), Image.BILINEAR)
    bits = np.asarray(grey, dtype=np.float32)
    bits = (bits > bits.mean()).reshape(-1)
    return int("".join("1" if b else "0" for b in bits), 2)


def collect_photos(roots: Sequence[Path], min_side: int = 240) -> list[Path]:
    """Every distinct colour photograph under ``roots`` (sorted; near-duplicates keep their largest file).

    Near-duplicates: average hashes within Hamming distance 6.
    """
    candidates: list[tuple[int, Path, int]] = []  # (pixels, path, hash)
    for root in roots:
        for path in sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in PHOTO_EXTENSIONS):
            read = _thumbnail(path)
            if read is None:
                continue
            (width, height), rgb = read
            if min(width, height) < min_side or not is_photo(rgb):
                continue
            candidates.append((width * height, path, _average_hash(rgb)))
    candidates.sort(key=lambda item: (-item[0], str(item[1])))
    kept: list[tuple[Path, int]] = []
    for _, path, digest in candidates:
        if all(bin(digest ^ other).count("1") > 6 for _, other in kept):
            kept.append((path, digest))
    return sorted(path for path, _ in kept)


# ----------------------------------------------------------------------------------------------------------- stamps
@dataclass(frozen=True)
class Stamp:
    """One object cut-out: its file and class index (``CLASSES[label]``)."""

    path: Path
    label: int


def is_drawing(rgba: np.ndarray) -> bool:
    """Whether an RGBA cut-out ``(h, w, 4)`` is a flat-filled drawing: > 50 % of opaque horizontal neighbour pairs
    have exactly the same colour (photos measured <= 0.4, drawings >= 0.6)."""
    pixels = rgba.astype(np.int32)
    opaque = (pixels[:, :-1, 3] > 250) & (pixels[:, 1:, 3] > 250)
    if not opaque.any():
        return True
    same = np.abs(pixels[:, :-1, :3] - pixels[:, 1:, :3]).sum(axis=-1) == 0
    return bool(same[opaque].mean() > 0.5)


def collect_stamps(stamps_root: Path) -> list[Stamp]:
    """Photographic cut-outs of every group in ``STAMP_GROUPS`` under Tux Paint's ``stamps/`` folder (sorted)."""
    found: list[Stamp] = []
    for label, (_, folders) in enumerate(STAMP_GROUPS.items(), start=1):
        for folder in folders:
            for path in sorted((stamps_root / folder).rglob("*.png")):
                if "cartoon" in path.parts or path.stem.endswith("_mirror"):
                    continue
                with Image.open(path) as image:
                    rgba = np.asarray(image.convert("RGBA"))
                if min(rgba.shape[:2]) < 48 or is_drawing(rgba):
                    continue
                found.append(Stamp(path, label))
    return found


# ----------------------------------------------------------------------------------------------------------- scenes
@dataclass
class Scene:
    """One composite: ``image`` RGB ``(H, W)``, ``semantic`` ``(H, W)`` uint8 class indices, ``instances`` ``(H, W)``
    uint8 ids (0 = none, k = k-th visible object), ``labels[k - 1]`` the class of instance ``k``."""

    image: Image.Image
    semantic: np.ndarray
    instances: np.ndarray
    labels: list[int]


def _random_crop(photo: Image.Image, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A random crop of 30-100 % of the largest ``size``-shaped window, resized to ``size`` (W, H)."""
    width, height = photo.size
    aspect = size[0] / size[1]
    full_w = min(width, height * aspect)
    scale = rng.uniform(0.55, 1.0)  # side fraction: 30-100 % of the area
    crop_w, crop_h = full_w * scale, full_w * scale / aspect
    left, top = rng.uniform(0, width - crop_w), rng.uniform(0, height - crop_h)
    return photo.resize(size, Image.BICUBIC, box=(left, top, left + crop_w, top + crop_h))


def compose_scene(background: Image.Image, stamps: Sequence[tuple[Image.Image, int]], rng: random.Random,
                  size: tuple[int, int] = SCENE_SIZE, jpeg_quality: int = 88) -> Scene:
    """Paste RGBA cut-outs (with their class index) onto a random crop of ``background``; see the module docstring.

    Later cut-outs occlude earlier ones; an instance that ends up with fewer than 64 visible pixels is dropped
    from ``instances`` and ``labels`` (its pixels stay in ``semantic``).
    """
    scene = np.asarray(_random_crop(background.convert("RGB"), size, rng), dtype=np.float32)
    width, height = size
    semantic = np.zeros((height, width), np.uint8)
    owner = np.zeros((height, width), np.int32)  # index into stamps + 1
    for index, (stamp, label) in enumerate(stamps, start=1):
        rgba = stamp.convert("RGBA")
        if rng.random() < 0.5:
            rgba = rgba.transpose(Image.FLIP_LEFT_RIGHT)
        bbox = rgba.getchannel("A").point(lambda a: 255 if a > 16 else 0).getbbox()
        if bbox is None:
            continue
        rgba = rgba.crop(bbox)
        long_side = rng.uniform(0.30, 0.65) * min(width, height)
        factor = long_side / max(rgba.size)
        new_size = (max(8, round(rgba.size[0] * factor)), max(8, round(rgba.size[1] * factor)))
        rgba = rgba.resize(new_size, Image.LANCZOS)
        alpha_image = rgba.getchannel("A").filter(ImageFilter.GaussianBlur(1.2))
        left = rng.randint(-new_size[0] // 4, width - 3 * new_size[0] // 4)
        top = rng.randint(-new_size[1] // 4, height - 3 * new_size[1] // 4)
        # Region of the scene the cut-out covers (clipped to the scene).
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + new_size[0], width), min(top + new_size[1], height)
        if x1 - x0 < 8 or y1 - y0 < 8:
            continue
        sx, sy = x0 - left, y0 - top
        rgb = np.asarray(rgba.convert("RGB"), dtype=np.float32)[sy:sy + y1 - y0, sx:sx + x1 - x0]
        alpha = np.asarray(alpha_image, dtype=np.float32)[sy:sy + y1 - y0, sx:sx + x1 - x0, None] / 255.0
        under = scene[y0:y1, x0:x1]
        inside = alpha[..., 0] > 0.5
        if inside.sum() < 16:
            continue
        # Move the cut-out's brightness and contrast halfway toward the background it covers.
        obj_mean, obj_std = rgb[inside].mean(), rgb[inside].std() + 1e-3
        bg_mean, bg_std = under.mean(), under.std() + 1e-3
        target_mean, target_std = (obj_mean + bg_mean) / 2, (obj_std + bg_std) / 2
        rgb = np.clip((rgb - obj_mean) * (target_std / obj_std) + target_mean, 0, 255)
        scene[y0:y1, x0:x1] = alpha * rgb + (1 - alpha) * under
        semantic[y0:y1, x0:x1][inside] = label
        owner[y0:y1, x0:x1][inside] = index
    image = Image.fromarray(scene.round().astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.5))
    # One JPEG round trip for the whole scene: object and background share the compression noise.
    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=jpeg_quality)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB")
    instances = np.zeros((height, width), np.uint8)
    labels: list[int] = []
    for index, (_, label) in enumerate(stamps, start=1):
        visible = owner == index
        if visible.sum() >= 64:
            labels.append(label)
            instances[visible] = len(labels)
    return Scene(image, semantic, instances, labels)


# ------------------------------------------------------------------------------------------------------------ build
def _split_of(name: str, val_fraction: float) -> str:
    """``"val"`` for a stable ``val_fraction`` of names (by SHA-1), ``"train"`` otherwise."""
    bucket = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if bucket < val_fraction else "train"


def _coco_json(records: list[tuple[str, Scene]]) -> dict:
    from densessl.data.detection import mask_to_rle

    images, annotations = [], []
    for image_id, (file_name, scene) in enumerate(records, start=1):
        height, width = scene.semantic.shape
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for k, label in enumerate(scene.labels, start=1):
            mask = scene.instances == k
            ys, xs = np.nonzero(mask)
            box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                "bbox": box, "area": float(mask.sum()), "iscrowd": 0,
                                "segmentation": mask_to_rle(mask)})
    categories = [{"id": k, "name": name} for k, name in enumerate(CLASSES) if k > 0]
    return {"images": images, "annotations": annotations, "categories": categories}


def _save_photo(path: Path, out: Path, max_short_side: int = 480) -> None:
    with Image.open(path) as image:
        image.draft("RGB", (max_short_side * 4, max_short_side * 4))
        image = image.convert("RGB")
    factor = max_short_side / min(image.size)
    if factor < 1:
        image = image.resize((round(image.size[0] * factor), round(image.size[1] * factor)), Image.BICUBIC)
    image.save(out, quality=92)


def _split_sources(sources: Path, val_fraction: float) -> tuple[dict[str, list[Path]], dict[str, list[Stamp]],
                                                                  dict[Path, str]]:
    """Photos and cut-outs under ``sources`` split into train/val (disjoint), and each photo's relative name.

    Raises:
        FileNotFoundError: No Tux Paint stamps folder, no photographs, or an empty split.
    """
    stamp_roots = sorted(sources.glob("**/tuxpaint/stamps"))
    if not stamp_roots:
        raise FileNotFoundError(f"no tuxpaint/stamps folder under {sources}: unpack the Debian package "
                                f"tuxpaint-stamps-default there (scripts/get_real_data.sh does)")
    photo_roots = [p for p in sorted(sources.iterdir()) if p.is_dir() and "tuxpaint" not in p.name]
    photos = collect_photos(photo_roots)
    if len(photos) < 8:
        raise FileNotFoundError(f"found {len(photos)} photographs under {', '.join(map(str, photo_roots))}; need "
                                f">= 8: unpack the photo packages there (scripts/get_real_data.sh does)")
    stamps = collect_stamps(stamp_roots[0])
    rel = {p: p.relative_to(sources).as_posix() for p in photos}
    split_photos = {s: [p for p in photos if _split_of(rel[p], val_fraction) == s] for s in ("train", "val")}
    split_stamps: dict[str, list[Stamp]] = {"train": [], "val": []}
    for label in range(1, len(CLASSES)):
        group = [s for s in stamps if s.label == label]
        for k, stamp in enumerate(group):  # every 4th cut-out of a group (sorted) is a val object
            split_stamps["val" if k % 4 == 1 else "train"].append(stamp)
    for split in ("train", "val"):
        if not split_photos[split] or not split_stamps[split]:
            raise FileNotFoundError(f"not enough sources for the {split} split: {len(split_photos[split])} photos, "
                                    f"{len(split_stamps[split])} cut-outs")
    return split_photos, split_stamps, rel


def _write_scenes(seg: Path, split: str, photos: Sequence[Path], stamps: Sequence[Stamp], total: int, rng_key: str,
                  pretrain: Path | None = None, progress: bool = True) -> list[tuple[str, Scene]]:
    """Compose ``total`` scenes into ``seg/{images,masks,instances}/<split>/`` (and ``pretrain/scene_*.jpg``)."""
    rng = random.Random(rng_key)
    for folder in ("images", "masks", "instances"):
        (seg / folder / split).mkdir(parents=True, exist_ok=True)
    by_label: dict[int, list[Stamp]] = {}
    for stamp in stamps:
        by_label.setdefault(stamp.label, []).append(stamp)
    labels = sorted(by_label)
    cache: dict[Path, Image.Image] = {}
    records = []
    iterator = range(total)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"{split} scenes", leave=False, disable=not sys.stderr.isatty())
    for k in iterator:
        photo_path = rng.choice(photos)
        if photo_path not in cache:
            with Image.open(photo_path) as image:
                image.draft("RGB", (1600, 1200))
                cache[photo_path] = image.convert("RGB")
        # Class first, then a cut-out of it: every class is about equally frequent whatever its cut-out count.
        chosen = [rng.choice(by_label[rng.choice(labels)]) for _ in range(rng.randint(1, 4))]
        pasted = []
        for stamp in chosen:
            with Image.open(stamp.path) as image:
                pasted.append((image.convert("RGBA"), stamp.label))
        scene = compose_scene(cache[photo_path], pasted, rng)
        name = f"{k:05d}"
        scene.image.save(seg / "images" / split / f"{name}.jpg", quality=95)
        Image.fromarray(scene.semantic).save(seg / "masks" / split / f"{name}.png")
        Image.fromarray(scene.instances).save(seg / "instances" / split / f"{name}.png")
        if pretrain is not None:
            scene.image.save(pretrain / f"scene_{name}.jpg", quality=95)
        records.append((f"{name}.jpg", scene))
    return records


def build(sources: Path, out: Path, train_scenes: int = 400, val_scenes: int = 150, val_fraction: float = 0.25,
          seed: int = 0, progress: bool = True, views: bool = False) -> dict[str, int]:
    """Build the benchmark from unpacked packages under ``sources`` into ``out``; returns counts per part.

    ``sources`` holds one folder per package; the Tux Paint stamps are found as ``**/tuxpaint/stamps``, photos are
    searched in every other package folder. ``views``: also write the label views (``build_views``; counts under
    ``"views"``, not written to ``counts.json``), reusing this build's scan of the sources.

    Raises:
        FileNotFoundError: No Tux Paint stamps folder, or no photographs, under ``sources``.
    """
    sources, out = Path(sources), Path(out)
    split_photos, split_stamps, rel = _split_sources(sources, val_fraction)
    (out / "pretrain").mkdir(parents=True, exist_ok=True)
    seg = out / "seg"
    (seg / "annotations").mkdir(parents=True, exist_ok=True)
    (seg / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for k, path in enumerate(split_photos["train"]):
        _save_photo(path, out / "pretrain" / f"photo_{k:04d}.jpg")

    counts = {"photos_train": len(split_photos["train"]), "photos_val": len(split_photos["val"]),
              "stamps_train": len(split_stamps["train"]), "stamps_val": len(split_stamps["val"])}
    for split, total in (("train", train_scenes), ("val", val_scenes)):
        # The train composites join the pretraining pool (unlabelled, in-domain).
        records = _write_scenes(seg, split, split_photos[split], split_stamps[split], total, f"{seed}-{split}",
                                pretrain=out / "pretrain" if split == "train" else None, progress=progress)
        (seg / "annotations" / f"instances_{split}.json").write_text(json.dumps(_coco_json(records)))
        counts[f"scenes_{split}"] = total
        counts[f"objects_{split}"] = sum(len(scene.labels) for _, scene in records)

    lines = ["# Files this benchmark was built from; each keeps its package's licence (see the package's "
             "copyright file under sources/<package>/usr/share/doc/).", ""]
    lines += [f"photo {_split_of(rel[p], val_fraction)} {rel[p]}" for p in sorted(rel)]
    lines += [f"stamp {split} {CLASSES[s.label]} {s.path.relative_to(sources).as_posix()}"
              for split in ("train", "val") for s in split_stamps[split]]
    (out / "SOURCES.txt").write_text("\n".join(lines) + "\n")
    (out / "counts.json").write_text(json.dumps(counts, indent=2))
    if views:
        counts["views"] = build_views(sources, out, val_scenes, val_fraction, seed, progress,
                                      splits=(split_photos, split_stamps))
    return counts


# ------------------------------------------------------------------------------------------------------ label views
def _link(target: Path, link: Path) -> None:
    """``link`` -> ``target`` as a relative symlink (replacing an old link)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)


def build_views(sources: Path, out: Path, val_scenes: int = 150, val_fraction: float = 0.25, seed: int = 0,
                progress: bool = True,
                splits: tuple[dict[str, list[Path]], dict[str, list[Stamp]]] | None = None) -> dict[str, int]:
    """Write the diagnostic label views of a built benchmark ``out`` (``build`` first) under ``out/views/``.

    Each view is a FolderSegmentation root whose train images are the benchmark's own (symlinked), so a backbone
    pretrained on ``out/pretrain`` is evaluated without retraining; they separate what a probe fails on:

    * ``figure``: figure-ground, 2 classes (background, object): localization without naming the object.
    * ``coarse``: 4 classes (background, animal, plant, object), ``COARSE_GROUPS``.
    * ``seen``: the 9 groups, but new val scenes (val background photos, ``val_scenes`` of them) that paste the
      *train* cut-outs: recognising objects seen in training, not generalising to new ones of a group.

    ``splits``: the ``(photos, cut-outs)`` split of ``sources`` when the caller has it (``build``); otherwise the
    sources are scanned again (a minute on the real packages).

    Returns the number of val scenes per view.
    """
    sources, out = Path(sources), Path(out)
    seg = out / "seg"
    if not (seg / "classes.txt").is_file():
        raise FileNotFoundError(f"{seg} holds no benchmark: build it first (python -m densessl.data.photo_benchmark)")
    views = out / "views"
    counts = {}
    for name, (classes, lut) in LABEL_VIEWS.items():
        root = views / name
        root.mkdir(parents=True, exist_ok=True)
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
        table = np.full(256, 255, np.uint8)
        table[:len(lut)] = lut
        for split in ("train", "val"):
            _link(seg / "images" / split, root / "images" / split)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            for path in sorted((seg / "masks" / split).glob("*.png")):
                Image.fromarray(table[np.asarray(Image.open(path))]).save(root / "masks" / split / path.name)
        counts[name] = len(list((root / "masks" / "val").glob("*.png")))
    seen = views / "seen"
    for folder in ("images", "masks", "instances"):
        _link(seg / folder / "train", seen / folder / "train")
    split_photos, split_stamps = splits if splits is not None else _split_sources(sources, val_fraction)[:2]
    _write_scenes(seen, "val", split_photos["val"], split_stamps["train"], val_scenes, f"{seed}-seen-val",
                  progress=progress)
    (seen / "classes.txt").write_text("\n".join(CLASSES) + "\n")  # last: marks the views complete
    counts["seen"] = val_scenes
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=Path, required=True, help="folder of unpacked packages")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-scenes", type=int, default=400)
    parser.add_argument("--val-scenes", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", action="store_true",
                        help="also write the diagnostic label views under OUT/views (figure, coarse, seen)")
    parser.add_argument("--views-only", action="store_true",
                        help="write only the label views, of the benchmark already built in OUT")
    args = parser.parse_args(argv)
    try:
        if args.views_only:
            counts = {"views": build_views(args.sources, args.out, args.val_scenes, seed=args.seed)}
        else:
            counts = build(args.sources, args.out, args.train_scenes, args.val_scenes, seed=args.seed,
                           views=args.views)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
