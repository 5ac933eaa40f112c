"""Every image mode becomes 8-bit RGB; unreadable files raise an error naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densessl.data.images import ImageLoadError, load_image, to_rgb


def _modes() -> dict[str, Image.Image]:
    gray = Image.fromarray((np.arange(64 * 48).reshape(48, 64) % 256).astype(np.uint8))
    rgba = Image.new("RGBA", (64, 48), (255, 0, 0, 128))
    palette = gray.convert("P")
    cmyk = Image.new("CMYK", (64, 48), (0, 255, 255, 0))
    sixteen = Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16))
    return {"L": gray, "RGBA": rgba, "P": palette, "CMYK": cmyk, "I;16": sixteen, "1": gray.convert("1"),
            "LA": gray.convert("LA"), "F": Image.fromarray(np.full((48, 64), 0.5, dtype=np.float32))}


@pytest.mark.parametrize("mode", list(_modes()))
def test_to_rgb_converts_every_mode(mode: str) -> None:
    rgb = to_rgb(_modes()[mode])
    assert rgb.mode == "RGB" and rgb.size == (64, 48)


def test_sixteen_bit_uses_full_range() -> None:
    image = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 255]


def test_cmyk_colour_is_converted() -> None:
    red = np.asarray(to_rgb(Image.new("CMYK", (4, 4), (0, 255, 255, 0))))
    assert red[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("fmt,mode", [("PNG", "L"), ("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "CMYK"), ("PNG", "I;16")])
def test_load_image_from_disk(tmp_path: Path, fmt: str, mode: str) -> None:
    path = tmp_path / f"image.{fmt.lower()}"
    _modes()[mode].save(path, format=fmt)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (64, 48)


def test_corrupt_and_missing_files_name_the_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageLoadError, match="corrupt.jpg"):
        load_image(corrupt)
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ImageLoadError, match="truncated.png"):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty.png"):
        load_image(empty)


def test_image_load_error_from_one_message_and_pickle(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "a b's \"q\".jpg"  # quotes of both kinds survive the round trip
    error = ImageLoadError(path, "file not found")
    assert str(error) == f"cannot read image {str(path)!r}: file not found"
    again = pickle.loads(pickle.dumps(error))  # rebuilt from its one message, as multiprocessing does
    assert type(again) is ImageLoadError and str(again) == str(error)
    assert again.path == str(path) and again.reason == "file not found"
    plain = ImageLoadError("none of the 3 images could be read")
    assert plain.path == "" and plain.reason == str(plain) == "none of the 3 images could be read"


def test_image_load_error_rebuilt_from_a_dataloader_worker_traceback(tmp_path: Path) -> None:
    from torch._utils import ExceptionWrapper

    try:
        load_image(tmp_path / "missing.jpg")
    except ImageLoadError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(ImageLoadError) as info:
        wrapper.reraise()  # what the DataLoader does in the main process
    assert str(info.value) == f"cannot read image {str(tmp_path / 'missing.jpg')!r}: file not found"
    assert info.value.path == str(tmp_path / "missing.jpg") and info.value.reason == "file not found"
