"""Readers for segmentation datasets stored on disk in their standard layouts, and the factory that picks one by name.

Every reader scans its files when it is constructed and raises an error naming the expected file or folder when
something is missing, so a wrong path fails before training starts, not hours in. Masks are returned as ``(H, W)``
uint8 class indices with ``IGNORE_INDEX`` (255) for pixels that count in no metric and no loss.

- ``VOCSegmentation``: ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette), ``ImageSets/Segmentation/
  {train,val}.txt``; optional SBD ``SegmentationClassAug/*.png`` with ``trainaug.txt``, ``train_aug.txt`` or
  ``aug.txt``.
- ``ADE20KSegmentation``: ``images/{training,validation}/*.jpg``, ``annotations/{training,validation}/*.png``.
- ``CityscapesSegmentation``: ``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png``,
  ``gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png`` (or ``*_gtFine_labelIds.png``, converted).
- ``COCOStuffSegmentation``: ``images/{train2017,val2017}/*.jpg``, ``annotations/{train2017,val2017}/
  *_labelTrainIds.png`` (or the raw ``*.png`` stuffthingmaps, converted).
- ``FolderSegmentation``: ``images/{train,val}/**/*.<ext>``, ``masks/{train,val}/**/*.png``, ``classes.txt``.

``build_segmentation_dataset(name, root, split)`` builds any of them, or the embedded ``SyntheticSegmentation``, by
name (one of ``SEGMENTATION_DATASETS``). The sample type and base class they share live in
``densessl.seg.dataset``.
"""

from __future__ import annotations

import logging
import os
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from densessl.data.images import IMAGE_EXTENSIONS, load_image
from densessl.data.voc import VOC_CLASSES_WITH_BACKGROUND
from densessl.seg.dataset import IGNORE_INDEX, SegmentationDataset, SegSample, SyntheticSegmentation

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABEL_TO_TRAIN_ID",
    "COCO_STUFF_CLASSES",
    "COCO_STUFF_ID_TO_TRAIN_ID",
    "COCO_STUFF_UNUSED_IDS",
    "SEGMENTATION_DATASETS",
    "SegDataset",
    "SPLITS",
    "ADE20KSegmentation",
    "CityscapesSegmentation",
    "COCOStuffSegmentation",
    "FolderSegmentation",
    "VOCSegmentation",
    "build_segmentation_dataset",
    "read_index_mask",
]

logger = logging.getLogger("densessl")

SPLITS = ("train", "val")

SegDataset = Literal["voc", "ade20k", "cityscapes", "coco_stuff", "synthetic", "folder"]
"""The dataset names ``build_segmentation_dataset`` reads (``densessl-eval-seg --dataset``)."""
SEGMENTATION_DATASETS: tuple[str, ...] = typing.get_args(SegDataset)

# The 150 SceneParsing classes in train-id order (mmsegmentation's ADE20KDataset, trailing space of "bed " removed).
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

# Official cityscapesScripts labels.py: labelId -> trainId for the 19 evaluated classes; every other id -> 255.
CITYSCAPES_LABEL_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}

# The 80 thing + 91 stuff classes of COCO-Stuff 164k in train-id order (mmsegmentation's COCOStuffDataset).
COCO_STUFF_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood",
    "water-other", "waterdrops", "window-blind", "window-other", "wood",
)

# Raw stuffthingmaps store COCO category id - 1 (0..181). These 11 thing ids have no annotations in COCO 2017 and
# are dropped; the remaining 171 ids map, in order, to train ids 0..170 (mmsegmentation's coco_stuff164k converter).
COCO_STUFF_UNUSED_IDS: tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_STUFF_ID_TO_TRAIN_ID: dict[int, int] = {
    raw: train for train, raw in enumerate(i for i in range(182) if i not in COCO_STUFF_UNUSED_IDS)
}

# PIL modes that hold one integer per pixel: class indices (L, 16/32-bit) or palette indices (P) or 0/1 (1).
_INDEX_MODES = ("L", "P", "1", "I", "I;16", "I;16L", "I;16B", "I;16N")
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _read_error_reason(error: BaseException) -> str:
    """A short reason for a failed read, without the file path PIL puts in some messages."""
    if isinstance(error, UnidentifiedImageError):
        return "not a readable image file"
    return f"{type(error).__name__}: {error}"


def _lookup_table(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry uint8 table: ``table[k] = mapping[k]``, ``IGNORE_INDEX`` for every unmapped value."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for source, target in mapping.items():
        table[source] = target
    return table


_ADE20K_TABLE = _lookup_table({k: k - 1 for k in range(1, len(ADE20K_CLASSES) + 1)})
_CITYSCAPES_TABLE = _lookup_table(CITYSCAPES_LABEL_TO_TRAIN_ID)
_COCO_STUFF_TABLE = _lookup_table(COCO_STUFF_ID_TO_TRAIN_ID)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _mode_hint(mode: str) -> str:
    return (f"it is a {mode} image, not class indices: save masks as single-channel class-index PNGs (mode L) "
            f"or palette PNGs (mode P), not colour images")


def read_index_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a class-index mask file as an ``(H, W)`` uint8 array (palette PNGs give their palette indices).

    Args:
        path: A single-channel (``L``, ``1``, 16-bit) or palette (``P``) image file.

    Returns:
        The stored values, unmapped.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file cannot be decoded, is a colour (RGB/RGBA) image, or holds values above 255.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.array(image) if mode in _INDEX_MODES else None
    except FileNotFoundError:
        raise FileNotFoundError(f"mask not found: {path}") from None
    except _READ_ERRORS as error:
        raise ValueError(f"cannot read mask {path}: {_read_error_reason(error)}") from error
    if array is None:
        raise ValueError(f"mask {path}: {_mode_hint(mode)}")
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"mask {path} has values in [{array.min()}, {array.max()}]; class indices must fit "
                             f"in 0..255 (save the mask as an 8-bit PNG)")
        array = array.astype(np.uint8)
    return array


class _Pair(NamedTuple):
    image: Path
    mask: Path
    table: np.ndarray | None  # value remapping applied to the stored mask, or None
    name: str


class _PairedFiles(SegmentationDataset):
    """Shared ``__len__``/``__getitem__`` for readers that hold a list of (image file, mask file) pairs."""

    samples: list[_Pair]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> SegSample:
        pair = self.samples[index]
        image = load_image(pair.image)
        mask = read_index_mask(pair.mask)
        if pair.table is not None:
            mask = pair.table[mask]
        if mask.shape != (image.height, image.width):
            raise ValueError(
                f"mask size {mask.shape[1]}x{mask.shape[0]} does not match image size {image.width}x{image.height}: "
                f"{pair.mask} vs {pair.image} (the mask must have exactly the image's width and height)"
            )
        return SegSample(image=image, mask=mask, name=pair.name)


def _find_dataset_dir(dataset: str, root: str | os.PathLike | None, markers: Sequence[str],
                      subdirs: Sequence[str], layout: str) -> Path:
    """The folder holding every entry of ``markers``: ``root`` itself or ``root/<subdir>`` for one of ``subdirs``."""
    if root is None:
        raise ValueError(f"{dataset} needs a root folder: pass the dataset directory ({layout})")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} root not found: {root} — expected {layout}")
    candidates = [root] + [root / subdir for subdir in subdirs]
    for candidate in candidates:
        if all((candidate / marker).is_dir() for marker in markers):
            return candidate
    wanted = " and ".join(f"{marker}/" for marker in markers)
    where = ", ".join(str(candidate) for candidate in candidates)
    raise FileNotFoundError(f"{dataset} not found under {root}: looked for {wanted} in {where} — expected {layout}")


def _file_names(folder: Path) -> list[str]:
    """Sorted names of the regular, non-hidden files directly in ``folder``."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))


def _require_dir(folder: Path, what: str, layout: str) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} not found: {folder} — expected {layout}")


def _raise_missing(what: str, missing: Sequence[str], folder: str | Path, hint: str) -> None:
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(f"{len(missing)} {what} missing from {folder}: {shown} — {hint}")


def _fixed_classes(dataset: SegmentationDataset, names: tuple[str, ...]) -> None:
    dataset.class_names = names
    dataset.num_classes = len(names)


class VOCSegmentation(_PairedFiles):
    """Pascal VOC 2012 segmentation (21 classes, 255 = object boundary / ignore), optionally with SBD "aug" masks.

    Masks in ``SegmentationClass/`` are palette PNGs whose palette *indices* are the class ids. For ``split="train"``
    the SBD-augmented set (10,582 images) is used when ``SegmentationClassAug/`` and a train-aug list exist in
    ``ImageSets/Segmentation/``: ``trainaug.txt`` or ``train_aug.txt`` (the full list), or mmsegmentation's
    ``aug.txt`` (SBD images only, read together with ``train.txt``). Each listed image takes its mask from
    ``SegmentationClassAug/`` when there is one, else from ``SegmentationClass/``. ``val`` is always the official
    1,449-image list.

    Args:
        root: ``VOC2012/``, or its parent ``VOCdevkit/``, or the folder holding ``VOCdevkit/``.
        split: ``"train"`` or ``"val"``.
        aug: Use the SBD-augmented train set: ``None`` = when present, ``True`` = required, ``False`` = never.

    Raises:
        FileNotFoundError: A folder, list, image or mask is missing (the message names it).
        ValueError: A split list is empty.
    """

    LAYOUT = "the VOCdevkit/VOC2012 layout (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)"
    AUG_LISTS = ("trainaug.txt", "train_aug.txt", "aug.txt")

    def __init__(self, root: str | os.PathLike | None, split: str = "train", aug: bool | None = None) -> None:
        _check_split(split)
        _fixed_classes(self, VOC_CLASSES_WITH_BACKGROUND)
        self.root = _find_dataset_dir("VOC2012", root, ["JPEGImages"], ["VOC2012", "VOCdevkit/VOC2012"], self.LAYOUT)
        self.split = split
        lists = self.root / "ImageSets" / "Segmentation"
        ids = self._read_list(lists / f"{split}.txt")
        mask_dirs = [self.root / "SegmentationClass"]
        self.aug = False
        if split == "train" and aug is not False:
            self.aug = self._aug_available(lists, required=aug is True)
        if self.aug:
            aug_list = next(lists / name for name in self.AUG_LISTS if (lists / name).is_file())
            aug_ids = self._read_list(aug_list)
            if aug_list.name == "aug.txt":  # mmsegmentation: SBD-only ids, to be read together with train.txt
                known = set(ids)
                aug_ids = ids + [i for i in aug_ids if i not in known]
            ids = aug_ids
            mask_dirs.insert(0, self.root / "SegmentationClassAug")
        else:
            _require_dir(mask_dirs[0], "VOC2012 mask folder", self.LAYOUT)

        images = set(_file_names(self.root / "JPEGImages"))
        _raise_missing("images", [f"{i}.jpg" for i in ids if f"{i}.jpg" not in images], self.root / "JPEGImages",
                       f"the ids come from {lists}; is the JPEGImages/ folder complete?")
        masks_in = [set(_file_names(d)) if d.is_dir() else set() for d in mask_dirs]
        self.samples = []
        missing: list[str] = []
        from_folder = [0] * len(mask_dirs)
        for image_id in ids:
            folder = next((k for k, names in enumerate(masks_in) if f"{image_id}.png" in names), None)
            if folder is None:
                missing.append(f"{image_id}.png")
                continue
            from_folder[folder] += 1
            self.samples.append(_Pair(self.root / "JPEGImages" / f"{image_id}.jpg",
                                      mask_dirs[folder] / f"{image_id}.png", None, image_id))
        _raise_missing("masks", missing, " or ".join(str(d) for d in mask_dirs),
                       "every listed image needs a PNG mask with the same name")
        if self.aug:
            logger.info("VOC2012 train: SBD-augmented list %s, %d images (%d masks from SegmentationClassAug/, "
                        "%d from SegmentationClass/)", aug_list.name, len(self.samples), from_folder[0],
                        from_folder[1])
        elif split == "train" and aug is None:
            logger.info("VOC2012 train: official list train.txt, %d images (no SBD aug: SegmentationClassAug/ or a "
                        "train-aug list not found)", len(self.samples))
        else:
            logger.info("VOC2012 %s: official list %s.txt, %d images", split, split, len(self.samples))

    def _aug_available(self, lists: Path, required: bool) -> bool:
        """Whether ``SegmentationClassAug/`` and a train-aug list exist; raises if missing and ``required``."""
        has_masks = (self.root / "SegmentationClassAug").is_dir()
        has_list = any((lists / name).is_file() for name in self.AUG_LISTS)
        if required and not (has_masks and has_list):
            missing = [] if has_masks else [f"{self.root / 'SegmentationClassAug'}/"]
            missing += [] if has_list else [f"a train-aug list in {lists} ({', '.join(self.AUG_LISTS)})"]
            raise FileNotFoundError(f"VOC2012 SBD aug requested (aug=True) but not found: {' and '.join(missing)} — "
                                    f"convert SBD with mmsegmentation's tools/dataset_converters/voc_aug.py, "
                                    f"or pass aug=False")
        return has_masks and has_list

    def _read_list(self, path: Path) -> list[str]:
        """Image ids from a split list: the first token of each line, reduced to its file stem."""
        if not path.is_file():
            raise FileNotFoundError(f"VOC2012 split list not found: {path} — expected {self.LAYOUT}")
        ids = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
        if not ids:
            raise ValueError(f"VOC2012 split list {path} is empty; expected one image id per line")
        return ids


class ADE20KSegmentation(_PairedFiles):
    """ADE20K SceneParsing (``ADEChallengeData2016``), 150 classes.

    Stored label 0 ("other") becomes 255 and label k becomes k - 1 (mmsegmentation's ``reduce_zero_label``); stored
    values above 150 also become 255.

    Args:
        root: ``ADEChallengeData2016/`` or its parent.
        split: ``"train"`` (``training/``) or ``"val"`` (``validation/``).

    Raises:
        FileNotFoundError: A folder or an image's annotation is missing.
        ValueError: The split has no images.
    """

    LAYOUT = ("the ADEChallengeData2016 layout (images/{training,validation}/*.jpg, "
              "annotations/{training,validation}/*.png)")

    def __init__(self, root: str | os.PathLike | None, split: str = "train") -> None:
        _check_split(split)
        _fixed_classes(self, ADE20K_CLASSES)
        self.root = _find_dataset_dir("ADE20K", root, ["images", "annotations"], ["ADEChallengeData2016"], self.LAYOUT)
        self.split = split
        folder = {"train": "training", "val": "validation"}[split]
        image_dir, mask_dir = self.root / "images" / folder, self.root / "annotations" / folder
        _require_dir(image_dir, "ADE20K image folder", self.LAYOUT)
        _require_dir(mask_dir, "ADE20K annotation folder", self.LAYOUT)
        stems = [Path(n).stem for n in _file_names(image_dir) if Path(n).suffix.lower() == ".jpg"]
        if not stems:
            raise ValueError(f"no .jpg images in {image_dir} — expected {self.LAYOUT}")
        masks = set(_file_names(mask_dir))
        _raise_missing("annotations", [f"{s}.png" for s in stems if f"{s}.png" not in masks], mask_dir,
                       "every image needs a PNG annotation with the same name")
        self.samples = [_Pair(image_dir / f"{s}.jpg", mask_dir / f"{s}.png", _ADE20K_TABLE, s) for s in stems]
        logger.info("ADE20K %s: %d images", split, len(self.samples))


class CityscapesSegmentation(_PairedFiles):
    """Cityscapes fine annotations, 19 classes.

    Masks are ``*_gtFine_labelTrainIds.png`` (from cityscapesScripts' ``createTrainIdLabelImgs``); where that file is
    absent, ``*_gtFine_labelIds.png`` is converted with the official labelId -> trainId mapping (others -> 255).

    Args:
        root: The folder holding ``leftImg8bit/`` and ``gtFine/``, or its parent holding ``cityscapes/``.
        split: ``"train"`` or ``"val"``.

    Raises:
        FileNotFoundError: A folder or an image's mask is missing.
        ValueError: The split has no images.
    """

    LAYOUT = ("the Cityscapes layout (leftImg8bit/{train,val}/<city>/*_leftImg8bit.png, "
              "gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png or *_gtFine_labelIds.png)")
    IMAGE_SUFFIX = "_leftImg8bit.png"

    def __init__(self, root: str | os.PathLike | None, split: str = "train") -> None:
        _check_split(split)
        _fixed_classes(self, CITYSCAPES_CLASSES)
        self.root = _find_dataset_dir("Cityscapes", root, ["leftImg8bit", "gtFine"], ["cityscapes"], self.LAYOUT)
        self.split = split
        image_root, mask_root = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        _require_dir(image_root, "Cityscapes image folder", self.LAYOUT)
        _require_dir(mask_root, "Cityscapes mask folder", self.LAYOUT)
        self.samples = []
        missing: list[str] = []
        converted = 0
        for city in sorted(p.name for p in image_root.iterdir() if p.is_dir()):
            mask_dir = mask_root / city
            masks = set(_file_names(mask_dir)) if mask_dir.is_dir() else set()
            for name in _file_names(image_root / city):
                if not name.endswith(self.IMAGE_SUFFIX):
                    continue
                base = name[: -len(self.IMAGE_SUFFIX)]
                if f"{base}_gtFine_labelTrainIds.png" in masks:
                    mask, table = mask_dir / f"{base}_gtFine_labelTrainIds.png", None
                elif f"{base}_gtFine_labelIds.png" in masks:
                    mask, table = mask_dir / f"{base}_gtFine_labelIds.png", _CITYSCAPES_TABLE
                    converted += 1
                else:
                    missing.append(f"{city}/{base}_gtFine_labelTrainIds.png")
                    continue
                self.samples.append(_Pair(image_root / city / name, mask, table, Path(name).stem))
        _raise_missing("masks", missing, mask_root, "each image needs *_gtFine_labelTrainIds.png or "
                       "*_gtFine_labelIds.png in the same city folder")
        if not self.samples:
            raise ValueError(f"no *{self.IMAGE_SUFFIX} images in {image_root}/<city>/ — expected {self.LAYOUT}")
        logger.info("Cityscapes %s: %d images (%d masks from labelTrainIds, %d converted from labelIds)", split,
                    len(self.samples), len(self.samples) - converted, converted)


class COCOStuffSegmentation(_PairedFiles):
    """COCO-Stuff 164k, 171 classes (80 things + 91 stuff).

    Masks are mmsegmentation's converted ``<stem>_labelTrainIds.png`` (values 0..170, 255 ignore); where that file
    is absent, the raw stuffthingmap ``<stem>.png`` (values 0..181, 255 unlabeled) is mapped to the 171 train ids,
    the 11 unused thing ids and any other value becoming 255.

    Args:
        root: The folder holding ``images/`` and ``annotations/``, or its parent holding ``coco_stuff164k/`` or
            ``cocostuff/``.
        split: ``"train"`` (``train2017``) or ``"val"`` (``val2017``).

    Raises:
        FileNotFoundError: A folder or an image's mask is missing.
        ValueError: The split has no images.
    """

    LAYOUT = ("the COCO-Stuff 164k layout (images/{train2017,val2017}/*.jpg, "
              "annotations/{train2017,val2017}/*_labelTrainIds.png or raw *.png stuffthingmaps)")

    def __init__(self, root: str | os.PathLike | None, split: str = "train") -> None:
        _check_split(split)
        _fixed_classes(self, COCO_STUFF_CLASSES)
        self.root = _find_dataset_dir("COCO-Stuff", root, ["images", "annotations"], ["coco_stuff164k", "cocostuff"],
                                      self.LAYOUT)
        self.split = split
        folder = {"train": "train2017", "val": "val2017"}[split]
        image_dir, mask_dir = self.root / "images" / folder, self.root / "annotations" / folder
        _require_dir(image_dir, "COCO-Stuff image folder", self.LAYOUT)
        _require_dir(mask_dir, "COCO-Stuff annotation folder", self.LAYOUT)
        stems = [Path(n).stem for n in _file_names(image_dir) if Path(n).suffix.lower() == ".jpg"]
        if not stems:
            raise ValueError(f"no .jpg images in {image_dir} — expected {self.LAYOUT}")
        masks = set(_file_names(mask_dir))
        self.samples = []
        missing: list[str] = []
        for stem in stems:
            if f"{stem}_labelTrainIds.png" in masks:
                self.samples.append(_Pair(image_dir / f"{stem}.jpg", mask_dir / f"{stem}_labelTrainIds.png", None,
                                          stem))
            elif f"{stem}.png" in masks:
                self.samples.append(_Pair(image_dir / f"{stem}.jpg", mask_dir / f"{stem}.png", _COCO_STUFF_TABLE,
                                          stem))
            else:
                missing.append(f"{stem}_labelTrainIds.png")
        _raise_missing("masks", missing, mask_dir, "each image needs <name>_labelTrainIds.png or the raw <name>.png")
        converted = sum(pair.table is not None for pair in self.samples)
        logger.info("COCO-Stuff %s: %d images (%d masks from labelTrainIds, %d mapped from raw stuffthingmaps)",
                    split, len(self.samples), len(self.samples) - converted, converted)


class _Problems:
    """Problems found in a segmentation folder, grouped by kind, for one error message."""

    def __init__(self) -> None:
        self.items: dict[str, list[str]] = {}
        self.hints: dict[str, str] = {}

    def add(self, kind: str, item: str, hint: str = "") -> None:
        self.items.setdefault(kind, []).append(item)
        if hint:
            self.hints.setdefault(kind, hint)

    def __bool__(self) -> bool:
        return bool(self.items)

    def message(self, header: str, max_report: int) -> str:
        total = sum(len(items) for items in self.items.values())
        lines = [f"{header}, {total} problem{'s' if total != 1 else ''}:"]
        for kind, items in self.items.items():
            shown = ", ".join(items[:max_report])
            if len(items) > max_report:
                shown += f", ... and {len(items) - max_report} more"
            hint = f" — {self.hints[kind]}" if kind in self.hints else ""
            lines.append(f"  {kind} ({len(items)}): {shown}{hint}")
        return "\n".join(lines)


def _scan_tree(folder: Path, extensions: Sequence[str]) -> dict[str, list[Path]]:
    """Files under ``folder`` (recursively) with one of ``extensions``, keyed by relative path without extension."""
    found: dict[str, list[Path]] = {}
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(directory) / name
            if name.startswith(".") or path.suffix.lower() not in extensions:
                continue
            found.setdefault(path.relative_to(folder).with_suffix("").as_posix(), []).append(path)
    return found


def _present_values(array: np.ndarray) -> list[int]:
    """The distinct values of an integer array, ascending."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.uint8:
        return np.flatnonzero(np.bincount(array.ravel(), minlength=256)).tolist()
    return np.unique(array).tolist()


class FolderSegmentation(_PairedFiles):
    """Your own data: ``root/images/<split>/`` and ``root/masks/<split>/``, paired by relative path.

    Images may have any extension of ``IMAGE_EXTENSIONS`` and sit in nested subfolders; each needs a PNG mask with
    the same relative path and stem (``images/train/site1/a.jpg`` -> ``masks/train/site1/a.png``) holding class
    indices, either single-channel or palette (read as palette indices). Classes come from ``root/classes.txt``
    (one name per line, line k = class k, blank lines ignored) or ``num_classes`` (names ``class_0`` ...).

    The folder is validated at construction (see ``validate``): every problem is collected and reported in one
    ``ValueError``, with the other split's problems too when this split fails. Sample names are relative paths without
    extension (``"site1/a"``), so they stay unique.

    Args:
        root: The dataset folder.
        split: ``"train"`` or ``"val"``.
        num_classes: Number of classes; required without ``classes.txt``, must agree with it otherwise.
        ignore_index: Mask value for ignored pixels in the files (returned masks always use 255).
        check_values: Decode every mask to check its values (skip for huge datasets; sizes are always checked).
        max_report: Offending files listed per kind of problem.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: The class definition is missing or inconsistent, or the folder fails validation.
    """

    def __init__(self, root: str | os.PathLike | None, split: str = "train", *, num_classes: int | None = None,
                 ignore_index: int = IGNORE_INDEX, check_values: bool = True, max_report: int = 10) -> None:
        _check_split(split)
        if root is None:
            raise ValueError("the folder dataset needs a root: pass the folder holding images/, masks/, classes.txt")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"segmentation folder not found: {self.root} — expected a folder holding "
                                    f"images/{split}/, masks/{split}/ and classes.txt")
        if not 0 <= ignore_index <= 255:
            raise ValueError(f"ignore_index must be in 0..255 (masks are 8-bit), got {ignore_index}")
        self.split = split
        self.source_ignore_index = ignore_index
        self.check_values = check_values
        self.class_names = self._read_classes(num_classes)
        self.num_classes = len(self.class_names)
        if ignore_index < self.num_classes:
            raise ValueError(f"ignore_index={ignore_index} is also a class index (classes are "
                             f"0..{self.num_classes - 1}); use a value >= {self.num_classes}, e.g. 255")
        self.samples = []
        self.validate(max_report)

    def _read_classes(self, num_classes: int | None) -> tuple[str, ...]:
        path = self.root / "classes.txt"
        names: list[str] | None = None
        if path.is_file():
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not names:
                raise ValueError(f"{path} lists no class names; write one class name per line (line k = class k)")
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"{path} lists these class names more than once: {', '.join(duplicates)}; "
                                 f"each class needs its own name")
        if names is None and num_classes is None:
            raise ValueError(f"no classes defined for segmentation folder {self.root}: add {path} (one class name "
                             f"per line, line k = class index k) or pass --num-classes N")
        if names is not None and num_classes is not None and len(names) != num_classes:
            raise ValueError(f"{path} lists {len(names)} classes but num_classes={num_classes}; make them agree "
                             f"(fix classes.txt or drop --num-classes)")
        if names is None:
            names = [f"class_{k}" for k in range(num_classes)]  # type: ignore[arg-type]
        if not 1 <= len(names) <= 255:
            raise ValueError(f"the folder dataset supports 1..255 classes (255 marks ignored pixels), got {len(names)}")
        return tuple(names)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def validate(self, max_report: int = 10) -> None:
        """Scan the split and check every image/mask pair; set the sample list when all is well.

        Checks: the ``images/<split>`` and ``masks/<split>`` folders exist and the split is not empty; every image
        has a mask and every mask an image; no two images share a relative path without extension; image and mask
        headers are readable; masks are single-channel or palette; image and mask sizes match; and (with
        ``check_values``) mask values are in ``[0, num_classes)`` or the ignore value. Image sizes are read from the
        file headers without decoding the pixels.

        When the split has problems, the other split is checked too (unless it already passed in this process) and
        its problems are listed in the same error, so one round of fixes covers both.

        Args:
            max_report: Offending files listed per kind of problem.

        Raises:
            ValueError: One message listing every kind of problem found, with up to ``max_report`` files each.
        """
        if max_report < 1:
            raise ValueError(f"max_report must be >= 1, got {max_report}")
        problems, samples = self._collect(self.split)
        if problems:
            message = problems.message(f"invalid segmentation folder {self.root} (split {self.split!r})", max_report)
            other = SPLITS[1 - SPLITS.index(self.split)]
            if self._key(other) not in FolderSegmentation._passed:
                other_problems, _ = self._collect(other)
                if other_problems:
                    message += "\n" + other_problems.message(f"and split {other!r} of the same folder", max_report)
            raise ValueError(message)
        self.samples = samples
        FolderSegmentation._passed.add(self._key(self.split))
        logger.info("segmentation folder %s (split %r): %d image/mask pairs, %d classes%s", self.root, self.split,
                    len(samples), self.num_classes, "" if self.check_values else " (mask values not checked)")

    # Splits that passed validation in this process, so a failing split does not re-check a big one that passed.
    _passed: ClassVar[set[tuple[str, str, int, int, bool]]] = set()

    def _key(self, split: str) -> tuple[str, str, int, int, bool]:
        return (str(self.root.resolve()), split, self.num_classes, self.source_ignore_index, self.check_values)

    def _collect(self, split: str) -> tuple[_Problems, list[_Pair]]:
        """Every problem of ``split`` (see ``validate``) and, when there are none, its image/mask pairs."""
        image_dir, mask_dir = self.root / "images" / split, self.root / "masks" / split
        problems = _Problems()
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                problems.add("missing folders", f"{self._rel(folder)}/",
                             f"expected images/{split}/ (the images) and masks/{split}/ (one PNG mask per "
                             f"image, same relative path)")
        if problems:
            return problems, []
        images = _scan_tree(image_dir, IMAGE_EXTENSIONS)
        masks = _scan_tree(mask_dir, (".png",))
        if not images:
            problems.add("empty split", f"{self._rel(image_dir)}/ has no images",
                         f"put the split's images ({', '.join(IMAGE_EXTENSIONS)}) there, subfolders allowed")
            return problems, []

        for key, paths in images.items():
            if key not in masks:
                problems.add("images without a mask", self._rel(paths[0]),
                             f"expected a PNG mask with the same relative path, e.g. "
                             f"{self._rel(mask_dir / key)}.png")
        for key, paths in masks.items():
            if key not in images:
                problems.add("masks without an image", self._rel(paths[0]),
                             f"each mask needs an image with the same relative path under {self._rel(image_dir)}/")
        for group, kind in ((images, "images sharing one name"), (masks, "masks sharing one name")):
            for paths in group.values():
                if len(paths) > 1:
                    problems.add(kind, " + ".join(self._rel(p) for p in paths),
                                 "rename so each file's relative path without extension is unique")

        table = None
        if self.source_ignore_index != IGNORE_INDEX:
            table = np.arange(256, dtype=np.uint8)
            table[self.source_ignore_index] = IGNORE_INDEX
        samples = []
        for key in sorted(images.keys() & masks.keys()):
            if len(images[key]) > 1 or len(masks[key]) > 1:
                continue
            image_path, mask_path = images[key][0], masks[key][0]
            if self._check_pair(image_path, mask_path, problems):
                samples.append(_Pair(image_path, mask_path, table, key))
        return problems, samples

    def _check_pair(self, image_path: Path, mask_path: Path, problems: _Problems) -> bool:
        """Check one image/mask pair, adding what is wrong to ``problems``; True when the pair is fine."""
        ok = True
        image_size = mask_size = None
        try:
            with Image.open(image_path) as image:
                image_size = image.size
        except _READ_ERRORS as error:
            problems.add("unreadable images", f"{self._rel(image_path)} ({_read_error_reason(error)})",
                         "replace or delete these files")
            ok = False
        try:
            with Image.open(mask_path) as mask:
                mask_size, mode = mask.size, mask.mode
                if mode not in _INDEX_MODES:
                    problems.add("masks that are not single-channel class indices", f"{self._rel(mask_path)} ({mode})",
                                 "save masks as single-channel class-index PNGs (mode L) or palette PNGs (mode P), "
                                 "not colour images")
                    ok = False
                elif self.check_values:
                    ok = self._check_values(mask_path, np.array(mask), problems) and ok
        except _READ_ERRORS as error:
            problems.add("unreadable masks", f"{self._rel(mask_path)} ({_read_error_reason(error)})",
                         "replace or delete these files")
            ok = False
        if image_size is not None and mask_size is not None and image_size != mask_size:
            problems.add("image/mask size mismatches", f"{self._rel(image_path)} is {image_size[0]}x{image_size[1]} "
                         f"but {self._rel(mask_path)} is {mask_size[0]}x{mask_size[1]}",
                         "each mask must have exactly its image's width and height")
            ok = False
        return ok

    def _check_values(self, mask_path: Path, array: np.ndarray, problems: _Problems) -> bool:
        n, ignore = self.num_classes, self.source_ignore_index
        bad = [v for v in _present_values(array) if (v < 0 or v >= n) and v != ignore]
        if not bad:
            return True
        shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        hint = f"class indices are 0..{n - 1} ({n} classes) and {ignore} marks ignored pixels"
        hint += "; add the missing classes to classes.txt" if (self.root / "classes.txt").is_file() else \
            "; raise --num-classes if there are more classes"
        if ignore == IGNORE_INDEX:
            hint += ", or pass ignore_index=<value> if your masks mark ignored pixels with another value"
        problems.add(f"mask values outside [0, {n}) and != {ignore}", f"{self._rel(mask_path)} has values [{shown}]",
                     hint)
        return False


def build_segmentation_dataset(name: str, root: str | os.PathLike | None, split: str, *,
                               num_classes: int | None = None, ignore_index: int = IGNORE_INDEX,
                               **kwargs: Any) -> SegmentationDataset:
    """Build a segmentation dataset by name.

    Args:
        name: One of ``SEGMENTATION_DATASETS``: ``"voc"``, ``"ade20k"``, ``"cityscapes"``, ``"coco_stuff"``,
            ``"synthetic"`` (``root`` ignored) or ``"folder"`` (your own data).
        root: The dataset folder (see the reader classes above for the layout each expects).
        split: ``"train"`` or ``"val"``, mapped to each dataset's own split names.
        num_classes: For ``"folder"``, the class count (with or instead of ``classes.txt``); for the others, an
            optional check against the dataset's fixed count.
        ignore_index: The value marking ignored pixels in the mask files; only ``"folder"`` accepts a value other
            than 255 (it is remapped to 255 in returned masks).
        **kwargs: Reader options: ``aug`` for ``"voc"``; ``check_values``/``max_report`` for ``"folder"``;
            ``num_images``/``size``/``seed`` for ``"synthetic"``.

    Returns:
        The dataset; its masks use 255 for ignored pixels.

    Raises:
        ValueError: Unknown ``name`` or ``split``, a ``num_classes`` that contradicts the dataset, an unsupported
            ``ignore_index``, or a malformed dataset.
        FileNotFoundError: A folder or file the dataset needs is missing (the message names it).
    """
    from densessl.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES

    if name not in SEGMENTATION_DATASETS:
        raise ValueError(f"unknown segmentation dataset {name!r}; valid names: {', '.join(SEGMENTATION_DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name == "folder":
        return FolderSegmentation(root, split, num_classes=num_classes, ignore_index=ignore_index, **kwargs)
    if ignore_index != IGNORE_INDEX:
        raise ValueError(f"ignore_index={ignore_index} is only supported for the 'folder' dataset; {name!r} masks "
                         f"always use {IGNORE_INDEX} for ignored pixels (drop the option)")
    fixed_classes = {"voc": VOC_CLASSES_WITH_BACKGROUND, "ade20k": ADE20K_CLASSES, "cityscapes": CITYSCAPES_CLASSES,
                     "coco_stuff": COCO_STUFF_CLASSES, "synthetic": SYNTHETIC_CLASSES}[name]
    if num_classes is not None and num_classes != len(fixed_classes):
        raise ValueError(f"dataset {name!r} has {len(fixed_classes)} classes, but num_classes={num_classes} was "
                         f"given; drop the option or set it to {len(fixed_classes)}")
    if name == "synthetic":
        return SyntheticSegmentation(split=split, **kwargs)
    readers = {"voc": VOCSegmentation, "ade20k": ADE20KSegmentation, "cityscapes": CityscapesSegmentation,
               "coco_stuff": COCOStuffSegmentation}
    return readers[name](root, split, **kwargs)
