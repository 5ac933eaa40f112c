"""Reading images from disk into RGB, whatever their mode.

Real datasets contain grayscale, palette, RGBA, CMYK and 16-bit files (ImageNet alone has CMYK JPEGs and grayscale
images); every one of them becomes an 8-bit RGB ``PIL.Image`` here, so the transforms see one format.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "ImageLoadError", "ReducedImage", "load_image", "load_image_reduced", "to_rgb"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


class ImageLoadError(ValueError):
    """An image file (or a folder of them) could not be read or decoded.

    Built as ``ImageLoadError(path, reason)`` (message ``cannot read image '<path>': <reason>``) or from one message,
    ``ImageLoadError(message)``. The one-message form is how a ``DataLoader`` worker's error comes back to the main
    process: torch rebuilds it as ``ImageLoadError("Caught ImageLoadError in DataLoader worker ... <traceback>")``;
    the original message is then recovered from the traceback, so the error still reads as one line.

    Attributes:
        path: The file that could not be read; ``""`` when the message names no single file.
        reason: Why, e.g. ``"file not found"``; the whole message when it has no ``cannot read image`` form.
    """

    def __init__(self, path: str | os.PathLike, reason: str | None = None) -> None:
        if reason is None:
            message = _original_message(str(path), type(self))
            match = _MESSAGE.fullmatch(message)
            if match:
                self.path = ast.literal_eval(match["path"])
                self.reason = match["reason"]
            else:
                self.path, self.reason = "", message
        else:
            self.path, self.reason = str(path), reason
            message = f"cannot read image {self.path!r}: {reason}"
        super().__init__(message)


# The message of ``ImageLoadError(path, reason)``; the path is a Python string literal (``repr``).
_MESSAGE = re.compile(r"cannot read image (?P<path>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"): (?P<reason>.*)",
                      re.DOTALL)


def _original_message(message: str, exc_type: type) -> str:
    """The original message of an exception of ``exc_type`` re-raised from a ``DataLoader`` worker's traceback.

    torch's ``ExceptionWrapper.reraise`` passes ``"Caught <Type> in DataLoader worker process N.\nOriginal
    Traceback (most recent call last): ... <module>.<Type>: <message>"``; the text after the last
    ``<module>.<Type>: `` is the message the worker raised. Any other message is returned as is.
    """
    if not (message.startswith("Caught ") and "Traceback (most recent call last)" in message):
        return message
    marker = f"{exc_type.__module__}.{exc_type.__qualname__}: "
    start = message.rfind(marker)
    if start < 0:
        return message
    return message[start + len(marker):].strip()


def _high_depth_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map a 16/32-bit integer or float array to uint8 (16-bit range for integers, [0, 1] or [0, 255] for floats)."""
    if np.issubdtype(array.dtype, np.floating):
        array = np.nan_to_num(array.astype(np.float64))
        if array.size and array.max() <= 1.0:
            array = array * 255.0
        return np.clip(np.rint(array), 0, 255).astype(np.uint8)
    array = array.astype(np.int64)
    # 16-bit images (PNG "I;16" or "I") use the full 0..65535 range; 8-bit data stored in an "I" image stays as is.
    if array.size and array.max() > 255:
        array = array / 257.0
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    Grayscale, binary and palette images are expanded, CMYK is converted, 16-bit and float images are rescaled to
    8 bits, and images with transparency are composited onto black (so fully transparent pixels, whose colour is
    arbitrary, do not leak into training).

    Args:
        image: An image in any mode PIL can decode.

    Returns:
        An ``RGB`` image of the same size.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        gray = _high_depth_to_uint8(np.asarray(image))
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@dataclass
class ReducedImage:
    """An image decoded at ``1/scale`` of its size (``load_image_reduced``).

    Attributes:
        image: The decoded ``RGB`` image, ``ceil(W / scale) x ceil(H / scale)``.
        original_size: ``(W, H)`` of the file.
        scale: 1, 2, 4 or 8; pixel ``i`` of ``image`` covers original pixels ``[i * scale, (i + 1) * scale)``.
    """

    image: Image.Image
    original_size: tuple[int, int]
    scale: int


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open, fully decode and convert an image file to RGB.

    Args:
        path: Image file path.

    Returns:
        The decoded ``RGB`` image.

    Raises:
        ImageLoadError: The file is missing, truncated, corrupt, empty or not an image; the message names the file.
    """
    return _load(Path(path), None).image


def load_image_reduced(path: str | os.PathLike, choose_scale: Callable[[int, int], int]) -> ReducedImage:
    """Like ``load_image``, but a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size (PIL's ``Image.draft``).

    The DCT-domain reduction skips most of the decoding work; other formats decode at full size (``scale`` 1).

    Args:
        path: Image file path.
        choose_scale: Called once with the file's ``(W, H)`` before decoding; returns the reduction wanted (1, 2, 4
            or 8).

    Returns:
        The image, its original size and the reduction actually used.

    Raises:
        ImageLoadError: As ``load_image``.
    """
    return _load(Path(path), choose_scale)


def _load(path: Path, choose_scale: Callable[[int, int], int] | None) -> ReducedImage:
    try:
        with Image.open(path) as image:
            size = image.size
            scale = 1
            if choose_scale is not None and image.width > 0 and image.height > 0:
                wanted = choose_scale(image.width, image.height)
                if wanted > 1:
                    # draft picks the largest of 8/4/2/1 with W // (W // r) >= it, i.e. exactly r; None: not a JPEG.
                    drafted = image.draft("RGB", (max(1, image.width // wanted), max(1, image.height // wanted)))
                    if drafted is not None:
                        scale = round(size[0] / drafted[1][2])
            image.load()
            if image.width == 0 or image.height == 0:
                raise ImageLoadError(path, f"image has zero size {image.width}x{image.height}")
            return ReducedImage(to_rgb(image), size, scale)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except UnidentifiedImageError as error:  # its message repeats the path
        raise ImageLoadError(path, "UnidentifiedImageError: not an image file PIL can decode") from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageLoadError(path, f"{type(error).__name__}: {error}") from error
