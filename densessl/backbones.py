"""Dense backbones: any timm model with ``forward_intermediates`` -> dense maps + pooled vector.

``DenseBackbone`` wraps ``timm.create_model(name, pretrained=False)``: it never downloads. Weights come from a local
file (a timm ``state_dict``, such as the ``backbone.pt`` that ``tools/train.py`` exports) or stay random.

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
from dataclasses import dataclass
from typing import Any, Sequence

import timm
import torch
from einops import rearrange
from torch import Tensor, nn

from densessl.data.collate import Views

__all__ = ["DenseFeatures", "DenseBackbone", "encode_views", "load_backbone_weights"]

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


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local weights file into a timm model, strictly, skipping only classifier-head keys.

    Accepts a plain ``state_dict`` or a dict holding one under ``"state_dict"``, ``"model"`` or ``"backbone"``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is not a state dict, or its keys/shapes do not fit the model (the message lists them).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights file not found: {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt files
        raise ValueError(f"cannot load weights file {path!r}: {type(error).__name__}: {error}") from error
    for key in ("backbone", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path!r} does not hold a state_dict of tensors")
    own = model.state_dict()
    # Files saved from a model with a classifier carry its weights; our backbones are built with num_classes=0.
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or "fc"
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {k: v for k, v in state.items() if k in own or not k.startswith(tuple(f"{c}." for c in classifiers))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"weights file {path!r} does not fit {type(model).__name__}: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:5]}. Check --arch matches the weights."
        )
    model.load_state_dict(state, strict=True)


class DenseBackbone(nn.Module):
    """A timm model returning ``DenseFeatures``.

    Args:
        arch: timm model name (e.g. ``resnet18``, ``convnext_tiny``, ``vit_small_patch16_224``).
        levels: Indices into the model's ``feature_info`` of the maps to return; negative counts from the end.
            The default ``(-1,)`` is the last stage (stride 32 for ConvNets, the last block for ViTs).
        weights: Optional local timm ``state_dict`` file. Never downloads.
        norm_maps: Apply the model's final norm to the intermediate maps (timm's ``norm=True``). ``None`` means
            ``True`` for ViTs and ``False`` for ConvNets.
        model_kwargs: Extra keyword arguments for ``timm.create_model`` (e.g. ``drop_path_rate``, ``global_pool``).
    """

    def __init__(
        self,
        arch: str,
        levels: Sequence[int] = (-1,),
        weights: str | os.PathLike | None = None,
        norm_maps: bool | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not timm.is_model(arch):
            close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
            raise ValueError(f"unknown timm architecture {arch!r}; similar names: {close}")
        kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, **(model_kwargs or {})}
        self.arch = arch
        self.model, self.is_vit = _create_timm_model(arch, kwargs)
        if not hasattr(self.model, "forward_intermediates"):
            raise ValueError(f"timm model {arch!r} has no forward_intermediates(); densessl needs it for dense maps")
        info = list(self.model.feature_info)
        if not levels or any(not -len(info) <= level < len(info) for level in levels):
            raise ValueError(f"levels {list(levels)} out of range for {arch!r} with {len(info)} feature levels")
        self.levels = [level % len(info) for level in levels]
        self.channels = [int(info[level]["num_chs"]) for level in self.levels]
        self.strides = [int(info[level]["reduction"]) for level in self.levels]
        self.num_features = int(self.model.num_features)
        self.norm_maps = self.is_vit if norm_maps is None else norm_maps
        if weights is not None:
            load_backbone_weights(self.model, weights)

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
        final, maps = self.model.forward_intermediates(images, indices=self.levels, norm=self.norm_maps)
        pooled = self.model.forward_head(final, pre_logits=True)
        return DenseFeatures(maps=list(maps), pooled=pooled)


def encode_views(backbone: nn.Module, views: Views, channels_last: bool = False) -> list[DenseFeatures]:
    """Run the backbone once per resolution group and split the result per view.

    This is the one encode path for every network (student and teacher alike).

    Args:
        backbone: A ``DenseBackbone`` (or anything returning ``DenseFeatures``).
        views: A batch of views.
        channels_last: Feed the backbone NHWC-strided images (faster convolutions on GPUs with a channels-last model).

    Returns:
        ``V`` ``DenseFeatures``, one per view in view order, each with batch ``B``.
    """
    batch = views.batch_size
    per_view: list[DenseFeatures] = []
    for group in views.images:
        count = group.shape[1]
        images = rearrange(group, "b v c h w -> (v b) c h w")
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = backbone(images)
        maps = [m.reshape(count, batch, *m.shape[1:]) for m in feats.maps]  # (V_g, B, C, h, w)
        pooled = feats.pooled.reshape(count, batch, -1)
        for v in range(count):
            per_view.append(DenseFeatures(maps=[m[v] for m in maps], pooled=pooled[v]))
    return per_view
