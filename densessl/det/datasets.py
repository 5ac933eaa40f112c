"""Instance-detection datasets for fine-tuning Faster / Mask R-CNN: COCO JSON, Pascal VOC XML and synthetic scenes.

Every dataset returns ``(image, target)`` in the format torchvision's detection models take:

* ``image``: ``(3, H, W)`` float32 RGB in ``[0, 1]`` at the file's own size (the detector resizes and normalizes).
* ``target``: a dict with

  - ``boxes``: ``(M, 4)`` float32 ``(x1, y1, x2, y2)`` in pixels of the returned image; ``x2``/``y2`` are the
    exclusive right/bottom edges (a box covering pixel columns ``0..9`` is ``x1 = 0, x2 = 10``), so
    ``x2 - x1`` is the box width. COCO ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``; VOC's 1-based inclusive
    ``xmin..xmax`` becomes ``[xmin - 1, ymin - 1, xmax, ymax]`` (the detectron2 convention).
  - ``labels``: ``(M,)`` int64 contiguous class indices in ``1..K`` (``0`` is the background); ``class_names[k]``
    names class ``k``.
  - ``iscrowd``: ``(M,)`` int64, ``1`` for regions that are ignored in evaluation: COCO crowd annotations and VOC
    ``difficult`` objects. With ``training=True`` these are removed from the target (they are never training
    targets); with ``training=False`` they are kept so the evaluation can ignore detections on them.
  - ``masks``: ``(M, H, W)`` uint8 instance masks, only with ``with_masks=True`` (COCO and synthetic).
  - ``image_id``: int, the id the ground truth of ``coco_ground_truth()`` uses for this image.

``coco_ground_truth()`` returns the whole split as an in-memory COCO instances dict (category ids = the contiguous
labels), which ``densessl.det.coco`` hands to pycocotools for box and mask AP.

Malformed annotations raise :class:`AnnotationError` at construction, naming the file and the entry (annotation id,
image id or XML element). pycocotools (the ``det`` extra) is needed for masks and evaluation only.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.utils.data
from einops import rearrange
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from densessl.data.images import load_image
from densessl.data.synthetic import CLASS_NAMES, SyntheticScenes
from densessl.data.voc import VOC_CLASSES_WITH_BACKGROUND, VOC_OBJECT_CLASSES

__all__ = [
    "AnnotationError",
    "CocoDetection",
    "DetectionBatch",
    "DetectionDataset",
    "RandomHorizontalFlip",
    "SyntheticDetection",
    "VOCDetection",
    "detection_collate",
    "horizontal_flip",
    "mask_to_rle",
    "segmentation_to_mask",
]

logger = logging.getLogger("densessl")

Target = dict[str, Any]
Transform = Callable[[Tensor, Target], "tuple[Tensor, Target]"]


class AnnotationError(ValueError):
    """A malformed annotation file or entry.

    Attributes:
        path: The annotation file.
        entry: The offending entry (e.g. ``"annotation id=7"``), or ``None`` for file-level problems.
    """

    def __init__(self, path: str | os.PathLike, entry: str | None, reason: str) -> None:
        self.path = os.fspath(path)
        self.entry = entry
        where = f"{self.path!r}, {entry}" if entry else repr(self.path)
        super().__init__(f"bad annotation in {where}: {reason}")


def _pycocotools_mask() -> Any:
    """Import ``pycocotools.mask`` with an install hint."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("instance masks and COCO evaluation need pycocotools: pip install pycocotools "
                          "(or pip install 'densessl[det]')") from error
    return mask_utils


# --------------------------------------------------------------------------- #
# Masks and RLE
# --------------------------------------------------------------------------- #


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode one binary mask as compressed COCO RLE with a ``str`` ``counts`` (JSON-serializable).

    Args:
        mask: ``(H, W)`` array, nonzero = foreground.

    Returns:
        ``{"size": [H, W], "counts": str}``.
    """
    mask_utils = _pycocotools_mask()
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _check_segmentation(segm: Any, height: int, width: int) -> str | None:
    """Return why a COCO ``segmentation`` is malformed, or ``None`` when it is valid."""
    if isinstance(segm, list):
        if not segm:
            return "empty polygon list"
        for k, polygon in enumerate(segm):
            if not isinstance(polygon, list) or not all(isinstance(v, (int, float)) for v in polygon):
                return f"polygon {k} is not a list of numbers"
            if len(polygon) < 6 or len(polygon) % 2:
                return f"polygon {k} has {len(polygon)} coordinates (need an even number >= 6)"
        return None
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            return "RLE needs 'counts' and 'size'"
        size = segm["size"]
        if not isinstance(size, list) or [int(v) for v in size] != [height, width]:
            return f"RLE size {size} does not match the image size [{height}, {width}]"
        if not isinstance(segm["counts"], (list, str)):
            return "RLE 'counts' must be a list (uncompressed) or a string (compressed)"
        return None
    return f"segmentation must be polygons or RLE, got {type(segm).__name__}"


def segmentation_to_mask(segm: Any, height: int, width: int) -> np.ndarray:
    """Rasterize a COCO segmentation (polygons, uncompressed or compressed RLE).

    Args:
        segm: The annotation's ``segmentation``.
        height: Image height.
        width: Image width.

    Returns:
        ``(height, width)`` uint8 mask with values 0/1.
    """
    mask_utils = _pycocotools_mask()
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = {"size": segm["size"], "counts": segm["counts"]}
    with warnings.catch_warnings():  # pycocotools' decode warns about numpy 2's copy keyword; harmless
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(np.uint8)


# --------------------------------------------------------------------------- #
# Augmentation and batching
# --------------------------------------------------------------------------- #


def horizontal_flip(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """Mirror an image and its target left-right.

    Boxes use exclusive right edges, so ``x1' = W - x2`` and ``x2' = W - x1`` is exact.

    Args:
        image: ``(3, H, W)`` image.
        target: Target dict (``boxes`` ``(M, 4)`` xyxy, optional ``masks`` ``(M, H, W)``).

    Returns:
        The flipped image and a new target dict (other entries shared).
    """
    width = image.shape[-1]
    out = dict(target)
    boxes = target["boxes"]
    out["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    if "masks" in target:
        out["masks"] = target["masks"].flip(-1)
    return image.flip(-1), out


class RandomHorizontalFlip:
    """Training augmentation: ``horizontal_flip`` with probability ``p`` (torch's global RNG).

    Args:
        p: Flip probability in ``[0, 1]``.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        if self.p > 0 and float(torch.rand(())) < self.p:
            return horizontal_flip(image, target)
        return image, target


@dataclass
class DetectionBatch:
    """A list of images of different sizes and their targets, as torchvision detectors take them.

    Attributes:
        images: ``B`` tensors ``(3, H_i, W_i)``.
        targets: ``B`` target dicts.
    """

    images: list[Tensor]
    targets: list[Target]

    def to(self, device: torch.device | str) -> DetectionBatch:
        """Move every tensor to ``device`` (non-tensor entries such as ``image_id`` stay as they are)."""
        return DetectionBatch(
            images=[image.to(device, non_blocking=True) for image in self.images],
            targets=[{k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()}
                     for t in self.targets],
        )


def detection_collate(samples: Sequence[tuple[Tensor, Target]]) -> DetectionBatch:
    """Collate ``(image, target)`` samples into a :class:`DetectionBatch` (no padding; the detector batches)."""
    return DetectionBatch(images=[s[0] for s in samples], targets=[s[1] for s in samples])


def _to_tensor(image: Image.Image) -> Tensor:
    """PIL RGB -> ``(3, H, W)`` float32 in ``[0, 1]``."""
    array = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
    return rearrange(array, "h w c -> c h w").float().div_(255.0)


# --------------------------------------------------------------------------- #
# Base class and records
# --------------------------------------------------------------------------- #


@dataclass
class _Record:
    """All annotations of one image of a file-based dataset (COCO or VOC).

    Attributes:
        image_id: Id used in the COCO ground truth.
        path: Image file.
        height: Image height in pixels.
        width: Image width in pixels.
        boxes: ``(M, 4)`` float32 xyxy (exclusive x2/y2), clipped to the image.
        labels: ``(M,)`` int64 in ``1..K``.
        iscrowd: ``(M,)`` int64 ignore flags (COCO crowd, VOC difficult).
        areas: ``(M,)`` float32 areas for COCO's small/medium/large split (mask area when known, else box area).
        segmentations: ``M`` COCO segmentations, or ``None`` when the dataset has no masks.
    """

    image_id: int
    path: Path
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    areas: np.ndarray
    segmentations: list[Any] | None = field(default=None)


def _empty_record_arrays() -> dict[str, np.ndarray]:
    return {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros((0,), np.int64),
            "iscrowd": np.zeros((0,), np.int64), "areas": np.zeros((0,), np.float32)}


class DetectionDataset(torch.utils.data.Dataset):
    """Common behaviour of the detection datasets (see the module docstring for the sample format).

    Args:
        training: Drop ignore regions (``iscrowd == 1``) from the targets and apply ``transform``.
        with_masks: Return ``masks`` in the targets (raises if the dataset has none).
        transform: Optional ``(image, target) -> (image, target)`` applied when ``training`` (e.g.
            :class:`RandomHorizontalFlip`).

    Attributes:
        class_names: ``K + 1`` names, ``class_names[0] == "background"``.
        has_masks: Whether the annotations include instance masks.
    """

    class_names: tuple[str, ...] = ("background",)
    has_masks: bool = False

    def __init__(self, training: bool = False, with_masks: bool = False, transform: Transform | None = None) -> None:
        self.training = training
        self.with_masks = with_masks
        self.transform = transform
        if with_masks and not self.has_masks:
            raise ValueError(f"{type(self).__name__} has no instance masks; use a box-only detector (faster_rcnn)")

    @property
    def num_classes(self) -> int:
        """Number of classes including the background (what torchvision's ``num_classes`` expects)."""
        return len(self.class_names)

    def _load(self, index: int) -> tuple[Tensor, Target]:
        """Return the image and the full target (ignore regions included) of sample ``index``."""
        raise NotImplementedError

    def coco_ground_truth(self) -> dict[str, Any]:
        """Return the split as a COCO instances dict (``images``, ``annotations``, ``categories``)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image, target = self._load(index)
        if self.training:
            keep = target["iscrowd"] == 0
            if not bool(keep.all()):
                target = {k: v[keep] if isinstance(v, Tensor) else v for k, v in target.items()}
            if self.transform is not None:
                image, target = self.transform(image, target)
        return image, target

    def _categories(self) -> list[dict[str, Any]]:
        return [{"id": k, "name": name} for k, name in enumerate(self.class_names) if k > 0]


class _RecordDataset(DetectionDataset):
    """A dataset backed by a list of :class:`_Record` (COCO and VOC)."""

    records: list[_Record]

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> tuple[Tensor, Target]:
        record = self.records[index]
        image = load_image(record.path)
        if (image.height, image.width) != (record.height, record.width):
            raise AnnotationError(self._ann_path(record), f"image id={record.image_id}",
                                  f"file {str(record.path)!r} is {image.width}x{image.height} but the annotation "
                                  f"says {record.width}x{record.height}")
        target: Target = {
            "boxes": torch.from_numpy(record.boxes.copy()),
            "labels": torch.from_numpy(record.labels.copy()),
            "iscrowd": torch.from_numpy(record.iscrowd.copy()),
            "image_id": record.image_id,
        }
        if self.with_masks:
            assert record.segmentations is not None
            masks = [segmentation_to_mask(s, record.height, record.width) for s in record.segmentations]
            target["masks"] = torch.from_numpy(np.stack(masks) if masks else
                                               np.zeros((0, record.height, record.width), np.uint8))
        return _to_tensor(image), target

    def _ann_path(self, record: _Record) -> Path:
        raise NotImplementedError

    def coco_ground_truth(self) -> dict[str, Any]:
        images, annotations = [], []
        for record in self.records:
            images.append({"id": record.image_id, "height": record.height, "width": record.width,
                           "file_name": record.path.name})
            for j in range(len(record.labels)):
                x1, y1, x2, y2 = (float(v) for v in record.boxes[j])
                ann = {"id": len(annotations) + 1, "image_id": record.image_id,
                       "category_id": int(record.labels[j]), "bbox": [x1, y1, x2 - x1, y2 - y1],
                       "area": float(record.areas[j]), "iscrowd": int(record.iscrowd[j])}
                if record.segmentations is not None:
                    ann["segmentation"] = record.segmentations[j]
                annotations.append(ann)
        return {"images": images, "annotations": annotations, "categories": self._categories()}


def _clip_box(box: Sequence[float], width: int, height: int) -> np.ndarray:
    x1, y1, x2, y2 = box
    return np.array([min(max(x1, 0.0), width), min(max(y1, 0.0), height),
                     min(max(x2, 0.0), width), min(max(y2, 0.0), height)], dtype=np.float32)


# --------------------------------------------------------------------------- #
# COCO
# --------------------------------------------------------------------------- #


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class CocoDetection(_RecordDataset):
    """A COCO-format instances JSON (``instances_train2017.json`` or any export in that format).

    Category ids are mapped to contiguous labels ``1..K`` in increasing id order (``category_ids[k - 1]`` is the
    original id of label ``k``). Images without annotations are kept. Boxes slightly outside the image are clipped.

    Args:
        image_dir: Folder the ``file_name`` entries are relative to.
        ann_file: The JSON file.
        training: See :class:`DetectionDataset`.
        with_masks: Rasterize ``segmentation`` (polygons or RLE) into ``masks``.
        transform: See :class:`DetectionDataset`.
        check_files: Check at construction that every image file exists.
        max_images: Keep only the first ``max_images`` images (in file order), for quick runs.

    Raises:
        AnnotationError: Malformed JSON or entries (a box with ``w <= 0``, an unknown ``category_id`` or
            ``image_id``, a bad segmentation, a duplicate id, a missing image file ...), naming the file and entry.
    """

    has_masks = True

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        training: bool = False,
        with_masks: bool = False,
        transform: Transform | None = None,
        check_files: bool = True,
        max_images: int | None = None,
    ) -> None:
        super().__init__(training=training, with_masks=with_masks, transform=transform)
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        data = self._read_json()
        self.category_ids, names = self._parse_categories(data)
        self.class_names = ("background", *names)
        self.records = self._parse(data, max_images)
        if check_files:
            missing = [r for r in self.records if not r.path.is_file()]
            if missing:
                raise AnnotationError(self.ann_file, f"image id={missing[0].image_id}",
                                      f"image file {str(missing[0].path)!r} not found ({len(missing)} of "
                                      f"{len(self.records)} image files missing under {str(self.image_dir)!r})")
        logger.info("COCO %s: %d images, %d annotations, %d classes", self.ann_file.name, len(self.records),
                    sum(len(r.labels) for r in self.records), len(names))

    def _ann_path(self, record: _Record) -> Path:
        return self.ann_file

    def _read_json(self) -> dict[str, Any]:
        import json

        if not self.ann_file.is_file():
            raise AnnotationError(self.ann_file, None, "file not found")
        try:
            with open(self.ann_file, encoding="utf-8") as stream:
                data = json.load(stream)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise AnnotationError(self.ann_file, None, f"not valid JSON: {error}") from error
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
                or not isinstance(data.get("categories"), list):
            raise AnnotationError(self.ann_file, None, "expected a JSON object with 'images' and 'categories' lists")
        if not isinstance(data.get("annotations", []), list):
            raise AnnotationError(self.ann_file, None, "'annotations' must be a list")
        return data

    def _parse_categories(self, data: Mapping[str, Any]) -> tuple[list[int], list[str]]:
        found: dict[int, str] = {}
        for k, cat in enumerate(data["categories"]):
            if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or isinstance(cat.get("id"), bool):
                raise AnnotationError(self.ann_file, f"categories[{k}]", "needs an integer 'id'")
            if cat["id"] in found:
                raise AnnotationError(self.ann_file, f"categories[{k}]", f"duplicate category id {cat['id']}")
            found[cat["id"]] = str(cat.get("name", cat["id"]))
        if not found:
            raise AnnotationError(self.ann_file, None, "no categories")
        ids = sorted(found)
        return ids, [found[i] for i in ids]

    def _parse(self, data: Mapping[str, Any], max_images: int | None) -> list[_Record]:
        label_of = {cat_id: k + 1 for k, cat_id in enumerate(self.category_ids)}
        images: dict[int, dict[str, Any]] = {}
        for k, img in enumerate(data["images"]):
            entry = f"images[{k}]"
            if not isinstance(img, dict) or not isinstance(img.get("id"), int) or isinstance(img.get("id"), bool):
                raise AnnotationError(self.ann_file, entry, "needs an integer 'id'")
            entry = f"image id={img['id']}"
            if img["id"] in images:
                raise AnnotationError(self.ann_file, entry, "duplicate image id")
            if not isinstance(img.get("file_name"), str) or not img["file_name"]:
                raise AnnotationError(self.ann_file, entry, "needs a 'file_name'")
            if not _positive_int(img.get("height")) or not _positive_int(img.get("width")):
                raise AnnotationError(self.ann_file, entry, f"needs positive integer 'height' and 'width', got "
                                      f"{img.get('height')!r} x {img.get('width')!r}")
            images[img["id"]] = img
        keep_ids = list(images)[:max_images] if max_images is not None else list(images)
        per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in keep_ids}
        for k, ann in enumerate(data.get("annotations", [])):
            if not isinstance(ann, dict):
                raise AnnotationError(self.ann_file, f"annotations[{k}]", "not an object")
            entry = f"annotation id={ann.get('id', f'? (annotations[{k}])')}"
            image_id = ann.get("image_id")
            if image_id not in images:
                raise AnnotationError(self.ann_file, entry, f"image_id {image_id!r} is not in 'images'")
            if ann.get("category_id") not in label_of:
                raise AnnotationError(self.ann_file, entry, f"category_id {ann.get('category_id')!r} is not in "
                                      f"'categories' (ids {self.category_ids[:10]}...)")
            if image_id in per_image:
                per_image[image_id].append(ann)
        records = []
        for image_id in tqdm(keep_ids, desc=f"parse {self.ann_file.name}", disable=len(keep_ids) < 5000,
                             leave=False):
            img = images[image_id]
            height, width = int(img["height"]), int(img["width"])
            arrays = _empty_record_arrays()
            boxes, labels, crowd, areas, segms = [], [], [], [], []
            for ann in per_image[image_id]:
                entry = f"annotation id={ann.get('id')} (image id={image_id})"
                bbox = ann.get("bbox")
                if not isinstance(bbox, list) or len(bbox) != 4 or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
                    raise AnnotationError(self.ann_file, entry, f"bbox must be 4 finite numbers [x, y, w, h], "
                                          f"got {bbox!r}")
                x, y, w, h = (float(v) for v in bbox)
                if w <= 0 or h <= 0:
                    raise AnnotationError(self.ann_file, entry, f"bbox {bbox} has non-positive width or height "
                                          "(x2 <= x1 or y2 <= y1)")
                box = _clip_box((x, y, x + w, y + h), width, height)
                if box[2] <= box[0] or box[3] <= box[1]:
                    raise AnnotationError(self.ann_file, entry, f"bbox {bbox} lies outside the {width}x{height} image")
                iscrowd = ann.get("iscrowd", 0)
                if iscrowd not in (0, 1):
                    raise AnnotationError(self.ann_file, entry, f"iscrowd must be 0 or 1, got {iscrowd!r}")
                if self.with_masks:
                    if "segmentation" not in ann:
                        raise AnnotationError(self.ann_file, entry, "no 'segmentation' (needed for masks)")
                    problem = _check_segmentation(ann["segmentation"], height, width)
                    if problem:
                        raise AnnotationError(self.ann_file, entry, f"bad segmentation: {problem}")
                    segms.append(ann["segmentation"])
                area = ann.get("area")
                boxes.append(box)
                labels.append(label_of[ann["category_id"]])
                crowd.append(int(iscrowd))
                areas.append(float(area) if isinstance(area, (int, float)) and area > 0 else w * h)
            if boxes:
                arrays = {"boxes": np.stack(boxes), "labels": np.array(labels, np.int64),
                          "iscrowd": np.array(crowd, np.int64), "areas": np.array(areas, np.float32)}
            records.append(_Record(image_id=image_id, path=self.image_dir / img["file_name"], height=height,
                                   width=width, segmentations=segms if self.with_masks else None, **arrays))
        return records


# --------------------------------------------------------------------------- #
# Pascal VOC
# --------------------------------------------------------------------------- #


class VOCDetection(_RecordDataset):
    """Pascal VOC detection (``VOCdevkit/VOC2007``, ``VOC2012``): 20 classes, boxes only.

    ``difficult`` objects get ``iscrowd = 1``: kept as ignore regions for evaluation, dropped from training targets.
    Image ids are the running index over the concatenated sets.

    Args:
        root: The ``VOCdevkit`` folder (holding ``VOC2007/``, ``VOC2012/``).
        sets: ``"<year folder>/<split>"`` entries, e.g. ``["VOC2007/trainval", "VOC2012/trainval"]``; each reads
            ``<root>/<year folder>/ImageSets/Main/<split>.txt``.
        training: See :class:`DetectionDataset`.
        transform: See :class:`DetectionDataset`.
        max_images: Keep only the first ``max_images`` images.

    Raises:
        AnnotationError: Missing split file, XML or image; unparsable XML; a missing or non-numeric field; an
            unknown class name; a box with ``xmax < xmin`` — naming the file and the ``<object>``.
    """

    class_names = VOC_CLASSES_WITH_BACKGROUND
    has_masks = False

    def __init__(
        self,
        root: str | os.PathLike,
        sets: Sequence[str] = ("VOC2007/trainval",),
        training: bool = False,
        transform: Transform | None = None,
        max_images: int | None = None,
    ) -> None:
        super().__init__(training=training, with_masks=False, transform=transform)
        self.root = Path(root)
        if isinstance(sets, str):
            sets = [sets]
        entries: list[tuple[Path, str]] = []
        for name in sets:
            if "/" not in name:
                raise ValueError(f"VOC set {name!r} must look like 'VOC2007/trainval'")
            year_dir = self.root / name.split("/")[0]
            split_file = year_dir / "ImageSets" / "Main" / f"{name.split('/', 1)[1]}.txt"
            if not split_file.is_file():
                raise AnnotationError(split_file, None, f"split file for set {name!r} not found")
            ids = [line.split()[0] for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()]
            entries.extend((year_dir, image_id) for image_id in ids)
        if max_images is not None:
            entries = entries[:max_images]
        self.records = [self._parse(index, year_dir, image_id)
                        for index, (year_dir, image_id) in enumerate(tqdm(entries, desc="parse VOC XML",
                                                                          disable=len(entries) < 2000, leave=False))]
        logger.info("VOC %s: %d images, %d objects", ", ".join(sets), len(self.records),
                    sum(len(r.labels) for r in self.records))

    def _ann_path(self, record: _Record) -> Path:
        return record.path.parent.parent / "Annotations" / f"{record.path.stem}.xml"

    @staticmethod
    def _number(node: ET.Element | None, tag: str, xml_path: Path, entry: str | None) -> float:
        child = node.find(tag) if node is not None else None
        if child is None or child.text is None:
            raise AnnotationError(xml_path, entry, f"missing <{tag}>")
        try:
            value = float(child.text.strip())
        except ValueError:
            raise AnnotationError(xml_path, entry, f"<{tag}> is not a number: {child.text!r}") from None
        if not math.isfinite(value):
            raise AnnotationError(xml_path, entry, f"<{tag}> is not finite: {child.text!r}")
        return value

    def _parse(self, index: int, year_dir: Path, image_id: str) -> _Record:
        xml_path = year_dir / "Annotations" / f"{image_id}.xml"
        image_path = year_dir / "JPEGImages" / f"{image_id}.jpg"
        if not xml_path.is_file():
            raise AnnotationError(xml_path, None, f"annotation of image {image_id!r} not found")
        try:
            tree = ET.parse(xml_path)
        except ET.ParseError as error:
            raise AnnotationError(xml_path, None, f"bad XML: {error}") from error
        if not image_path.is_file():
            raise AnnotationError(xml_path, None, f"image file {str(image_path)!r} not found")
        size = tree.find("size")
        width = int(self._number(size, "width", xml_path, "<size>"))
        height = int(self._number(size, "height", xml_path, "<size>"))
        if width <= 0 or height <= 0:
            raise AnnotationError(xml_path, "<size>", f"non-positive image size {width}x{height}")
        boxes, labels, difficult = [], [], []
        for k, obj in enumerate(tree.findall("object")):
            name_node = obj.find("name")
            name = (name_node.text or "").strip() if name_node is not None else ""
            entry = f"<object> {k} ({name or 'no name'})"
            if name not in VOC_OBJECT_CLASSES:
                raise AnnotationError(xml_path, entry,
                                      f"unknown class {name!r}; VOC classes are {list(VOC_OBJECT_CLASSES)}")
            flag = obj.find("difficult")
            is_difficult = flag is not None and (flag.text or "0").strip() not in ("", "0")
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise AnnotationError(xml_path, entry, "missing <bndbox>")
            xmin, ymin, xmax, ymax = (self._number(bndbox, tag, xml_path, entry)
                                      for tag in ("xmin", "ymin", "xmax", "ymax"))
            # 1-based inclusive pixel indices -> 0-based edges with exclusive x2/y2 (detectron2's convention).
            box = (xmin - 1.0, ymin - 1.0, xmax, ymax)
            if box[2] <= box[0] or box[3] <= box[1]:
                raise AnnotationError(xml_path, entry, f"box has xmax < xmin or ymax < ymin: "
                                      f"xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}")
            clipped = _clip_box(box, width, height)
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                raise AnnotationError(xml_path, entry, f"box {box} lies outside the {width}x{height} image")
            boxes.append(clipped)
            labels.append(VOC_OBJECT_CLASSES.index(name) + 1)
            difficult.append(int(is_difficult))
        arrays = _empty_record_arrays()
        if boxes:
            stacked = np.stack(boxes)
            arrays = {"boxes": stacked, "labels": np.array(labels, np.int64),
                      "iscrowd": np.array(difficult, np.int64),
                      "areas": ((stacked[:, 2] - stacked[:, 0]) * (stacked[:, 3] - stacked[:, 1])).astype(np.float32)}
        return _Record(image_id=index, path=image_path, height=height, width=width, **arrays)


# --------------------------------------------------------------------------- #
# Synthetic scenes
# --------------------------------------------------------------------------- #


class SyntheticDetection(DetectionDataset):
    """The embedded synthetic scenes as a detection dataset (6 classes, boxes and masks, nothing ignored).

    Args:
        num_images: Number of images.
        size: ``(H, W)`` of every image (each side >= 32).
        seed: Dataset seed (see ``SyntheticScenes``).
        split: ``"train"`` or ``"val"`` (disjoint seed streams).
        training: See :class:`DetectionDataset`.
        with_masks: Return ``masks``.
        transform: See :class:`DetectionDataset`.
    """

    class_names = CLASS_NAMES
    has_masks = True

    def __init__(
        self,
        num_images: int,
        size: tuple[int, int] = (128, 128),
        seed: int = 0,
        split: str = "train",
        training: bool = False,
        with_masks: bool = False,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(training=training, with_masks=with_masks, transform=transform)
        self.scenes = SyntheticScenes(num_images, size=tuple(size), seed=seed, split=split)

    def __len__(self) -> int:
        return len(self.scenes)

    def _load(self, index: int) -> tuple[Tensor, Target]:
        sample = self.scenes[index]
        count = len(sample.instance_labels)
        target: Target = {
            "boxes": torch.from_numpy(np.asarray(sample.instance_boxes, np.float32).reshape(count, 4)),
            "labels": torch.from_numpy(np.asarray(sample.instance_labels, np.int64)),
            "iscrowd": torch.zeros(count, dtype=torch.int64),
            "image_id": int(index),
        }
        if self.with_masks:
            target["masks"] = torch.from_numpy(sample.instance_masks.astype(np.uint8))
        return _to_tensor(sample.image), target

    def coco_ground_truth(self) -> dict[str, Any]:
        images, annotations = [], []
        for index in tqdm(range(len(self)), desc="synthetic ground truth", disable=len(self) < 500, leave=False):
            sample = self.scenes[index]
            images.append({"id": index, "height": sample.image.height, "width": sample.image.width})
            for box, label, mask in zip(sample.instance_boxes, sample.instance_labels, sample.instance_masks):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append({"id": len(annotations) + 1, "image_id": index, "category_id": int(label),
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(mask.sum()), "iscrowd": 0,
                                    "segmentation": mask_to_rle(mask)})
        return {"images": images, "annotations": annotations, "categories": self._categories()}
