"""Segmentation readers: tiny fixtures in each dataset's on-disk layout, label mappings, folder validation errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densessl.data.voc import VOC_CLASSES_WITH_BACKGROUND
from densessl.seg.dataset import SegmentationDataset, SegSample, SyntheticSegmentation
from densessl.seg.readers import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    COCO_STUFF_CLASSES,
    COCO_STUFF_ID_TO_TRAIN_ID,
    SEGMENTATION_DATASETS,
    FolderSegmentation,
    VOCSegmentation,
    build_segmentation_dataset,
)

W, H = 16, 12


def _image(path: Path, size: tuple[int, int] = (W, H), seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _mask(path: Path, values: list[int], mode: str = "L", size: tuple[int, int] = (W, H)) -> np.ndarray:
    """Write a mask whose rows cycle through ``values``; return the stored array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.array([[values[row % len(values)]] * size[0] for row in range(size[1])], dtype=np.uint8)
    image = Image.frombytes(mode, size, array.tobytes())
    if mode == "P":  # colours unrelated to the indices, so reading colours instead of indices would show
        image.putpalette([c for k in range(256) for c in ((k * 37) % 256, (k * 91) % 256, k)])
    image.save(path)
    return array


def _write_list(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def _check_sample(sample: SegSample) -> None:
    assert isinstance(sample, SegSample)
    assert sample.image.mode == "RGB" and sample.image.size == (W, H)
    assert sample.mask.dtype == np.uint8 and sample.mask.shape == (H, W)


# --- class lists and mappings -------------------------------------------------------------------------------------


def test_class_lists() -> None:
    assert len(VOC_CLASSES_WITH_BACKGROUND) == 21
    assert VOC_CLASSES_WITH_BACKGROUND[0] == "background" and VOC_CLASSES_WITH_BACKGROUND[15] == "person"
    assert len(ADE20K_CLASSES) == 150 and ADE20K_CLASSES[:3] == ("wall", "building", "sky")
    assert ADE20K_CLASSES[7] == "bed" and ADE20K_CLASSES[-1] == "flag"
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[13] == "car"
    assert len(COCO_STUFF_CLASSES) == 171 and COCO_STUFF_CLASSES[80] == "banner"
    for names in (VOC_CLASSES_WITH_BACKGROUND, ADE20K_CLASSES, CITYSCAPES_CLASSES, COCO_STUFF_CLASSES):
        assert len(set(names)) == len(names)


def test_coco_stuff_id_mapping_matches_mmseg_converter() -> None:
    expected = {0: 0, 10: 10, 12: 11, 24: 23, 26: 24, 27: 25, 30: 26, 43: 39, 45: 40, 64: 59, 66: 60, 69: 61,
                71: 62, 81: 72, 83: 73, 89: 79, 91: 80, 92: 81, 181: 170}
    assert {k: COCO_STUFF_ID_TO_TRAIN_ID[k] for k in expected} == expected
    assert len(COCO_STUFF_ID_TO_TRAIN_ID) == 171 and 11 not in COCO_STUFF_ID_TO_TRAIN_ID


# --- Pascal VOC ---------------------------------------------------------------------------------------------------


def _voc(root: Path, aug: str | None = None) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    ids = ["2007_000001", "2007_000002", "2007_000003"]
    for k, image_id in enumerate(ids):
        _image(voc / "JPEGImages" / f"{image_id}.jpg", seed=k)
        _mask(voc / "SegmentationClass" / f"{image_id}.png", [0, 15, 255], mode="P")
    _write_list(voc / "ImageSets" / "Segmentation" / "train.txt", ids[:2])
    _write_list(voc / "ImageSets" / "Segmentation" / "val.txt", ids[2:])
    if aug is not None:
        _image(voc / "JPEGImages" / "2008_000009.jpg")
        _mask(voc / "SegmentationClassAug" / "2008_000009.png", [3, 4])  # single-channel index PNG
        _mask(voc / "SegmentationClassAug" / "2007_000001.png", [7])
        listed = ["2008_000009"] if aug == "aug.txt" else ["2007_000001", "2007_000002", "2008_000009"]
        _write_list(voc / "ImageSets" / "Segmentation" / aug, listed)
    return voc


@pytest.mark.parametrize("level", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_reads_palette_indices_from_any_root_level(tmp_path: Path, level: str) -> None:
    _voc(tmp_path)
    dataset = build_segmentation_dataset("voc", tmp_path / level, "val")
    assert len(dataset) == 1 and dataset.num_classes == 21 and dataset.class_names == VOC_CLASSES_WITH_BACKGROUND
    sample = dataset[0]
    _check_sample(sample)
    assert sample.name == "2007_000003"
    assert sorted(np.unique(sample.mask).tolist()) == [0, 15, 255]  # indices, not palette colours


@pytest.mark.parametrize("list_name", ["trainaug.txt", "train_aug.txt", "aug.txt"])
def test_voc_train_uses_sbd_aug_when_present(tmp_path: Path, list_name: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    _voc(tmp_path, aug=list_name)
    with caplog.at_level(logging.INFO, logger="densessl"):
        dataset = build_segmentation_dataset("voc", tmp_path, "train")
    assert "SBD-augmented" in caplog.text and list_name in caplog.text
    by_name = {dataset[i].name: dataset[i].mask for i in range(len(dataset))}
    assert sorted(by_name) == ["2007_000001", "2007_000002", "2008_000009"]
    assert np.unique(by_name["2007_000001"]).tolist() == [7]  # SegmentationClassAug preferred
    assert np.unique(by_name["2007_000002"]).tolist() == [0, 15, 255]  # falls back to SegmentationClass
    assert np.unique(by_name["2008_000009"]).tolist() == [3, 4]
    assert len(build_segmentation_dataset("voc", tmp_path, "train", aug=False)) == 2
    assert len(build_segmentation_dataset("voc", tmp_path, "val")) == 1  # val is never augmented


def test_voc_without_aug(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _voc(tmp_path)
    with caplog.at_level(logging.INFO, logger="densessl"):
        dataset = build_segmentation_dataset("voc", tmp_path, "train")
    assert [dataset[i].name for i in range(len(dataset))] == ["2007_000001", "2007_000002"]
    assert "official list train.txt" in caplog.text
    with pytest.raises(FileNotFoundError, match="SegmentationClassAug"):
        VOCSegmentation(tmp_path, "train", aug=True)


def test_voc_missing_files_are_named(tmp_path: Path) -> None:
    voc = _voc(tmp_path)
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"VOC2012 split list not found: .*val\.txt — expected the VOCdevkit"):
        build_segmentation_dataset("voc", tmp_path, "val")
    (voc / "SegmentationClass" / "2007_000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 masks missing .*2007_000002\.png"):
        build_segmentation_dataset("voc", tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        build_segmentation_dataset("voc", tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets", "train")


def test_mask_size_mismatch_is_reported_lazily(tmp_path: Path) -> None:
    voc = _voc(tmp_path)
    _mask(voc / "SegmentationClass" / "2007_000003.png", [0], size=(W + 1, H))
    dataset = build_segmentation_dataset("voc", tmp_path, "val")
    with pytest.raises(ValueError, match=r"17x12 does not match image size 16x12.*2007_000003\.png.*2007_000003\.jpg"):
        dataset[0]


# --- ADE20K -------------------------------------------------------------------------------------------------------


def test_ade20k_reduces_zero_label(tmp_path: Path) -> None:
    ade = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        for k in range(2):
            _image(ade / "images" / split / f"ADE_{split}_{k:08d}.jpg", seed=k)
            _mask(ade / "annotations" / split / f"ADE_{split}_{k:08d}.png", [0, 1, 150, 255])
    dataset = build_segmentation_dataset("ade20k", tmp_path, "val")
    assert len(dataset) == 2 and dataset.num_classes == 150
    sample = dataset[0]
    _check_sample(sample)
    assert sample.name == "ADE_validation_00000000"
    assert sample.mask[:4, 0].tolist() == [255, 0, 149, 255]
    (ade / "annotations" / "training" / "ADE_training_00000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"ADE_training_00000001\.png"):
        build_segmentation_dataset("ade20k", ade, "train")


# --- Cityscapes ---------------------------------------------------------------------------------------------------


def test_cityscapes_train_ids_and_label_id_fallback(tmp_path: Path) -> None:
    images, masks = tmp_path / "leftImg8bit" / "val", tmp_path / "gtFine" / "val"
    _image(images / "aachen" / "aachen_000000_000019_leftImg8bit.png")
    _mask(masks / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png", [0, 13, 255])
    _image(images / "bremen" / "bremen_000001_000019_leftImg8bit.png")
    _mask(masks / "bremen" / "bremen_000001_000019_gtFine_labelIds.png", [7, 26, 0, 33, 9])
    dataset = build_segmentation_dataset("cityscapes", tmp_path, "val")
    assert len(dataset) == 2 and dataset.class_names == CITYSCAPES_CLASSES
    first, second = dataset[0], dataset[1]
    _check_sample(first)
    assert first.name == "aachen_000000_000019_leftImg8bit"
    assert first.mask[:3, 0].tolist() == [0, 13, 255]
    assert second.mask[:5, 0].tolist() == [0, 13, 255, 18, 255]  # road, car, unlabeled, bicycle, parking
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/train"):
        build_segmentation_dataset("cityscapes", tmp_path, "train")


# --- COCO-Stuff ---------------------------------------------------------------------------------------------------


def test_coco_stuff_train_ids_and_raw_mapping(tmp_path: Path) -> None:
    coco = tmp_path / "coco_stuff164k"
    _image(coco / "images" / "val2017" / "000000000139.jpg")
    _mask(coco / "annotations" / "val2017" / "000000000139_labelTrainIds.png", [0, 170, 255])
    _mask(coco / "annotations" / "val2017" / "000000000139.png", [99])  # ignored: labelTrainIds wins
    _image(coco / "images" / "val2017" / "000000000285.jpg")
    _mask(coco / "annotations" / "val2017" / "000000000285.png", [0, 12, 11, 181, 255, 200])
    dataset = build_segmentation_dataset("coco_stuff", tmp_path, "val")
    assert len(dataset) == 2 and dataset.num_classes == 171
    first, second = dataset[0], dataset[1]
    _check_sample(first)
    assert first.name == "000000000139" and first.mask[:3, 0].tolist() == [0, 170, 255]
    assert second.mask[:6, 0].tolist() == [0, 11, 255, 170, 255, 255]


# --- folder -------------------------------------------------------------------------------------------------------


def _folder(root: Path, split: str = "train", classes: list[str] | None = None) -> Path:
    if classes is not None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "classes.txt").write_text("\n".join(classes) + "\n\n")
    _image(root / "images" / split / "a.jpg")
    _mask(root / "masks" / split / "a.png", [0, 1, 255])
    _image(root / "images" / split / "site1" / "b.png", seed=1)
    _mask(root / "masks" / split / "site1" / "b.png", [2, 0], mode="P")
    _image(root / "images" / split / "site1" / "deep" / "c.bmp", seed=2)
    _mask(root / "masks" / split / "site1" / "deep" / "c.png", [1])
    return root


def test_folder_happy_path(tmp_path: Path) -> None:
    root = _folder(tmp_path / "roads", classes=["road", "car", "tree"])
    dataset = build_segmentation_dataset("folder", root, "train")
    assert isinstance(dataset, SegmentationDataset)
    assert dataset.class_names == ("road", "car", "tree") and dataset.num_classes == 3
    assert [dataset[i].name for i in range(len(dataset))] == ["a", "site1/b", "site1/deep/c"]
    for i in range(len(dataset)):
        _check_sample(dataset[i])
    assert dataset[0].mask[:3, 0].tolist() == [0, 1, 255]
    assert dataset[1].mask[:2, 0].tolist() == [2, 0]  # palette indices
    same = build_segmentation_dataset("folder", root, "train", num_classes=3, check_values=False)
    assert len(same) == 3


def test_folder_num_classes_without_classes_txt(tmp_path: Path) -> None:
    dataset = FolderSegmentation(_folder(tmp_path), "train", num_classes=4)
    assert dataset.class_names == ("class_0", "class_1", "class_2", "class_3")


def test_folder_custom_ignore_value_is_remapped(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _image(root / "images" / "val" / "x.jpg")
    _mask(root / "masks" / "val" / "x.png", [0, 1, 9])
    dataset = build_segmentation_dataset("folder", root, "val", num_classes=2, ignore_index=9)
    assert dataset.ignore_index == 255
    assert dataset[0].mask[:3, 0].tolist() == [0, 1, 255]
    with pytest.raises(ValueError, match=r"outside \[0, 2\) and != 255 \(1\): masks/val/x\.png has values \[9\]"):
        build_segmentation_dataset("folder", root, "val", num_classes=2)
    with pytest.raises(ValueError, match="ignore_index=1 is also a class index"):
        build_segmentation_dataset("folder", root, "val", num_classes=2, ignore_index=1)


def _folder_error(root: Path, **kwargs: object) -> str:
    with pytest.raises(ValueError) as info:
        FolderSegmentation(root, "train", **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(f"invalid segmentation folder {root} (split 'train'), ")
    return message


def test_folder_image_without_mask(tmp_path: Path) -> None:
    root = _folder(tmp_path, classes=["a", "b", "c"])
    (root / "masks" / "train" / "site1" / "b.png").unlink()
    message = _folder_error(root)
    assert "1 problem:" in message
    assert "images without a mask (1): images/train/site1/b.png — expected a PNG mask with the same relative " \
           "path, e.g. masks/train/site1/b.png" in message


def test_folder_mask_without_image(tmp_path: Path) -> None:
    root = _folder(tmp_path, classes=["a", "b", "c"])
    _mask(root / "masks" / "train" / "orphan.png", [0])
    assert "masks without an image (1): masks/train/orphan.png" in _folder_error(root)


def test_folder_size_mismatch(tmp_path: Path) -> None:
    root = _folder(tmp_path, classes=["a", "b", "c"])
    _mask(root / "masks" / "train" / "a.png", [0], size=(H, W))
    message = _folder_error(root)
    assert "image/mask size mismatches (1): images/train/a.jpg is 16x12 but masks/train/a.png is 12x16" in message


def test_folder_out_of_range_values_and_all_problems_in_one_error(tmp_path: Path) -> None:
    root = _folder(tmp_path, classes=["a", "b", "c"])
    _mask(root / "masks" / "train" / "a.png", [0, 7, 9, 255])
    (root / "masks" / "train" / "site1" / "b.png").unlink()
    message = _folder_error(root)
    assert "2 problems:" in message
    assert "mask values outside [0, 3) and != 255 (1): masks/train/a.png has values [7, 9]" in message
    assert "images without a mask (1)" in message


def test_folder_check_values_false_skips_value_scan(tmp_path: Path) -> None:
    root = _folder(tmp_path, classes=["a", "b", "c"])
    _mask(root / "masks" / "train" / "a.png", [0, 7])
    assert len(FolderSegmentation(root, "train", check_values=False)) == 3


def test_folder_max_report_limits_listed_files(tmp_path: Path) -> None:
    root = _folder(tmp_path, classes=["a", "b", "c"])
    for k in range(4):
        _image(root / "images" / "train" / f"extra{k}.jpg")
    message = _folder_error(root, max_report=2)
    assert "images without a mask (4): images/train/extra0.jpg, images/train/extra1.jpg, ... and 2 more" in message


def test_folder_unreadable_files(tmp_path: Path) -> None:
    root = _folder(tmp_path, classes=["a", "b", "c"])
    (root / "images" / "train" / "a.jpg").write_bytes(b"not an image")
    (root / "masks" / "train" / "site1" / "b.png").write_bytes(b"\x89PNG broken")
    message = _folder_error(root)
    assert "unreadable images (1): images/train/a.jpg (" in message
    assert "unreadable masks (1): masks/train/site1/b.png (" in message


def test_folder_rgb_mask(tmp_path: Path) -> None:
    root = _folder(tmp_path, classes=["a", "b", "c"])
    Image.new("RGB", (W, H), (1, 2, 0)).save(root / "masks" / "train" / "a.png")
    message = _folder_error(root)
    assert "masks that are not single-channel class indices (1): masks/train/a.png (RGB)" in message
    assert "single-channel class-index PNGs (mode L) or palette PNGs (mode P)" in message


def test_folder_empty_split(tmp_path: Path) -> None:
    root = _folder(tmp_path, classes=["a", "b", "c"])
    (root / "images" / "val").mkdir()
    (root / "masks" / "val").mkdir()
    with pytest.raises(ValueError, match=r"empty split \(1\): images/val/ has no images"):
        FolderSegmentation(root, "val")


def test_folder_missing_folder(tmp_path: Path) -> None:
    root = _folder(tmp_path, classes=["a", "b", "c"])
    message = str(pytest.raises(ValueError, FolderSegmentation, root, "val").value)
    assert "missing folders (2): images/val/, masks/val/" in message
    with pytest.raises(FileNotFoundError, match="segmentation folder not found"):
        FolderSegmentation(tmp_path / "nowhere", "train", num_classes=2)


def test_folder_reports_the_problems_of_both_splits(tmp_path: Path) -> None:
    root = _folder(tmp_path, classes=["a", "b", "c"])
    _folder(root, "val")
    (root / "masks" / "train" / "site1" / "b.png").unlink()
    _mask(root / "masks" / "val" / "a.png", [0, 9])
    (root / "images" / "val" / "site1" / "deep" / "c.bmp").unlink()
    train_part, val_part = _folder_error(root).split("\nand split 'val' of the same folder, ")
    assert train_part.endswith("1 problem:\n  images without a mask (1): images/train/site1/b.png — expected a PNG "
                               "mask with the same relative path, e.g. masks/train/site1/b.png")
    assert val_part.startswith("2 problems:\n")
    assert "masks without an image (1): masks/val/site1/deep/c.png" in val_part
    assert "mask values outside [0, 3) and != 255 (1): masks/val/a.png has values [9]" in val_part
    message = str(pytest.raises(ValueError, FolderSegmentation, root, "val").value)  # val first: train shown too
    assert message.startswith(f"invalid segmentation folder {root} (split 'val'), 2 problems:\n")
    assert "\nand split 'train' of the same folder, 1 problem:\n  images without a mask (1)" in message


def test_folder_other_split_missing_or_already_valid(tmp_path: Path) -> None:
    root = _folder(tmp_path / "only_train", classes=["a", "b", "c"])
    (root / "masks" / "train" / "a.png").unlink()
    message = _folder_error(root)
    assert "\nand split 'val' of the same folder, 2 problems:\n  missing folders (2): images/val/, masks/val/" \
        in message
    root = _folder(tmp_path / "both", classes=["a", "b", "c"])
    _folder(root, "val")
    assert len(FolderSegmentation(root, "train")) == 3
    (root / "masks" / "train" / "a.png").unlink()  # train passed above: not checked again for val's error
    (root / "masks" / "val" / "a.png").unlink()
    message = str(pytest.raises(ValueError, FolderSegmentation, root, "val").value)
    assert "images without a mask (1): images/val/a.jpg" in message and "split 'train'" not in message


def test_folder_class_definitions(tmp_path: Path) -> None:
    root = _folder(tmp_path, classes=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"classes\.txt lists 3 classes but num_classes=5"):
        build_segmentation_dataset("folder", root, "train", num_classes=5)
    (root / "classes.txt").unlink()
    with pytest.raises(ValueError, match=r"add .*classes\.txt .* or pass --num-classes"):
        build_segmentation_dataset("folder", root, "train")


# --- factory ------------------------------------------------------------------------------------------------------


def test_factory_synthetic() -> None:
    dataset = build_segmentation_dataset("synthetic", None, "val", num_images=2, size=(32, 32), seed=1)
    assert isinstance(dataset, SyntheticSegmentation) and len(dataset) == 2
    assert dataset[0].mask.shape == (32, 32) and dataset[0].mask.dtype == np.uint8
    with pytest.raises(ValueError, match="has 7 classes, but num_classes=3"):
        build_segmentation_dataset("synthetic", None, "val", num_classes=3)


def test_factory_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown segmentation dataset 'pascal'; valid names: voc, ade20k"):
        build_segmentation_dataset("pascal", tmp_path, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        build_segmentation_dataset("voc", tmp_path, "test")
    with pytest.raises(ValueError, match="ignore_index=0 is only supported for the 'folder' dataset"):
        build_segmentation_dataset("ade20k", tmp_path, "train", ignore_index=0)
    with pytest.raises(ValueError, match="needs a root"):
        build_segmentation_dataset("cityscapes", None, "train")
    with pytest.raises(FileNotFoundError, match="COCO-Stuff not found under"):
        build_segmentation_dataset("coco_stuff", tmp_path, "train")
    assert SEGMENTATION_DATASETS == ("voc", "ade20k", "cityscapes", "coco_stuff", "synthetic", "folder")
