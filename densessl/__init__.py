"""densessl: dense self-supervised learning for vision (VICRegL, DenseCL, PixPro) on any timm backbone."""

__version__ = "0.1.0"
