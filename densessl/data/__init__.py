"""Data: multi-crop with crop geometry, batching by resolution, image reading, datasets."""

from densessl.data.collate import Views, collate_views
from densessl.data.images import ImageLoadError, load_image, to_rgb
from densessl.data.transforms import CropViews, MultiCrop, MultiCropConfig

__all__ = [
    "Views", "collate_views", "ImageLoadError", "load_image", "to_rgb", "CropViews", "MultiCrop", "MultiCropConfig",
]
