"""Detection datasets: COCO JSON and VOC XML fixtures (2 images), malformed files, synthetic scenes, flips, collate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from densessl.data.voc import VOC_OBJECT_CLASSES
from densessl.det.datasets import (
    AnnotationError,
    CocoDetection,
    RandomHorizontalFlip,
    SyntheticDetection,
    VOCDetection,
    detection_collate,
    horizontal_flip,
    mask_to_rle,
)

pytest.importorskip("pycocotools")

H, W = 40, 60


def _write_image(path: Path, height: int = H, width: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def _coco_dict() -> dict[str, Any]:
    crowd = np.zeros((H, W), np.uint8)
    crowd[30:40, 0:20] = 1  # uncompressed RLE (column-major run lengths) of this mask
    flat = crowd.flatten(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    rle_mask = np.zeros((H, W), np.uint8)
    rle_mask[5:15, 30:50] = 1
    return {
        "images": [{"id": 11, "file_name": "a.png", "height": H, "width": W},
                   {"id": 12, "file_name": "b.png", "height": H, "width": W}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 7, "bbox": [2, 4, 10, 20], "iscrowd": 0, "area": 200.0,
             "segmentation": [[2, 4, 12, 4, 12, 24, 2, 24]]},
            {"id": 2, "image_id": 11, "category_id": 3, "bbox": [30, 5, 20, 10], "iscrowd": 0, "area": 200.0,
             "segmentation": mask_to_rle(rle_mask)},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [0, 30, 20, 10], "iscrowd": 1, "area": 200.0,
             "segmentation": {"size": [H, W], "counts": [int(c) for c in counts]}},
        ],
    }


def _coco_fixture(tmp_path: Path, data: dict[str, Any] | None = None, images: bool = True) -> tuple[Path, Path]:
    if images:
        _write_image(tmp_path / "img" / "a.png")
        _write_image(tmp_path / "img" / "b.png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data if data is not None else _coco_dict()))
    return tmp_path / "img", ann


def test_coco_loads_boxes_masks_crowd_and_empty_images(tmp_path: Path) -> None:
    image_dir, ann = _coco_fixture(tmp_path)
    ds = CocoDetection(image_dir, ann, with_masks=True)
    assert len(ds) == 2 and ds.class_names == ("background", "cat", "dog") and ds.num_classes == 3
    image, target = ds[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32 and 0.0 <= image.min() <= image.max() <= 1.0
    assert target["image_id"] == 11
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 4, 12, 24], [30, 5, 50, 15], [0, 30, 20, 40]]))
    assert target["labels"].tolist() == [2, 1, 1] and target["iscrowd"].tolist() == [0, 0, 1]
    masks = target["masks"]
    assert masks.shape == (3, H, W) and masks.dtype == torch.uint8
    assert masks[1].sum() == 200 and masks[1, 5:15, 30:50].all() and masks[2].sum() == 200
    assert 150 <= int(masks[0].sum()) <= 260  # rasterized 10x20 polygon
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, H, W)
    train = CocoDetection(image_dir, ann, training=True, with_masks=True)
    _, target = train[0]
    assert target["labels"].tolist() == [2, 1] and target["masks"].shape[0] == 2  # crowd dropped for training
    gt = ds.coco_ground_truth()
    assert [a["category_id"] for a in gt["annotations"]] == [2, 1, 1]
    assert gt["annotations"][0]["bbox"] == [2.0, 4.0, 10.0, 20.0] and gt["annotations"][2]["iscrowd"] == 1
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3]


def _broken(change: str) -> dict[str, Any]:
    data = _coco_dict()
    anns = data["annotations"]
    if change == "box":
        anns[0]["bbox"] = [12, 4, -2, 20]  # x2 <= x1
    elif change == "zero_box":
        anns[0]["bbox"] = [12, 4, 0, 20]
    elif change == "category":
        anns[1]["category_id"] = 99
    elif change == "image_id":
        anns[1]["image_id"] = 404
    elif change == "polygon":
        anns[0]["segmentation"] = [[1, 2, 3, 4]]
    elif change == "dup_image":
        data["images"][1]["id"] = 11
    return data


@pytest.mark.parametrize("change, needle", [
    ("box", "annotation id=1"), ("zero_box", "annotation id=1"), ("category", "category_id 99"),
    ("image_id", "image_id 404"), ("polygon", "annotation id=1"), ("dup_image", "image id=11"),
])
def test_coco_malformed_entries_name_file_and_entry(tmp_path: Path, change: str, needle: str) -> None:
    image_dir, ann = _coco_fixture(tmp_path, _broken(change))
    with pytest.raises(AnnotationError) as info:
        CocoDetection(image_dir, ann, with_masks=True)
    assert "ann.json" in str(info.value) and needle in str(info.value)


def test_coco_missing_image_and_bad_json(tmp_path: Path) -> None:
    image_dir, ann = _coco_fixture(tmp_path)
    (image_dir / "b.png").unlink()
    with pytest.raises(AnnotationError, match=r"image id=12.*b\.png.*not found"):
        CocoDetection(image_dir, ann)
    ann.write_text("{not json")
    with pytest.raises(AnnotationError, match="ann.json.*not valid JSON"):
        CocoDetection(image_dir, ann)


def _voc_xml(objects: list[tuple[str, int, tuple[int, int, int, int]]], width: int = W, height: int = H) -> str:
    body = "".join(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for name, difficult, b in objects)
    return (f"<annotation><filename>x.jpg</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{body}</annotation>")


def _voc_fixture(tmp_path: Path, xmls: dict[str, str]) -> Path:
    year = tmp_path / "VOCdevkit" / "VOC2007"
    (year / "Annotations").mkdir(parents=True)
    (year / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, xml in xmls.items():
        (year / "Annotations" / f"{image_id}.xml").write_text(xml)
        _write_image(year / "JPEGImages" / f"{image_id}.jpg")
    (year / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in xmls))
    return tmp_path / "VOCdevkit"


def test_voc_loads_boxes_and_difficult(tmp_path: Path) -> None:
    root = _voc_fixture(tmp_path, {
        "000001": _voc_xml([("dog", 0, (1, 1, 10, 20)), ("person", 1, (20, 5, 60, 40))]),
        "000002": _voc_xml([("car", 0, (5, 6, 7, 8))]),
    })
    ds = VOCDetection(root, ["VOC2007/trainval"])
    assert len(ds) == 2 and ds.num_classes == 21 and ds.class_names[1:] == VOC_OBJECT_CLASSES and not ds.has_masks
    image, target = ds[0]
    assert image.shape == (3, H, W) and target["image_id"] == 0
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0, 10, 20], [19, 4, 60, 40]]))
    assert target["labels"].tolist() == [VOC_OBJECT_CLASSES.index(name) + 1 for name in ("dog", "person")]
    assert target["iscrowd"].tolist() == [0, 1]
    _, train_target = VOCDetection(root, ["VOC2007/trainval"], training=True)[0]
    # difficult excluded from training
    assert train_target["labels"].tolist() == [VOC_OBJECT_CLASSES.index("dog") + 1]
    gt = ds.coco_ground_truth()
    assert len(gt["images"]) == 2 and [a["iscrowd"] for a in gt["annotations"]] == [0, 1, 0]


@pytest.mark.parametrize("xml, needle", [
    (_voc_xml([("dog", 0, (1, 1, 10, 20)), ("cat", 0, (30, 5, 20, 9))]), r"<object> 1 \(cat\).*xmax < xmin"),
    (_voc_xml([("unicorn", 0, (1, 1, 10, 20))]), r"<object> 0 \(unicorn\).*unknown class"),
    ("<annotation><size><width>5</width>", "bad XML"),
    (_voc_xml([("dog", 0, (1, 1, 10, 20))]).replace("<ymax>20</ymax>", "<ymax>abc</ymax>"), "<ymax> is not a number"),
])
def test_voc_malformed_xml_names_file_and_object(tmp_path: Path, xml: str, needle: str) -> None:
    root = _voc_fixture(tmp_path, {"000001": _voc_xml([("dog", 0, (1, 1, 10, 20))]), "000007": xml})
    with pytest.raises(AnnotationError, match=r"000007\.xml.*" + needle):
        VOCDetection(root, ["VOC2007/trainval"])


def test_voc_missing_image_and_split(tmp_path: Path) -> None:
    root = _voc_fixture(tmp_path, {"000001": _voc_xml([("dog", 0, (1, 1, 10, 20))])})
    with pytest.raises(AnnotationError, match="test.txt"):
        VOCDetection(root, ["VOC2007/test"])
    (root / "VOC2007" / "JPEGImages" / "000001.jpg").unlink()
    with pytest.raises(AnnotationError, match=r"000001\.xml.*000001\.jpg.*not found"):
        VOCDetection(root, ["VOC2007/trainval"])


def test_synthetic_detection_flip_and_collate() -> None:
    ds = SyntheticDetection(2, (64, 64), seed=3, split="val", with_masks=True)
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and ds.num_classes == 7
    count = len(target["labels"])
    assert target["boxes"].shape == (count, 4) and target["masks"].shape == (count, 64, 64)
    assert int(target["labels"].min()) >= 1 and target["iscrowd"].sum() == 0
    flipped_image, flipped = horizontal_flip(image, target)
    torch.testing.assert_close(flipped_image, image.flip(-1))
    for box, mask in zip(flipped["boxes"], flipped["masks"]):  # the flipped box is the tight box of the flipped mask
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    same_image, same = RandomHorizontalFlip(0.0)(image, target)
    assert same_image is image and same is target
    batch = detection_collate([ds[0], ds[1]])
    assert len(batch.images) == 2 and batch.targets[1]["image_id"] == 1
    assert batch.to("cpu").targets[0]["boxes"].shape == (count, 4)
    gt = ds.coco_ground_truth()
    assert len(gt["images"]) == 2 and all("segmentation" in a for a in gt["annotations"])
