"""Detector adapter for detection transfer: torchvision Faster / Mask R-CNN on a densessl backbone.

* :class:`DetectionBackbone` turns any timm backbone (``DenseBackbone``) into what torchvision's ``FasterRCNN``
  takes: a module with ``out_channels`` returning an ``OrderedDict[str, Tensor]`` of feature maps.

  - ConvNets, ``neck="fpn"``: the stage outputs at strides 4/8/16/32 (or the chosen ``levels``) ->
    torchvision ``FeaturePyramidNetwork`` + ``LastLevelMaxPool``; keys ``"0".."L-1"`` and ``"pool"``.
  - ConvNets, ``neck="c4"`` (ResNets only): the stride-16 ``layer3`` map alone (key ``"0"``); ``build_detector``
    runs ``layer4`` as the RoI box head (the detectron2 "R50-C4" model of the MoCo / DenseCL / PixPro VOC protocol).
  - ViTs: a ViTDet simple feature pyramid on the last block's map: two 2x2 deconvolutions (stride 4), one
    (stride 8), identity (16) and 2x2 max-pooling (32), each followed by 1x1 and 3x3 convolutions with LayerNorm, plus
    ``"pool"`` (stride 64).

  ``norm``: ``"frozen_bn"`` replaces every ``BatchNorm2d`` of the timm model by torchvision's
  ``FrozenBatchNorm2d`` (statistics and affine fixed: the usual detectron2/torchvision protocol); ``"bn"`` keeps
  trainable BN (batch statistics) and also puts BN in the FPN and conv heads; ``"sync_bn"`` is ``"bn"`` converted to
  ``nn.SyncBatchNorm`` when a NCCL process group is initialized (the MoCo / DenseCL / PixPro protocols; on one
  process it is plain BN). ``frozen_stages``: ``-1`` trains everything, ``0`` freezes the stem, ``N`` the stem and
  the first ``N`` stages (ResNet ``layer1..N``, ViT blocks ``0..N-1``; timm's coarse ``group_matcher`` defines them);
  ``frozen=True`` freezes the whole timm model. Frozen parameters get ``requires_grad=False`` and the BatchNorms in
  frozen parts become ``FrozenBatchNorm2d`` whatever ``norm`` says (so their statistics do not drift either).

* :func:`build_detector` builds ``FasterRCNN`` / ``MaskRCNN`` on the adapter with anchors and RoI pooling matched to
  the pyramid (one anchor size per level, ``8 x stride`` by default: 32..512 for strides 4..64), ImageNet mean/std,
  and multi-scale training (random shorter side from ``min_size``; ``test_min_size`` at evaluation).

Scoring the built detectors (COCO box and mask AP, ``evaluate_detector``) lives in ``densessl.det.coco``.
"""

from __future__ import annotations

import logging
import math
import os
import typing
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.utils.data
from timm.layers import LayerNorm2d
from timm.models import group_parameters
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from densessl.backbones import DenseBackbone, load_backbone_weights, normalize_levels
from densessl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from densessl.schema import Range, check_timm_arch

__all__ = [
    "BOX_HEADS",
    "DETECTOR_KINDS",
    "NECKS",
    "NORMS",
    "BoxHead",
    "DetectorKind",
    "Neck",
    "Norm",
    "DetectionBackbone",
    "ModelConfig",
    "SimpleFeaturePyramid",
    "build_detector",
    "freeze_batch_norm",
]

logger = logging.getLogger("densessl")

# The choices of each detector option, once: ModelConfig is annotated with these Literals and build_detector checks
# against the tuples derived from them.
DetectorKind = Literal["faster_rcnn", "mask_rcnn"]
Neck = Literal["fpn", "c4"]
Norm = Literal["frozen_bn", "bn", "sync_bn"]
BoxHead = Literal["2fc", "4conv1fc"]
DETECTOR_KINDS: tuple[str, ...] = typing.get_args(DetectorKind)
NECKS: tuple[str, ...] = typing.get_args(Neck)
NORMS: tuple[str, ...] = typing.get_args(Norm)
BOX_HEADS: tuple[str, ...] = typing.get_args(BoxHead)


@dataclass
class ModelConfig:
    """The detector and its backbone: the ``model`` section of the fine-tuning recipe (``densessl.det.finetune``).

    Attributes:
        kind: ``"faster_rcnn"`` or ``"mask_rcnn"`` (FPN / ViT pyramids only).
        arch: timm architecture.
        weights: Backbone weights file or ``None`` (random init); see :class:`DetectionBackbone`.
        neck: ``"fpn"`` or ``"c4"`` (ResNets, Faster R-CNN only).
        levels: Backbone levels (see :class:`DetectionBackbone`).
        norm: ``"frozen_bn"``, ``"bn"`` or ``"sync_bn"``. With ``bn``/``sync_bn`` the FPN and conv heads use BN
            too; with ``sync_bn`` the whole model is converted to ``nn.SyncBatchNorm`` under a NCCL process group.
        frozen_stages: ``-1`` none, ``0`` stem, ``N`` stem + first ``N`` stages frozen.
        frozen: Freeze the whole timm model.
        out_channels: Pyramid channels (also the conv width of the 4conv1fc and mask heads); 256 usually.
        box_head: ``"2fc"`` (torchvision's two 1024-d FC layers) or ``"4conv1fc"`` (4 convs + 1 FC, BN per
            ``norm``: the MoCo/DenseCL COCO protocol). Ignored for C4 (the head is ``layer4``).
        anchor_sizes: One anchor size (pixels) per pyramid level, aspect ratios 0.5/1/2. ``None``: ``8 x stride``
            per level (32, 64, 128, 256, 512 for strides 4..64). For C4: the sizes of the single level
            (default 32..512).
        representation_size: Width of the FC layer(s) of the FPN box head.
        roi_batch_size: RoIs sampled per image for the box head loss (25 % positives).
        rpn_proposals_train: RPN proposals kept per image (before and after NMS, per level before) at training.
        rpn_proposals_test: The same at evaluation.
        detections_per_img: Maximum detections per image.
        model_kwargs: Extra ``timm.create_model`` arguments.
    """

    kind: DetectorKind = "faster_rcnn"
    arch: str = "resnet50"  # any timm model with forward_intermediates
    weights: str | None = None  # run/export folder, timm state_dict, .safetensors; null = random init
    neck: Neck = "fpn"  # c4: ResNets, faster_rcnn only
    levels: list[int] | None = None  # feature_info indices; null = strides 4/8/16/32 (c4: 16; ViT: last block)
    norm: Norm = "frozen_bn"
    frozen_stages: Annotated[int, Range(ge=-1)] = 1  # -1 none, 0 stem, N stem + first N stages
    frozen: bool = False  # freeze the whole backbone
    out_channels: Annotated[int, Range(ge=1)] = 256
    box_head: BoxHead = "2fc"
    representation_size: Annotated[int, Range(ge=1)] = 1024
    anchor_sizes: Annotated[list[int] | None, Range(ge=1)] = None  # one per pyramid level; null = 8 x stride
    roi_batch_size: Annotated[int, Range(ge=1)] = 512
    rpn_proposals_train: Annotated[int, Range(ge=1)] = 2000
    rpn_proposals_test: Annotated[int, Range(ge=1)] = 1000
    detections_per_img: Annotated[int, Range(ge=1)] = 100
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_timm_arch(self.arch)
        if self.neck == "c4" and self.kind == "mask_rcnn":
            raise ValueError("neck: c4 is implemented for faster_rcnn only")


_FPN_STRIDES = (4, 8, 16, 32)


# --------------------------------------------------------------------------- #
# Norm conversion and freezing
# --------------------------------------------------------------------------- #


def _frozen_copy(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    """A ``FrozenBatchNorm2d`` with ``bn``'s statistics and affine parameters (identity affine if it has none)."""
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    with torch.no_grad():
        if bn.affine:
            frozen.weight.copy_(bn.weight)
            frozen.bias.copy_(bn.bias)
        if bn.track_running_stats and bn.running_mean is not None:
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
    reference = bn.running_mean if bn.running_mean is not None else bn.weight
    return frozen.to(reference.device) if reference is not None else frozen


def freeze_batch_norm(module: nn.Module, only_frozen_params: bool = False) -> nn.Module:
    """Replace ``BatchNorm2d`` / ``SyncBatchNorm`` layers by ``torchvision.ops.FrozenBatchNorm2d``.

    timm's ``BatchNormAct2d`` (BN fused with an activation) becomes timm's frozen equivalent, which keeps the
    activation.

    Args:
        module: Any module (changed in place).
        only_frozen_params: Replace only the layers whose parameters have ``requires_grad=False``.

    Returns:
        ``module``, or its replacement if ``module`` itself is a BatchNorm.
    """
    from timm.layers import freeze_batch_norm_2d

    def convert(child: nn.Module) -> nn.Module | None:
        if not isinstance(child, nn.modules.batchnorm._BatchNorm) or isinstance(child, nn.BatchNorm1d):
            return None
        if only_frozen_params and any(p.requires_grad for p in child.parameters()):
            return None
        if type(child) in (nn.BatchNorm2d, nn.SyncBatchNorm):
            return _frozen_copy(child)
        return freeze_batch_norm_2d(child)  # timm BatchNormAct2d and friends

    replaced = convert(module)
    if replaced is not None:
        return replaced
    for name, child in list(module.named_children()):
        new = freeze_batch_norm(child, only_frozen_params)
        if new is not child:
            setattr(module, name, new)
    return module


def _freeze_stages(model: nn.Module, frozen_stages: int, frozen: bool) -> int:
    """Set ``requires_grad=False`` on the stem and first ``frozen_stages`` stages (or everything if ``frozen``).

    Stages are timm's coarse parameter groups (group 0 = stem, 1.. = stages / blocks).

    Returns:
        The number of frozen parameter tensors.
    """
    if frozen:
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(False)
        return len(params)
    if frozen_stages < 0:
        return 0
    if not hasattr(model, "group_matcher"):
        raise ValueError(f"{type(model).__name__} has no group_matcher(); use frozen_stages=-1 or frozen=true")
    groups = group_parameters(model, model.group_matcher(coarse=True))
    named = dict(model.named_parameters())
    count = 0
    for group_id, names in groups.items():
        if group_id <= frozen_stages:
            for name in names:
                named[name].requires_grad_(False)
                count += 1
    return count


# --------------------------------------------------------------------------- #
# Necks
# --------------------------------------------------------------------------- #


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: one single-scale map -> strides 4/8/16/32 (+ max-pooled 64).

    Args:
        in_channels: Channels ``C`` of the input map.
        in_stride: Stride of the input map (a power of two, e.g. 16 for patch-16 ViTs).
        out_channels: Channels of every output level.
        strides: Output strides (each ``in_stride`` times a power of two between 1/4 and 4).
    """

    def __init__(self, in_channels: int, in_stride: int, out_channels: int = 256,
                 strides: Sequence[int] = _FPN_STRIDES) -> None:
        super().__init__()
        self.strides = [int(s) for s in strides] + [int(strides[-1]) * 2]
        self.stages = nn.ModuleList()
        for stride in strides:
            ratio = math.log2(in_stride / stride)
            if ratio != int(ratio) or not -2 <= ratio <= 2:
                raise ValueError(f"simple feature pyramid cannot map stride {in_stride} to {stride} (needs a power-"
                                 "of-two ratio between 1/4 and 4)")
            layers: list[nn.Module] = []
            dim = in_channels
            for step in range(int(ratio)):  # upsample: deconv (LN + GELU between two deconvs, as ViTDet)
                if step:
                    layers += [LayerNorm2d(dim), nn.GELU()]
                layers.append(nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2))
                dim //= 2
            if ratio < 0:
                factor = 2 ** int(-ratio)
                layers.append(nn.MaxPool2d(kernel_size=factor, stride=factor))
            layers += [nn.Conv2d(dim, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                       nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels)]
            self.stages.append(nn.Sequential(*layers))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Map ``(B, C, h, w)`` at ``in_stride`` to ``{"0": stride 4, ..., "3": stride 32, "pool": stride 64}``."""
        out: OrderedDict[str, Tensor] = OrderedDict((str(k), stage(x)) for k, stage in enumerate(self.stages))
        out["pool"] = F.max_pool2d(out[str(len(self.stages) - 1)], kernel_size=1, stride=2)
        return out


class DetectionBackbone(nn.Module):
    """A timm backbone with a feature pyramid (or the C4 map), in torchvision's detection-backbone interface.

    Args:
        arch: timm model name (``resnet50``, ``convnext_tiny``, ``vit_small_patch16_224`` ...).
        weights: Local weights: a densessl run or export folder, a timm ``state_dict`` (``.pt``/``.pth``/``.bin``
            or ``.safetensors``), or ``None`` for random init. Never downloads.
        levels: ``feature_info`` indices feeding the neck. ``None``: ConvNet FPN -> the last level of each
            stride 4/8/16/32; C4 -> the stride-16 level; ViT -> the last block. ViTs take exactly one level.
        out_channels: Channels of every pyramid level (FPN / simple pyramid).
        neck: ``"fpn"`` or ``"c4"`` (ResNets: ``layer3`` output; ``take_res5()`` hands ``layer4`` to the head).
        norm: ``"frozen_bn"``, ``"bn"`` or ``"sync_bn"`` (see the module docstring).
        frozen_stages: ``-1`` none, ``0`` stem, ``N`` stem + first ``N`` stages frozen.
        frozen: Freeze the whole timm model (the neck stays trainable).
        model_kwargs: Extra ``timm.create_model`` arguments (e.g. ``drop_path_rate``).

    Attributes:
        out_channels: Channels of every output map (what ``FasterRCNN`` reads).
        featmap_names: Keys of the maps RoI pooling uses (all but ``"pool"``).
        strides: Stride of every output map, in output order (``"pool"`` last for FPN).
        is_vit: Whether the simple feature pyramid is used.
    """

    def __init__(
        self,
        arch: str,
        weights: str | os.PathLike | None = None,
        levels: Sequence[int] | None = None,
        out_channels: int = 256,
        neck: str = "fpn",
        norm: str = "frozen_bn",
        frozen_stages: int = 1,
        frozen: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if neck not in NECKS:
            raise ValueError(f"neck must be one of {NECKS}, got {neck!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if frozen_stages < -1:
            raise ValueError(f"frozen_stages must be >= -1, got {frozen_stages}")
        self.body = DenseBackbone(arch, levels=(-1,), weights=None, model_kwargs=model_kwargs)
        if weights is not None:
            load_backbone_weights(self.body.model, weights)  # .pt, .safetensors or a training checkpoint
        model = self.body.model
        self.is_vit = self.body.is_vit
        self.norm = norm
        self.neck_kind = neck
        info = list(model.feature_info)
        self.levels = self._pick_levels(arch, info, levels, neck)
        in_channels = [int(info[i]["num_chs"]) for i in self.levels]
        level_strides = [int(info[i]["reduction"]) for i in self.levels]

        self.num_frozen = _freeze_stages(model, frozen_stages, frozen)
        if norm == "frozen_bn":
            freeze_batch_norm(model)
        elif self.num_frozen:
            freeze_batch_norm(model, only_frozen_params=True)

        self._res5: list[nn.Module] = []  # a list keeps layer4 out of this module's parameters (the head owns it)
        if neck == "c4":
            if self.is_vit or not hasattr(model, "layer4") or info[self.levels[0]]["module"] != "layer3":
                raise ValueError(f"neck='c4' needs a ResNet-style timm model with layer3/layer4, got {arch!r}")
            self._res5.append(model.layer4)
        model.prune_intermediate_layers(self.levels, prune_norm=not self.body.norm_maps, prune_head=True)

        if self.is_vit:
            if len(self.levels) != 1:
                raise ValueError(
                    f"ViT backbones take one level for the simple feature pyramid, got {list(levels or [])}")
            self.neck: nn.Module = SimpleFeaturePyramid(in_channels[0], level_strides[0], out_channels)
            self.strides = self.neck.strides
            self.out_channels = out_channels
            self.featmap_names = [str(k) for k in range(len(self.strides) - 1)]
        elif neck == "fpn":
            fpn_norm = nn.BatchNorm2d if norm in ("bn", "sync_bn") else None
            self.neck = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool(),
                                              norm_layer=fpn_norm)
            self.strides = [*level_strides, level_strides[-1] * 2]
            self.out_channels = out_channels
            self.featmap_names = [str(k) for k in range(len(self.levels))]
        else:
            self.neck = nn.Identity()
            self.strides = level_strides
            self.out_channels = in_channels[0]
            self.featmap_names = ["0"]
        logger.info("detection backbone %s: levels %s (strides %s) -> %s neck, outputs strides %s, norm %s, "
                    "%d frozen parameter tensors", arch, self.levels, level_strides, "simple-pyramid" if self.is_vit
                    else neck, self.strides, norm, self.num_frozen)

    @staticmethod
    def _pick_levels(arch: str, info: list[dict[str, Any]], levels: Sequence[int] | None, neck: str) -> list[int]:
        count = len(info)
        if levels is not None:
            picked = normalize_levels(levels, count, arch)
            if picked != sorted(set(picked)):
                raise ValueError(f"levels must be increasing and distinct, got {list(levels)}")
            return picked
        reductions = [int(entry["reduction"]) for entry in info]
        if len(set(reductions)) == 1:  # ViT-like: every block has the same stride
            return [count - 1]
        wanted = (16,) if neck == "c4" else _FPN_STRIDES
        picked = [max(i for i, r in enumerate(reductions) if r == s) for s in wanted if s in reductions]
        if not picked:
            raise ValueError(f"{arch!r} has no feature level at strides {wanted} (has {reductions}); pass levels")
        return picked

    def take_res5(self) -> nn.Module:
        """Return the ResNet ``layer4`` for the C4 RoI head (``neck="c4"`` only; call once)."""
        if not self._res5:
            raise ValueError("take_res5() needs neck='c4' and can be called once")
        return self._res5.pop()

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """Compute the pyramid.

        Args:
            images: ``(B, 3, H, W)`` normalized images (``H``, ``W`` multiples of 32 for exact strides).

        Returns:
            ``OrderedDict`` name -> ``(B, out_channels, H / stride, W / stride)`` in ``strides`` order.
        """
        maps = self.body.model.forward_intermediates(images, indices=self.levels, norm=self.body.norm_maps,
                                                     stop_early=True, intermediates_only=True)
        if self.is_vit:
            return self.neck(maps[0])
        features = OrderedDict((str(k), m) for k, m in enumerate(maps))
        return self.neck(features) if self.neck_kind == "fpn" else features


# --------------------------------------------------------------------------- #
# Detector
# --------------------------------------------------------------------------- #


class _MultiScaleTransform(GeneralizedRCNNTransform):
    """torchvision's transform with separate train sizes (random choice) and one test size."""

    def __init__(self, train_sizes: Sequence[int], test_size: int, max_size: int) -> None:
        super().__init__(min_size=tuple(train_sizes), max_size=max_size, image_mean=list(IMAGENET_MEAN),
                         image_std=list(IMAGENET_STD))
        self.train_sizes = tuple(int(s) for s in train_sizes)
        self.test_size = int(test_size)

    def train(self, mode: bool = True) -> _MultiScaleTransform:
        self.min_size = self.train_sizes if mode else (self.test_size,)
        return super().train(mode)


class _Res5Head(nn.Module):
    """C4 box head: ResNet ``layer4`` on the ``14 x 14`` RoI features, then global average pooling."""

    def __init__(self, res5: nn.Module) -> None:
        super().__init__()
        self.res5 = res5

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C4, 14, 14)`` -> ``(N, C5)``."""
        return self.res5(x).mean(dim=(2, 3))


def build_detector(
    cfg: ModelConfig,
    num_classes: int,
    *,
    min_size: int | Sequence[int] = 800,
    test_min_size: int | None = None,
    max_size: int = 1333,
) -> nn.Module:
    """Build a torchvision Faster R-CNN or Mask R-CNN on a densessl backbone, as ``cfg`` (:class:`ModelConfig`) says.

    Args:
        cfg: The detector and its backbone.
        num_classes: Classes including the background (``dataset.num_classes``).
        min_size: Shorter side at training; a sequence draws one per batch (multi-scale training).
        test_min_size: Shorter side at evaluation (default: the last ``min_size``).
        max_size: Cap on the longer side.

    Returns:
        The detector: train mode ``model(images, targets) -> dict of losses``; eval mode ``model(images) ->``
        one dict per image with ``boxes`` ``(N, 4)`` xyxy in input-image pixels, ``scores``, ``labels`` and, for
        Mask R-CNN, ``masks`` ``(N, 1, H, W)`` probabilities.
    """
    kind, arch, weights, neck, levels, norm = cfg.kind, cfg.arch, cfg.weights, cfg.neck, cfg.levels, cfg.norm
    frozen_stages, frozen, out_channels, box_head = cfg.frozen_stages, cfg.frozen, cfg.out_channels, cfg.box_head
    anchor_sizes, representation_size, roi_batch_size = cfg.anchor_sizes, cfg.representation_size, cfg.roi_batch_size
    rpn_proposals_train, rpn_proposals_test = cfg.rpn_proposals_train, cfg.rpn_proposals_test
    detections_per_img, model_kwargs = cfg.detections_per_img, cfg.model_kwargs
    if kind not in DETECTOR_KINDS:
        raise ValueError(f"kind must be one of {DETECTOR_KINDS}, got {kind!r}")
    if box_head not in BOX_HEADS:
        raise ValueError(f"box_head must be one of {BOX_HEADS}, got {box_head!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
    if neck == "c4" and kind == "mask_rcnn":
        raise ValueError("neck='c4' is implemented for faster_rcnn only; use neck='fpn' for mask_rcnn")
    train_sizes = [int(min_size)] if isinstance(min_size, int) else [int(s) for s in min_size]
    if not train_sizes or min(train_sizes) < 32 or max_size < max(train_sizes):
        raise ValueError(f"min_size {train_sizes} must be >= 32 and <= max_size {max_size}")
    test_size = int(test_min_size) if test_min_size is not None else train_sizes[-1]

    backbone = DetectionBackbone(arch, weights=weights, levels=levels, out_channels=out_channels, neck=neck,
                                 norm=norm, frozen_stages=frozen_stages, frozen=frozen, model_kwargs=model_kwargs)
    head_norm = nn.BatchNorm2d if norm in ("bn", "sync_bn") else None
    ratios = (0.5, 1.0, 2.0)
    common: dict[str, Any] = {"min_size": train_sizes, "max_size": max_size, "image_mean": list(IMAGENET_MEAN),
                              "image_std": list(IMAGENET_STD), "box_detections_per_img": detections_per_img,
                              "box_batch_size_per_image": roi_batch_size,
                              "rpn_pre_nms_top_n_train": rpn_proposals_train,
                              "rpn_post_nms_top_n_train": rpn_proposals_train,
                              "rpn_pre_nms_top_n_test": rpn_proposals_test,
                              "rpn_post_nms_top_n_test": rpn_proposals_test}
    if neck == "c4" and not backbone.is_vit:
        sizes = tuple(int(s) for s in (anchor_sizes or (32, 64, 128, 256, 512)))
        anchors = AnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
        res5 = backbone.take_res5()
        res5_channels = int(backbone.body.model.feature_info[backbone.levels[0] + 1]["num_chs"])
        model: nn.Module = FasterRCNN(
            backbone, num_classes=None, rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=0),
            box_head=_Res5Head(res5), box_predictor=FastRCNNPredictor(res5_channels, num_classes), **common)
    else:
        levels_out = len(backbone.strides)
        sizes = tuple(int(s) for s in anchor_sizes) if anchor_sizes is not None else \
            tuple(8 * s for s in backbone.strides)
        if len(sizes) != levels_out:
            raise ValueError(f"anchor_sizes needs one size per pyramid level ({levels_out}: strides "
                             f"{backbone.strides}), got {list(sizes)}")
        anchors = AnchorGenerator(sizes=tuple((s,) for s in sizes), aspect_ratios=(ratios,) * levels_out)
        box_pool = MultiScaleRoIAlign(backbone.featmap_names, output_size=7, sampling_ratio=2)
        width = backbone.out_channels  # conv width of the 4conv1fc and mask heads (256 in the usual models)
        if box_head == "4conv1fc":
            head: nn.Module = FastRCNNConvFCHead((width, 7, 7), [width] * 4, [representation_size],
                                                 norm_layer=head_norm)
        else:
            head = TwoMLPHead(width * 7 * 7, representation_size)
        parts: dict[str, Any] = {"rpn_anchor_generator": anchors, "box_roi_pool": box_pool, "box_head": head,
                                 "box_predictor": FastRCNNPredictor(representation_size, num_classes)}
        if kind == "mask_rcnn":
            parts["mask_roi_pool"] = MultiScaleRoIAlign(backbone.featmap_names, output_size=14, sampling_ratio=2)
            parts["mask_head"] = MaskRCNNHeads(width, [width] * 4, 1, norm_layer=head_norm)
            parts["mask_predictor"] = MaskRCNNPredictor(width, width, num_classes)
            model = MaskRCNN(backbone, num_classes=None, **parts, **common)
        else:
            model = FasterRCNN(backbone, num_classes=None, **parts, **common)
    model.transform = _MultiScaleTransform(train_sizes, test_size, max_size)
    if norm == "sync_bn":
        if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:  # torch's SyncBatchNorm has no CPU kernel
            logger.info("norm=sync_bn without a NCCL process group: plain (per-process) BatchNorm")
    return model
