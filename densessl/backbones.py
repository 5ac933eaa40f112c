"""Dense backbones: any timm model with ``forward_intermediates`` -> dense maps + pooled vector.

``DenseBackbone`` wraps ``timm.create_model(name, pretrained=False)``: it never downloads. Weights come from a local
file or folder (anything ``densessl.weights.read_backbone_weights`` reads: a run folder or its ``export/`` folder that
pretraining writes, a timm state dict, a training checkpoint) or stay random. Without an ``arch``, the architecture
is the one the weights file states.

* ConvNets (ResNets, ConvNeXts, ...): ``maps`` are the stage outputs picked by ``levels`` (indices into timm's
  ``feature_info``); ``pooled`` is timm's pre-logits head (global average pooling, plus ConvNeXt's head norm).
* ViTs: built with ``dynamic_img_size=True`` so 224 px and 96 px crops share one model; ``maps`` are the patch tokens
  of the chosen blocks reshaped to ``(B, C, h, w)`` with class/register tokens removed, after the final norm
  (``norm_maps=True``, the usual choice for dense ViT features); ``pooled`` is timm's pooled output (class token or
  average, per ``global_pool``).

Difference from the official VICRegL backbones: its ConvNeXt applies the final LayerNorm to every token and pools
the normalized tokens; timm's ConvNeXt pools first and normalizes the pooled vector, so our ConvNeXt ``maps`` are not
normalized (set ``norm_maps`` to apply timm's ``norm`` argument where the model supports it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import timm
import torch
from einops import rearrange
from torch import Tensor, nn

from densessl.convert import unknown_arch_message
from densessl.data.collate import Views
from densessl.weights import BackboneWeights, load_backbone_weights, read_backbone_weights

__all__ = ["DenseBackbone", "DenseFeatureExtractor", "DenseFeatures", "encode_views", "load_backbone_weights",
           "normalize_levels"]

logger = logging.getLogger("densessl")


@dataclass
class DenseFeatures:
    """Backbone output for one batch of images.

    Attributes:
        maps: One ``(B, C_l, h_l, w_l)`` map per requested level, in the order of ``DenseBackbone.levels``.
        pooled: ``(B, C)`` global representation.
    """

    maps: list[Tensor]
    pooled: Tensor


def _create_timm_model(arch: str, kwargs: dict[str, Any]) -> tuple[nn.Module, bool]:
    """Create a timm model, with ``dynamic_img_size=True`` where the model class accepts it (ViT-like models).

    Returns:
        The model and whether it was built with a dynamic image size.
    """
    try:
        return timm.create_model(arch, dynamic_img_size=True, **kwargs), True
    except TypeError as error:
        if "dynamic_img_size" not in str(error):
            raise
    return timm.create_model(arch, **kwargs), False


def normalize_levels(levels: Sequence[int], count: int, arch: str) -> list[int]:
    """The one feature-level rule: ``feature_info`` indices, negative counting from the end, as indices in ``[0, count)``.

    Raises:
        ValueError: No level, or one outside ``[-count, count)`` (the message names the architecture).
    """
    if not levels or any(not -count <= int(level) < count for level in levels):
        raise ValueError(f"levels {list(levels)} out of range for {arch!r} with {count} feature levels")
    return [int(level) % count for level in levels]


class DenseFeatureExtractor(Protocol):
    """What densessl needs of a backbone (``DenseBackbone`` is one; any ``nn.Module`` with these works).

    Attributes:
        channels: Channels of each returned map, in order (``DenseFeatures.maps[i]`` has ``channels[i]``).
        strides: Input pixels per map cell of each returned map (32 for a ResNet's last stage, 16 for ViT-S/16).
        num_features: Width of ``DenseFeatures.pooled``.
        arch: A name for messages and exports (a timm model name when the weights should load into timm).
    """

    channels: list[int]
    strides: list[int]
    num_features: int
    arch: str

    def __call__(self, images: Tensor) -> DenseFeatures:
        """``(B, 3, H, W)`` normalized images -> the maps and the pooled vector."""
        ...


class DenseBackbone(nn.Module):
    """A timm model returning ``DenseFeatures``.

    Args:
        arch: timm model name (e.g. ``resnet18``, ``convnext_tiny``, ``vit_small_patch16_224``), or a timm model
            instance you built yourself (``DenseBackbone(timm.create_model("resnet50", ...))``, also
            :meth:`from_model`). ``None`` takes the architecture the ``weights`` file states (an error if it states
            none). A ViT instance needs ``dynamic_img_size=True`` for crops of several sizes (multi-crop).
        levels: Indices into the model's ``feature_info`` of the maps to return; negative counts from the end.
            The default ``(-1,)`` is the last stage (stride 32 for ConvNets, the last block for ViTs).
        weights: Optional local weights file (see ``densessl.weights.read_backbone_weights``), or weights already
            read with it. Never downloads. Loaded strictly; classifier-head keys are skipped.
        norm_maps: Apply the model's final norm to the intermediate maps (timm's ``norm=True``). ``None`` means
            ``True`` for ViTs and ``False`` for ConvNets.
        model_kwargs: Extra keyword arguments for ``timm.create_model`` (e.g. ``drop_path_rate``, ``global_pool``).
    """

    def __init__(
        self,
        arch: str | nn.Module | None = None,
        levels: Sequence[int] = (-1,),
        weights: str | os.PathLike | BackboneWeights | None = None,
        norm_maps: bool | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        instance = arch if isinstance(arch, nn.Module) else None
        if instance is not None:
            if model_kwargs:
                raise ValueError("model_kwargs are timm.create_model arguments; pass them when you build the model "
                                 "instance, not to DenseBackbone")
            arch = str(getattr(instance, "pretrained_cfg", {}).get("architecture") or type(instance).__name__)
        elif arch is not None and not isinstance(arch, str):
            raise TypeError(f"DenseBackbone takes a timm model name or a timm model instance, got "
                            f"{type(arch).__name__}")
        read = None
        if weights is not None:
            read = weights if isinstance(weights, BackboneWeights) else read_backbone_weights(weights)
        if arch is None:
            if read is None:
                raise ValueError("DenseBackbone needs arch (a timm model name) when no weights file is given")
            if read.arch is None:
                raise ValueError(f"weights file {str(read.path)!r} ({read.source}) states no architecture; pass --arch "
                                 "(the timm model name it was trained with, e.g. resnet50)")
            arch = read.arch
        self.arch = arch
        if instance is not None:
            self.model = instance
            self.is_vit = hasattr(instance, "patch_embed")
            if self.is_vit and not getattr(instance, "dynamic_img_size", False):
                logger.warning("%s was built without dynamic_img_size=True: it takes only its own input size, so "
                               "multi-crop views of other sizes fail; build it with timm.create_model(..., "
                               "dynamic_img_size=True)", arch)
        else:
            if not timm.is_model(arch):
                raise ValueError(unknown_arch_message(arch))
            kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, **(model_kwargs or {})}
            self.model, self.is_vit = _create_timm_model(arch, kwargs)
        if not hasattr(self.model, "forward_intermediates") or not hasattr(self.model, "feature_info"):
            raise ValueError(f"model {arch!r} has no forward_intermediates() / feature_info; densessl needs a timm "
                             f"model (timm >= 1.0) for dense maps, or a module following "
                             f"densessl.backbones.DenseFeatureExtractor")
        info = list(self.model.feature_info)
        self.levels = normalize_levels(levels, len(info), arch)
        self.channels = [int(info[level]["num_chs"]) for level in self.levels]
        self.strides = [int(info[level]["reduction"]) for level in self.levels]
        self.num_features = int(self.model.num_features)
        self.norm_maps = self.is_vit if norm_maps is None else norm_maps
        if read is not None:
            load_backbone_weights(self.model, read)

    @classmethod
    def from_model(cls, model: nn.Module, levels: Sequence[int] = (-1,),
                   weights: str | os.PathLike | BackboneWeights | None = None,
                   norm_maps: bool | None = None) -> DenseBackbone:
        """Wrap a timm model instance you built (any ``timm.create_model`` arguments, your own weights)."""
        return cls(model, levels=levels, weights=weights, norm_maps=norm_maps)

    def forward(self, images: Tensor) -> DenseFeatures:
        """Compute dense maps and the pooled vector.

        Args:
            images: ``(B, 3, H, W)`` normalized images.

        Returns:
            ``DenseFeatures`` with ``maps[i]`` of shape ``(B, channels[i], H / strides[i], W / strides[i])``
            (rounded as the model rounds) and ``pooled`` of shape ``(B, num_features)``.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        patch = getattr(getattr(self.model, "patch_embed", None), "patch_size", None)
        if self.is_vit and patch is not None:
            patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch
            if images.shape[-2] % patch_h or images.shape[-1] % patch_w:
                raise ValueError(f"{self.arch} cuts images into {patch_h}x{patch_w} patches, but the input is "
                                 f"{images.shape[-2]}x{images.shape[-1]}; use an input size that is a multiple of "
                                 f"{patch_h} (e.g. --input-size {max(patch_h, images.shape[-2] // patch_h * patch_h)})")
        final, maps = self.model.forward_intermediates(images, indices=self.levels, norm=self.norm_maps)
        pooled = self.model.forward_head(final, pre_logits=True)
        return DenseFeatures(maps=list(maps), pooled=pooled)


def encode_views(backbone: nn.Module, views: Views, channels_last: bool = False,
                 select: Sequence[int] | None = None, bn_groups: int = 1,
                 permutation: Tensor | None = None) -> list[DenseFeatures]:
    """Run the backbone on a batch of views.

    This is the one encode path for every network (student and teacher alike). ``select=None`` runs the backbone
    once per resolution group (BatchNorm statistics over all views of the group, one large forward). A tuple of view
    indices runs it once per listed view instead (BatchNorm statistics per view, as the MoCo / BYOL-family
    references call their encoders once per view), and only on those views.

    ``bn_groups > 1`` (with ``select``) splits each selected view's batch into that many consecutive chunks, one
    forward each, so BatchNorm statistics are per chunk: one process emulating the per-GPU statistics of a
    ``bn_groups``-GPU run. ``permutation`` (a ``(B,)`` permutation of the batch) reorders the images before the split
    and restores the order after it: MoCo's shuffle-BN, which puts each image's key in another chunk than its query.
    Without BatchNorm in train mode the outputs equal the unsplit forward.

    Args:
        backbone: A ``DenseBackbone`` (or anything returning ``DenseFeatures``).
        views: A batch of views.
        channels_last: Feed the backbone NHWC-strided images (faster convolutions on GPUs with a channels-last model).
        select: ``None`` (every view, per resolution group) or the view indices to encode, one forward each.
        bn_groups: Chunks per selected view (``1``: one forward over the whole batch); needs ``select``.
        permutation: ``(B,)`` int64 batch order for the chunks (``None``: the batch order); needs ``select``.

    Returns:
        One ``DenseFeatures`` per view, each with batch ``B`` in the batch order: every view in view order
        (``select=None``), or the selected views in ``select`` order.
    """

    def forward(images: Tensor) -> DenseFeatures:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return backbone(images)

    def forward_split(images: Tensor) -> DenseFeatures:
        if bn_groups == 1 and permutation is None:
            return forward(images)
        if permutation is not None:
            images = images[permutation]
        chunks = [forward(chunk) for chunk in images.tensor_split(bn_groups)]
        maps = [torch.cat([chunk.maps[level] for chunk in chunks]) for level in range(len(chunks[0].maps))]
        pooled = torch.cat([chunk.pooled for chunk in chunks])
        if permutation is not None:
            inverse = torch.argsort(permutation)
            maps, pooled = [m[inverse] for m in maps], pooled[inverse]
        return DenseFeatures(maps=maps, pooled=pooled)

    if bn_groups < 1:
        raise ValueError(f"bn_groups must be >= 1, got {bn_groups}")
    if (bn_groups > 1 or permutation is not None) and select is None:
        raise ValueError("bn_groups / permutation split a selected view's batch: pass select=(view, ...)")
    if bn_groups > views.batch_size:
        raise ValueError(f"bn_groups={bn_groups} is more than the batch of {views.batch_size} images")
    if permutation is not None and tuple(permutation.shape) != (views.batch_size,):
        raise ValueError(f"permutation must have shape ({views.batch_size},), got {tuple(permutation.shape)}")
    if select is not None:
        return [forward_split(views.view(index)) for index in select]
    batch = views.batch_size
    per_view: list[DenseFeatures] = []
    for group in views.images:
        count = group.shape[1]
        feats = forward(rearrange(group, "b v c h w -> (v b) c h w"))
        maps = [m.reshape(count, batch, *m.shape[1:]) for m in feats.maps]  # (V_g, B, C, h, w)
        pooled = feats.pooled.reshape(count, batch, -1)
        for v in range(count):
            per_view.append(DenseFeatures(maps=[m[v] for m in maps], pooled=pooled[v]))
    return per_view
