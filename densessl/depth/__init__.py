"""Depth wing: a linear depth probe on frozen features (the DINOv2/DINOv3 NYUv2 protocol) for any backbone."""

from densessl.depth.data import DepthFolder, DepthSample
from densessl.depth.probe import DepthProbeConfig, LinearDepthHead, depth_metrics, run_depth_probe, sig_loss

__all__ = ["DepthFolder", "DepthProbeConfig", "DepthSample", "LinearDepthHead", "depth_metrics", "run_depth_probe",
           "sig_loss"]
