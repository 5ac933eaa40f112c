"""Faults in pretraining data: unreadable images with and without workers, skipped files, folder scanning.

Each case is what a user sees: one ``error:`` line and exit 2 from the tool, or a warning naming the files. Tiny
(8 images of 40x50 px, 2 iterations), CPU only.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densessl.data.collate import collate_views
from densessl.data.images import ImageLoadError
from densessl.data.pretrain_data import ImageFolder, PretrainDataset
from densessl.data.transforms import MultiCrop, MultiCropConfig
from densessl.train.config import load_config
from densessl.train.pretrain import train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "pretrain" / "_tiny_test.yaml"
TRAIN = ROOT / "tools" / "train.py"


def _images(folder: Path, count: int = 8, broken: tuple[str, ...] = ()) -> Path:
    """``count`` readable 40x50 JPEGs ``0.jpg ...`` plus the ``broken`` names holding bytes that are not an image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    for name in broken:
        (folder / name).write_bytes(b"not an image")
    return folder


def _break_all(folder: Path) -> None:
    for path in folder.rglob("*.jpg"):
        path.write_bytes(b"not an image")


def _overrides(root: Path, *extra: str) -> list[str]:
    return ["data.source=folder", f"data.root={root}", "train.max_iters=2", "data.batch_size=4", *extra]


def _multicrop() -> MultiCrop:
    return MultiCrop(MultiCropConfig(global_size=32, local_size=16, n_local=1))


def _train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN), str(TINY), *args], capture_output=True, text=True,
                          check=False, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _main_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from densessl.cli.train import main

    code = main([str(TINY), *args])
    return code, capsys.readouterr().err


def _first_batch_error(loader: torch.utils.data.DataLoader) -> ImageLoadError:
    """The ``ImageLoadError`` the first batch raises, with the loader's workers already shut down."""
    iterator = iter(loader)
    try:
        next(iterator)
    except ImageLoadError as error:
        error.__traceback__ = None  # its frames hold the iterator: freed now, its workers stop now, not at a later GC
        return error
    finally:
        del iterator
    raise AssertionError("the first batch loaded without an error")


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- 1. strict + workers: the worker's ImageLoadError arrives as one line -----------------------------------------


def test_strict_with_workers_exits_2_with_one_error_line(tmp_path: Path) -> None:
    root = _images(tmp_path / "images", count=7, broken=("broken.jpg",))
    proc = _train_cli(*_overrides(root, "data.strict=true", "data.num_workers=2"), "--output-dir",
                      str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith(f"error: densessl-train: cannot read image {str(root / 'broken.jpg')!r}: ")


def test_worker_error_is_rebuilt_as_image_load_error(tmp_path: Path) -> None:
    root = _images(tmp_path / "images", count=3, broken=("broken.jpg",))
    dataset = PretrainDataset(ImageFolder(root), _multicrop(), strict=True)
    error = _first_batch_error(torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2,
                                                           collate_fn=collate_views))
    assert str(error).startswith(f"cannot read image {str(root / 'broken.jpg')!r}: ")
    assert "\n" not in str(error)
    assert error.path == str(root / "broken.jpg") and "UnidentifiedImageError" in error.reason


# --- 2. a folder where no image can be read ------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_all_unreadable_folder_exits_2_naming_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         workers: int) -> None:
    root = _images(tmp_path / "images")
    _break_all(root)
    code, err = _main_in_process(capsys, *_overrides(root, f"data.num_workers={workers}"), "--output-dir",
                                 str(tmp_path / "run"))
    assert code == 2, err
    errors = _error_lines(err)
    assert errors == [line for line in err.splitlines() if line.startswith("error")], err
    assert len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith(f"error: densessl-train: none of the 8 images under {str(root)!r} could be read "
                                f"(first: "
                                f"{str(root / '0.jpg')!r}: UnidentifiedImageError")


@pytest.mark.parametrize("workers", [0, 2])
def test_images_that_become_unreadable_during_training(tmp_path: Path, workers: int) -> None:
    root = _images(tmp_path / "images")
    dataset = PretrainDataset(ImageFolder(root), _multicrop())  # readable when built
    _break_all(root)
    error = _first_batch_error(torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers,
                                                           collate_fn=collate_views))
    assert "\n" not in str(error)
    assert str(error).startswith(f"none of the 8 images under {str(root)!r} could be read (first: ")
    assert error.path == ""  # no single file


def test_long_run_of_unreadable_images_in_a_big_folder(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _images(root, count=0, broken=tuple(f"{i:02d}.jpg" for i in range(40)))
    with pytest.raises(ImageLoadError, match=r"^none of the 40 images under .* could be read \(first: .*00\.jpg"):
        PretrainDataset(ImageFolder(root), _multicrop())
    with pytest.raises(ImageLoadError, match=r"^none of the 10 images tried \(of 40\) under "):
        PretrainDataset(ImageFolder(root), _multicrop(), check_tries=10)
    dataset = PretrainDataset(ImageFolder(root), _multicrop(), check_tries=0)
    with pytest.raises(ImageLoadError, match=r"^32 consecutive images under .* could not be read \(first: .*05\.jpg'"):
        dataset[5]


# --- 3. skipped files are counted once each and named ------------------------------------------------------------


def test_skipped_records_dataset_indices(tmp_path: Path) -> None:
    root = _images(tmp_path / "images", count=6, broken=("broken1.jpg", "broken2.jpg"))  # indices 6 and 7
    dataset = PretrainDataset(ImageFolder(root), _multicrop())
    batch = collate_views([dataset[i] for i in (5, 6, 7)])
    skipped = batch.extras["skipped"]
    assert skipped.shape == (3, PretrainDataset.MAX_ATTEMPTS) and skipped.dtype == torch.long
    assert [row[row >= 0].tolist() for row in skipped] == [[], [6, 7], [7]]  # 3 encounters, 2 files
    assert dataset.describe(7) == str(root / "broken2.jpg")


def test_training_counts_distinct_skipped_files_and_names_them(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    root = _images(tmp_path / "images", count=6, broken=("broken1.jpg", "broken2.jpg"))
    cfg = load_config(TINY, _overrides(root))
    with caplog.at_level(logging.WARNING, logger="densessl"):
        train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped_images"] == 2  # one epoch of 8 indices meets broken2.jpg twice
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert len(summary) == 1
    assert summary[0].startswith(f"skipped 2 unreadable images: {root / 'broken1.jpg'}, {root / 'broken2.jpg'} (")


# --- 4. folder scanning -------------------------------------------------------------------------------------------


def test_symlinked_folders_are_followed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _images(tmp_path / "imagenet" / "n01", count=2)
    _images(tmp_path / "imagenet" / "n02", count=3)
    subset = tmp_path / "subset"
    subset.mkdir()
    (subset / "n01").symlink_to(tmp_path / "imagenet" / "n01", target_is_directory=True)
    (subset / "n02").symlink_to(tmp_path / "imagenet" / "n02", target_is_directory=True)
    with caplog.at_level(logging.INFO, logger="densessl"):
        folder = ImageFolder(subset)
    assert [p.relative_to(subset).as_posix() for p in folder.paths] == [
        "n01/0.jpg", "n01/1.jpg", "n02/0.jpg", "n02/1.jpg", "n02/2.jpg"]
    assert f"found 5 images under {subset}" in caplog.messages
    assert folder[4].size == (50, 40)


def test_symlink_loops_do_not_hang(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    _images(root / "a", count=2)
    (root / "a" / "back_to_root").symlink_to(root, target_is_directory=True)  # loop
    (root / "b").symlink_to(root / "a", target_is_directory=True)  # second link to a scanned folder
    (root / "a" / "self").symlink_to(root / "a", target_is_directory=True)  # loop onto itself
    with caplog.at_level(logging.WARNING, logger="densessl"):
        folder = ImageFolder(root)
    assert [p.relative_to(root).as_posix() for p in folder.paths] == ["a/0.jpg", "a/1.jpg"]
    skips = [m for m in caplog.messages if m.startswith("skipping folder")]
    assert len(skips) == 3 and all("already scanned" in m for m in skips)


def test_unreadable_folder_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    _images(root / "ok", count=2)
    _images(root / "locked", count=2)
    scandir = os.scandir

    def denying(path: str | os.PathLike = ".") -> object:  # tests run as root: chmod 000 would not stop them
        if Path(path) == root / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denying)
    with caplog.at_level(logging.INFO, logger="densessl"):
        folder = ImageFolder(root)
    assert [p.relative_to(root).as_posix() for p in folder.paths] == ["ok/0.jpg", "ok/1.jpg"]
    assert f"cannot read folder {root / 'locked'} (Permission denied): its images are left out" in caplog.messages
    assert f"found 2 images under {root}" in caplog.messages
    (root / "ok" / "0.jpg").unlink()
    (root / "ok" / "1.jpg").unlink()
    with pytest.raises(ValueError, match=r"1 folder could not be read: .*locked' \(Permission denied\)"):
        ImageFolder(root)


def test_folder_without_images_says_what_it_saw(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as info:
        ImageFolder(empty)
    assert str(info.value).startswith(f"no images under {str(empty)!r} (looked recursively for .jpg, ")
    assert "other file" not in str(info.value)
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    for name in ("labels.csv", "README.txt", "sub/x.npy", "sub/y.npy"):
        (other / name).write_text("x")
    with pytest.raises(ValueError, match=r"^no images under .*; it holds 4 other files without an image extension "
                                         r"\('README.txt', 'labels.csv', 'sub/x.npy', \.\.\.\); point data.root"):
        ImageFolder(other)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageFolder(tmp_path / "nowhere")
