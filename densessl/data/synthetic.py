"""Synthetic scenes: the embedded default dataset, generated on the fly from a seed.

Every image is a pure function of ``(seed, size)``: no files, no download, byte-identical in any process. The scenes
are small enough to pretrain on a CPU, and carry dense labels (semantic mask, instance masks, boxes) for the
segmentation (linear probe / kNN mIoU) and detection (box AP) evaluations.

Classes. Each object class has its own shape *and* its own texture, both defined in the object's rotated frame, so a
class is recognisable from local appearance alone:

    ============  ===========================================  ==============================================
    class         shape (``r`` = object radius)                texture
    ============  ===========================================  ==============================================
    disk          disk of radius ``r``                         concentric rings (bullseye) around the centre
    square        square of half-side ``0.8 r``                checkerboard
    triangle      equilateral triangle, circumradius ``1.2 r``  parallel stripes
    ring          annulus, radii ``0.5 r`` .. ``r``             radial spokes (8, 10 or 12 sectors)
    cross         plus sign, arms ``2 r`` long, ``0.7 r`` wide  solid (no texture)
    hexagon       regular hexagon, circumradius ``r``           square grid of dots
    ============  ===========================================  ==============================================

Colour carries no class information: each object gets a random pair of colours (base colour and texture colour),
drawn from the same distribution for every class (uniform in the RGB cube, the two far enough apart and both far
enough from the local background colour).

Generation process, per image (one ``np.random.Generator`` seeded with the image seed; the global RNGs are never
used):

1. Background: a random base colour, plus smooth random colour noise (a coarse random grid upsampled bilinearly,
   random grid resolution), plus a linear colour gradient at a random angle, plus (half the time) low-contrast sine
   stripes of random period and angle.
2. Objects: 2 to 6 objects, each with a uniformly drawn class, diameter 20 %-50 % of the shorter image side,
   centre in the middle 80 % of the image, rotation uniform in ``[0, 2 pi)``, texture scale proportional to the
   object's size (at least a few pixels). Each object's coordinate grid (only over its bounding square) is rotated
   into the object's frame, where the shape's implicit function gives an exact mask and the texture function picks
   base or texture colour. Later objects paint over earlier ones.
3. Labels: masks are the *visible* pixels of each object. An object whose visible area is below
   ``MIN_VISIBLE_PIXELS`` or below ``MIN_VISIBLE_FRACTION`` of its unoccluded in-image area is dropped from the
   instance list; its visible pixels still count in the semantic mask.
4. Mild uniform pixel noise, then quantisation to 8-bit RGB.

``SyntheticScenes`` wraps ``render_scene`` as a ``torch.utils.data.Dataset`` whose per-image seeds come from
``np.random.SeedSequence([seed, split_id, index])``, so train and val are disjoint seed streams.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
import torch.utils.data
from PIL import Image

from densessl.dist import derive_seed

__all__ = [
    "CLASS_NAMES",
    "CLASS_TEXTURES",
    "MIN_VISIBLE_FRACTION",
    "MIN_VISIBLE_PIXELS",
    "SceneSample",
    "SyntheticScenes",
    "render_scene",
    "scene_seed",
]

CLASS_NAMES: tuple[str, ...] = ("background", "disk", "square", "triangle", "ring", "cross", "hexagon")
CLASS_TEXTURES: dict[str, str] = {
    "disk": "concentric",
    "square": "checkerboard",
    "triangle": "stripes",
    "ring": "spokes",
    "cross": "solid",
    "hexagon": "dots",
}

MIN_VISIBLE_PIXELS = 16
MIN_VISIBLE_FRACTION = 0.01

_MIN_SIZE = 32
_NUM_OBJECTS = (2, 6)  # inclusive range
_DIAMETER_FRACTION = (0.2, 0.5)  # of the shorter image side
_CENTER_MARGIN = 0.1  # centres lie in [margin, 1 - margin] of each side
_EXTENT = 1.25  # every shape fits in a disk of radius _EXTENT * r around its centre
_BAND_FRACTION = (0.14, 0.2)  # texture band width, as a fraction of r
_MIN_BAND = 2.5  # pixels
_PAIR_DISTANCE = 0.35  # min RGB distance between an object's two colours (RGB in [0, 1])
_BACKGROUND_DISTANCE = 0.2  # min RGB distance between each object colour and the background base colour
_COLOUR_CANDIDATES = 16
_SPLITS = {"train": 0, "val": 1}


@dataclass
class SceneSample:
    """One rendered scene.

    Attributes:
        image: RGB image of size ``(W, H)``.
        semantic_mask: ``(H, W)`` uint8; 0 is background, ``1..K`` the index into ``CLASS_NAMES``.
        instance_masks: ``(M, H, W)`` bool, the visible pixels of each kept instance, in painting order (back to
            front).
        instance_boxes: ``(M, 4)`` float32 ``(x1, y1, x2, y2)`` in pixels, the tight box of each visible mask with
            exclusive ``x2 = max_x + 1`` and ``y2 = max_y + 1``.
        instance_labels: ``(M,)`` int64 class indices in ``1..K``.
    """

    image: Image.Image
    semantic_mask: np.ndarray
    instance_masks: np.ndarray
    instance_boxes: np.ndarray
    instance_labels: np.ndarray


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    """Return ``(H, W)`` as Python ints, or raise ``ValueError`` naming the bad size."""
    if len(size) != 2:
        raise ValueError(f"size must be (H, W), got {size!r}")
    height, width = operator.index(size[0]), operator.index(size[1])
    if height < _MIN_SIZE or width < _MIN_SIZE:
        raise ValueError(f"size must be at least {_MIN_SIZE} pixels on each side, got {size!r}")
    return height, width


def _check_seed(seed: int) -> int:
    """Return ``seed`` as a Python int, or raise ``ValueError`` if it is negative."""
    seed = operator.index(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return seed


def _upsample_bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinearly interpolate a coarse ``(C, gh + 1, gw + 1)`` grid of nodes at ``(height, width)`` pixel centres.

    Written as gathers and elementwise ops (no BLAS), so results do not depend on the thread count.
    """

    def axis_weights(out_size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
        position = (np.arange(out_size, dtype=np.float32) + 0.5) * np.float32(cells / out_size)
        low = np.minimum(np.floor(position).astype(np.int64), cells - 1)
        return low, position - low

    low_y, frac_y = axis_weights(height, grid.shape[1] - 1)
    low_x, frac_x = axis_weights(width, grid.shape[2] - 1)
    frac_y = frac_y[:, None]
    rows = grid[:, low_y] * (1.0 - frac_y) + grid[:, low_y + 1] * frac_y
    return rows[:, :, low_x] * (1.0 - frac_x) + rows[:, :, low_x + 1] * frac_x


def _render_background(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw a textured background.

    Args:
        rng: The image's generator.
        ys: ``(H, 1)`` pixel-centre row coordinates.
        xs: ``(1, W)`` pixel-centre column coordinates.

    Returns:
        The channel-first ``(3, H, W)`` float32 image in roughly ``[0, 1]`` and its ``(3,)`` base colour.
    """
    height, width = ys.shape[0], xs.shape[1]
    base = rng.uniform(0.0, 1.0, size=3).astype(np.float32)

    # Smooth noise: a coarse random grid (2..8 cells along the shorter side) upsampled bilinearly.
    cells = int(rng.integers(2, 9))
    grid_h = max(1, round(cells * height / min(height, width)))
    grid_w = max(1, round(cells * width / min(height, width)))
    grid = rng.standard_normal((3, grid_h + 1, grid_w + 1)).astype(np.float32) * np.float32(rng.uniform(0.04, 0.15))
    noise = _upsample_bilinear(grid, height, width)

    # Linear gradient at a random angle, each channel with its own random strength.
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(height, width)
    ramp = ramp - ramp.mean()
    gradient_colour = rng.normal(0.0, 0.15, size=3).astype(np.float32)

    # Low-contrast sine stripes, half the time.
    stripe_angle = rng.uniform(0.0, math.pi)
    stripe_period = rng.uniform(6.0, 32.0)
    stripe_colour = rng.normal(0.0, 0.05, size=3).astype(np.float32) * np.float32(rng.random() < 0.5)
    phase = (xs * math.cos(stripe_angle) + ys * math.sin(stripe_angle)) * (2.0 * math.pi / stripe_period)
    stripes = np.sin(phase + rng.uniform(0.0, 2.0 * math.pi)).astype(np.float32)

    image = base[:, None, None] + noise + ramp * gradient_colour[:, None, None] + stripes * stripe_colour[:, None, None]
    return image.astype(np.float32), base


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Evaluate a shape's implicit function in the object frame.

    Args:
        name: Class name.
        u: Object-frame x coordinates (pixels, origin at the object centre).
        v: Object-frame y coordinates.
        r: Object radius in pixels.

    Returns:
        Bool array, true inside the shape.
    """
    if name == "disk":
        return u * u + v * v <= r * r
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if name == "triangle":
        # Equilateral, circumradius 1.2 r: inside the three half-planes at distance (inradius) 0.6 r.
        inside = v <= 0.6 * r
        for angle in (math.radians(210.0), math.radians(330.0)):
            inside &= u * math.cos(angle) + v * math.sin(angle) <= 0.6 * r
        return inside
    if name == "ring":
        squared = u * u + v * v
        return (squared <= r * r) & (squared >= 0.25 * r * r)
    if name == "cross":
        abs_u, abs_v = np.abs(u), np.abs(v)
        return ((abs_u <= r) & (abs_v <= 0.35 * r)) | ((abs_v <= r) & (abs_u <= 0.35 * r))
    if name == "hexagon":
        # Circumradius r: within the apothem r * sqrt(3) / 2 of the centre along the three edge normals.
        apothem = r * math.sqrt(3.0) / 2.0
        inside = np.abs(u) <= apothem
        for angle in (math.radians(60.0), math.radians(120.0)):
            inside &= np.abs(u * math.cos(angle) + v * math.sin(angle)) <= apothem
        return inside
    raise ValueError(f"unknown shape {name!r}")


def _texture_mask(
    name: str, u: np.ndarray, v: np.ndarray, band: float, phase: tuple[float, float], spokes: int
) -> np.ndarray:
    """Evaluate a texture in the object frame: true where the texture colour goes, false for the base colour.

    Args:
        name: Texture name (a value of ``CLASS_TEXTURES``).
        u: Object-frame x coordinates (pixels).
        v: Object-frame y coordinates.
        band: Width of one texture band (half the period) in pixels.
        phase: Offsets in pixels along ``u`` and ``v``, each in ``[0, 2 * band)``.
        spokes: Number of texture-coloured sectors for the ``spokes`` texture.

    Returns:
        Bool array of the broadcast shape of ``u`` and ``v``.
    """
    if name == "solid":
        return np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    if name == "stripes":
        return (np.floor((v + phase[1]) / band).astype(np.int32) & 1) == 1
    if name == "checkerboard":
        cell_u = np.floor((u + phase[0]) / band).astype(np.int32)
        cell_v = np.floor((v + phase[1]) / band).astype(np.int32)
        return ((cell_u + cell_v) & 1) == 1
    if name == "concentric":
        radius = np.sqrt(u * u + v * v)
        return (np.floor((radius + phase[0]) / band).astype(np.int32) & 1) == 1
    if name == "spokes":
        sector = np.floor((np.arctan2(v, u) + math.pi) * (spokes / math.pi)).astype(np.int32)
        return (sector & 1) == 1
    if name == "dots":
        spacing = 2.5 * band
        du = (u + phase[0]) / spacing
        dv = (v + phase[1]) / spacing
        du = du - np.round(du)
        dv = dv - np.round(dv)
        return du * du + dv * dv <= 0.3**2
    raise ValueError(f"unknown texture {name!r}")


def _object_colours(rng: np.random.Generator, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw an object's (base, texture) colour pair, independently of its class.

    Both colours are uniform in the RGB cube, subject to being ``_PAIR_DISTANCE`` apart and each
    ``_BACKGROUND_DISTANCE`` away from the background base colour. The condition is symmetric in the two colours, so
    both have the same distribution. A fixed number of candidate pairs is drawn (the first valid one is used, else
    the last), so the generator always advances by the same amount.

    Args:
        rng: The image's generator.
        background: ``(3,)`` background base colour.

    Returns:
        Two ``(3,)`` float32 colours in ``[0, 1]``.
    """
    candidates = rng.uniform(0.0, 1.0, size=(_COLOUR_CANDIDATES, 2, 3)).astype(np.float32)
    pair_ok = np.linalg.norm(candidates[:, 0] - candidates[:, 1], axis=-1) >= _PAIR_DISTANCE
    background_ok = np.all(np.linalg.norm(candidates - background, axis=-1) >= _BACKGROUND_DISTANCE, axis=-1)
    valid = np.flatnonzero(pair_ok & background_ok)
    choice = valid[0] if valid.size else _COLOUR_CANDIDATES - 1
    return candidates[choice, 0], candidates[choice, 1]


def render_scene(seed: int, size: tuple[int, int] = (128, 128)) -> SceneSample:
    """Render one synthetic scene.

    Args:
        seed: Non-negative integer; the scene is a pure function of ``(seed, size)``.
        size: ``(H, W)`` in pixels, each at least 32.

    Returns:
        The image with its semantic mask and visible instance masks, boxes and labels.

    Raises:
        ValueError: If ``seed`` is negative or ``size`` is not two sides of at least 32 pixels.
    """
    seed = _check_seed(seed)
    height, width = _check_size(size)
    rng = np.random.default_rng(seed)
    ys = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, :]

    image, background = _render_background(rng, ys, xs)
    owner = np.zeros((height, width), dtype=np.int16)  # 1-based index of the object painted last at each pixel
    labels: list[int] = []
    painted_areas: list[int] = []

    short_side = min(height, width)
    num_objects = int(rng.integers(_NUM_OBJECTS[0], _NUM_OBJECTS[1] + 1))
    for object_index in range(1, num_objects + 1):
        label = int(rng.integers(1, len(CLASS_NAMES)))
        name = CLASS_NAMES[label]
        r = 0.5 * short_side * rng.uniform(*_DIAMETER_FRACTION)
        cx = width * rng.uniform(_CENTER_MARGIN, 1.0 - _CENTER_MARGIN)
        cy = height * rng.uniform(_CENTER_MARGIN, 1.0 - _CENTER_MARGIN)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        band = max(_MIN_BAND, r * rng.uniform(*_BAND_FRACTION))
        phase = (rng.uniform(0.0, 2.0 * band), rng.uniform(0.0, 2.0 * band))
        spokes = int(rng.choice((4, 5, 6)))
        base_colour, texture_colour = _object_colours(rng, background)

        # Rotate the pixel grid of the object's bounding square into the object frame.
        x0, x1 = max(0, math.floor(cx - _EXTENT * r)), min(width, math.ceil(cx + _EXTENT * r))
        y0, y1 = max(0, math.floor(cy - _EXTENT * r)), min(height, math.ceil(cy + _EXTENT * r))
        dx = xs[:, x0:x1] - np.float32(cx)
        dy = ys[y0:y1, :] - np.float32(cy)
        cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        u = cos * dx + sin * dy
        v = cos * dy - sin * dx

        inside = _shape_mask(name, u, v, r)
        textured = _texture_mask(CLASS_TEXTURES[name], u, v, band, phase, spokes)
        colour = np.where(textured, texture_colour[:, None, None], base_colour[:, None, None])
        region = image[:, y0:y1, x0:x1]
        region[:, inside] = colour[:, inside]
        owner[y0:y1, x0:x1][inside] = object_index
        labels.append(label)
        painted_areas.append(int(inside.sum()))

    # Uniform pixel noise in [-amplitude, amplitude] (cheaper to draw than Gaussian noise).
    amplitude = np.float32(rng.uniform(0.0, 0.05))
    image += (rng.random(image.shape, dtype=np.float32) - np.float32(0.5)) * (2.0 * amplitude)
    pixels = np.clip(image * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8).transpose(1, 2, 0)

    label_of_owner = np.array([0, *labels], dtype=np.uint8)
    semantic_mask = label_of_owner[owner]

    masks, boxes, kept_labels = [], [], []
    for object_index, (label, painted) in enumerate(zip(labels, painted_areas), start=1):
        mask = owner == object_index
        visible = int(mask.sum())
        if visible < MIN_VISIBLE_PIXELS or visible < MIN_VISIBLE_FRACTION * painted:
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        masks.append(mask)
        boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
        kept_labels.append(label)

    return SceneSample(
        image=Image.fromarray(np.ascontiguousarray(pixels)),
        semantic_mask=semantic_mask,
        instance_masks=np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool),
        instance_boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        instance_labels=np.array(kept_labels, dtype=np.int64),
    )


def scene_seed(seed: int, split: str, index: int) -> int:
    """Per-image seed of ``SyntheticScenes``: a hash of ``(seed, split, index)`` via ``np.random.SeedSequence``.

    Args:
        seed: Dataset seed (non-negative).
        split: ``"train"`` or ``"val"``.
        index: Image index (non-negative).

    Returns:
        A 64-bit non-negative integer seed for ``render_scene``.
    """
    return derive_seed(seed, _SPLITS[split], index, bits=64)


class SyntheticScenes(torch.utils.data.Dataset):
    """A fixed-length dataset of synthetic scenes rendered on the fly.

    Sample ``index`` of split ``split`` is ``render_scene(scene_seed(seed, split, index), size)``: deterministic,
    independent of global RNG state and of the worker that renders it. Train and val draw from disjoint seed
    streams, so the same index gives different scenes in each split.

    Args:
        num_images: Number of images (the dataset length), at least 1.
        size: ``(H, W)`` of every image, each side at least 32.
        seed: Non-negative dataset seed.
        split: ``"train"`` or ``"val"``.

    Raises:
        ValueError: If an argument is out of range; the message names the bad value.
    """

    def __init__(
        self, num_images: int = 2000, size: tuple[int, int] = (128, 128), seed: int = 0, split: str = "train"
    ) -> None:
        num_images = operator.index(num_images)
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        self.num_images = num_images
        self.size = _check_size(size)
        self.seed = _check_seed(seed)
        self.split = split

    def __len__(self) -> int:
        """Number of images."""
        return self.num_images

    def __getitem__(self, index: int) -> SceneSample:
        """Render image ``index``.

        Args:
            index: In ``[0, len(self))``; negative indices are not supported.

        Returns:
            The rendered scene.

        Raises:
            IndexError: If ``index`` is out of range.
        """
        index = operator.index(index)
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for SyntheticScenes of length {self.num_images}")
        return render_scene(scene_seed(self.seed, self.split, index), self.size)
