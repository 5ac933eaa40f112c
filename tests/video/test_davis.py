"""The DAVIS reader on a tiny generated folder: file lists, 2016 / 2017 masks, subsets and the layout errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from densessl.video.davis import load_annotation, load_frame, read_davis, read_sequence_names
from tests.video import SEQUENCES, SIZE, write_davis


def test_reads_a_2016_folder(tmp_path: Path) -> None:
    root = write_davis(tmp_path, "2016")
    sequences = read_davis(root, "2016")
    assert [s.name for s in sequences] == list(SEQUENCES)
    for sequence in sequences:
        assert len(sequence) == 3
        assert [p.name for p in sequence.frames] == ["00000.jpg", "00001.jpg", "00002.jpg"]
        assert [p.stem for p in sequence.annotations] == [p.stem for p in sequence.frames]
    frame = load_frame(sequences[0].frames[1])
    assert frame.shape == (*SIZE, 3) and frame.dtype == np.uint8
    mask = load_annotation(sequences[0].annotations[1], "2016")
    assert mask.shape == SIZE and set(np.unique(mask)) == {0, 1}  # 0/255 -> 0/1
    assert mask[8:24, 8:24].all() and mask.sum() == 16 * 16


def test_reads_2017_palette_masks_with_two_objects(tmp_path: Path) -> None:
    root = write_davis(tmp_path, "2017")
    first = read_davis(root, "2017")[0]
    mask = load_annotation(first.annotations[0], "2017")
    assert set(np.unique(mask)) == {0, 1, 2}
    assert (mask == 1).sum() == 16 * 16 and (mask == 2).sum() == 12 * 12
    assert set(np.unique(load_annotation(first.annotations[0], "2016"))) == {0, 1}  # read as 2016: the union


def test_a_subset_in_the_order_given(tmp_path: Path) -> None:
    root = write_davis(tmp_path, "2016")
    assert [s.name for s in read_davis(root, "2016", sequences=[SEQUENCES[1]])] == [SEQUENCES[1]]
    assert [s.name for s in read_davis(root, "2016", sequences=list(reversed(SEQUENCES)))] == list(reversed(SEQUENCES))


def test_unknown_sequence_lists_close_names(tmp_path: Path) -> None:
    root = write_davis(tmp_path, "2016")
    with pytest.raises(ValueError, match=r"unknown DAVIS sequence 'blackswam' \(did you mean: blackswan\?\)"):
        read_davis(root, "2016", sequences=["blackswam"])


def test_missing_imagesets_list_names_the_file_and_the_layout(tmp_path: Path) -> None:
    root = write_davis(tmp_path, "2016")
    with pytest.raises(ValueError, match=r"ImageSets/2017/val\.txt.*expected the DAVIS layout"):
        read_davis(root, "2017")


def test_the_davis_2016_pair_list_is_read_too(tmp_path: Path) -> None:
    root = write_davis(tmp_path, "2016")
    (root / "ImageSets" / "2016" / "val.txt").unlink()
    (root / "ImageSets" / "480p").mkdir()
    lines = [f"/JPEGImages/480p/{name}/{t:05d}.jpg /Annotations/480p/{name}/{t:05d}.png"
             for name in SEQUENCES for t in range(3)]
    (root / "ImageSets" / "480p" / "val.txt").write_text("\n".join(lines) + "\n")
    assert read_sequence_names(root, "2016") == list(SEQUENCES)


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a folder"):
        read_davis(tmp_path / "nowhere", "2016")
    root = write_davis(tmp_path / "a", "2016")
    (root / "Annotations" / "480p" / SEQUENCES[0] / "00000.png").unlink()
    with pytest.raises(ValueError, match="no annotation for the first frame 00000.jpg"):
        read_davis(root, "2016")
    (root / "Annotations" / "480p" / SEQUENCES[1] / "00002.png").unlink()
    with pytest.raises(ValueError, match=r"1 of 3 frames have no annotation .*00002\.png"):
        read_davis(root, "2016", sequences=[SEQUENCES[1]])
    root = write_davis(tmp_path / "b", "2016")
    for frame in (root / "JPEGImages" / "480p" / SEQUENCES[0]).iterdir():
        frame.unlink()
    with pytest.raises(ValueError, match="no .jpg frames in"):
        read_davis(root, "2016")
    (root / "ImageSets" / "2016" / "val.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="names no sequence"):
        read_davis(root, "2016")


def test_a_2017_annotation_must_be_a_palette_png(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match="expected a palette"):
        load_annotation(path, "2017")
    assert load_annotation(path, "2016").shape == (4, 4)
    with pytest.raises(ValueError, match="file not found"):
        load_annotation(tmp_path / "missing.png", "2017")
