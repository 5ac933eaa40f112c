"""Pascal VOC class names, shared by the VOC detection reader and the VOC segmentation reader.

* ``VOC_OBJECT_CLASSES``: the 20 object classes, in the official order (the names VOC XML annotations use).
* ``VOC_CLASSES_WITH_BACKGROUND``: ``("background", *VOC_OBJECT_CLASSES)``, 21 names indexed by label: segmentation
  mask values and detection labels (``0`` is the background in both).
"""

from __future__ import annotations

__all__ = ["VOC_OBJECT_CLASSES", "VOC_CLASSES_WITH_BACKGROUND"]

VOC_OBJECT_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

VOC_CLASSES_WITH_BACKGROUND: tuple[str, ...] = ("background", *VOC_OBJECT_CLASSES)
