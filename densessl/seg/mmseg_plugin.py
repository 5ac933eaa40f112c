"""mmsegmentation plugin: densessl backbones, the VICRegL linear head and two datasets, registered in mmseg.

This is the only densessl module that imports mmsegmentation, mmcv or mmengine (``pip install "densessl[mmseg]"``:
mmsegmentation 1.2.2 on ``mmcv-lite``, no compiler needed). Before importing mmseg it installs
``densessl.seg.mmcv_ops_standin``, a pure-Python ``mmcv.ops`` for mmcv-lite: heads that need compiled mmcv ops (PSA,
CCNet, deformable convolutions, ...) then fail with a message naming the optional full-mmcv build
(``scripts/build_mmcv.sh``); with a full mmcv installed the real ops are used. Configs load it with
``custom_imports=dict(imports=["densessl.seg.mmseg_plugin"], allow_failed_imports=False)``, which
``tools/finetune_seg.py`` adds for you.

Registered (``mmseg.registry``):
    * ``MODELS``: ``DenseSSLBackbone`` (any timm model through ``densessl.backbones.DenseBackbone``, weights from a
      densessl run or export folder or any weights file densessl reads, frozen or trainable) and ``LinearHead``
      (``BN -> Dropout2d -> 1x1 conv``, the VICRegL linear-segmentation head).
    * ``DATASETS``: ``FolderSegDataset`` (``images/{train,val}/``, ``masks/{train,val}/*.png``, ``classes.txt``,
      validated by ``densessl.seg.readers.FolderSegmentation``) and ``SyntheticSegDataset`` (the embedded
      synthetic scenes, rendered once into a folder of that layout and then read like any folder dataset).

Weights are always read by densessl (``torch.load(..., weights_only=True)``), never by mmengine's checkpoint
loader, so set ``model.backbone.weights`` and leave ``model.pretrained``/``init_cfg`` unset.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from densessl.seg import mmcv_ops_standin

mmcv_ops_standin.install()  # before mmcv.cnn / mmseg: they import mmcv.ops, which mmcv-lite cannot load

from mmcv.cnn import build_norm_layer  # noqa: E402
from mmengine.model import BaseModule  # noqa: E402
from mmseg.datasets import BaseSegDataset  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.registry import DATASETS, MODELS  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from densessl.backbones import DenseBackbone
from densessl.data.synthetic import CLASS_NAMES, SyntheticScenes
from densessl.seg.readers import FolderSegmentation

__all__ = ["DenseSSLBackbone", "LinearHead", "FolderSegDataset", "SyntheticSegDataset", "render_synthetic_folder"]

logger = logging.getLogger("densessl")

_SYNC_BN = {"type": "SyncBN", "requires_grad": True}


@MODELS.register_module()
class DenseSSLBackbone(BaseModule):
    """A densessl backbone (any timm model) as an mmseg backbone returning a tuple of ``(B, C, h, w)`` maps.

    Args:
        arch: timm model name, e.g. ``"resnet50"``, ``"convnext_tiny"``, ``"vit_small_patch16_224"``.
        levels: Indices into the timm model's ``feature_info`` of the returned maps (negative counts from the end).
            The default, the last four levels, gives strides 4/8/16/32 for ResNets and ConvNeXts and the last four
            blocks (all stride 16) for ViTs. The decode head's ``in_index`` indexes into this tuple.
        weights: Local weights (a run folder or the export folder ``tools/train.py`` writes, a timm ``state_dict``
            file), loaded strictly with ``weights_only=True``. ``None`` keeps the random initialisation.
        frozen: No gradients for the backbone and every layer kept in eval mode (BN statistics and dropout fixed),
            also after ``train()``: the linear-evaluation protocol. ``False`` fine-tunes it.
        norm_eval: When fine-tuning, keep the backbone's BatchNorm layers in eval mode (frozen running statistics,
            useful with small batches). Ignored when ``frozen``.
        norm_maps: Apply the model's final norm to the maps (``DenseBackbone``'s argument; ``None`` = ViTs only).
        model_kwargs: Extra ``timm.create_model`` keyword arguments, e.g. ``{"drop_path_rate": 0.1}``.
        init_cfg: Must stay ``None``: weights come from ``weights``, not from mmengine's initialisers.

    Attributes:
        channels: Channels of each returned map.
        strides: Stride of each returned map relative to the input image.
    """

    def __init__(
        self,
        arch: str,
        levels: Sequence[int] = (-4, -3, -2, -1),
        weights: str | os.PathLike | None = None,
        frozen: bool = True,
        norm_eval: bool = False,
        norm_maps: bool | None = None,
        model_kwargs: dict[str, Any] | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        if init_cfg is not None:
            raise ValueError("DenseSSLBackbone does not take init_cfg: set model.backbone.weights to a local weights "
                             "file (loaded by densessl with weights_only=True) instead")
        super().__init__(init_cfg=None)
        self.backbone = DenseBackbone(arch, levels=tuple(levels), weights=weights, norm_maps=norm_maps,
                                      model_kwargs=dict(model_kwargs or {}))
        self.arch = arch
        self.weights = None if weights is None else os.fspath(weights)
        self.frozen = bool(frozen)
        self.norm_eval = bool(norm_eval)
        self.channels: list[int] = list(self.backbone.channels)
        self.strides: list[int] = list(self.backbone.strides)
        if self.frozen:
            for parameter in self.backbone.parameters():
                parameter.requires_grad_(False)
            self.backbone.eval()
        # Weights are final after construction; mmengine must not re-initialise them.
        self._is_init = True
        logger.info("DenseSSLBackbone %s: levels %s, channels %s, strides %s, %s, weights %s", arch,
                    self.backbone.levels, self.channels, self.strides, "frozen" if self.frozen else "fine-tuned",
                    self.weights or "random")

    def init_weights(self) -> None:
        """Do nothing: the weights were set at construction (loaded from ``weights`` or timm's random init)."""
        self._is_init = True

    def train(self, mode: bool = True) -> DenseSSLBackbone:
        """Set training mode, keeping a frozen backbone (or, with ``norm_eval``, its norm layers) in eval mode."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        elif mode and self.norm_eval:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """Compute the dense maps.

        Args:
            images: ``(B, 3, H, W)`` images normalised by the segmentor's data preprocessor.

        Returns:
            One ``(B, channels[i], H / strides[i], W / strides[i])`` map per level.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = self.backbone(images)
        return tuple(features.maps)


@MODELS.register_module()
class LinearHead(BaseDecodeHead):
    """The VICRegL linear-segmentation head: ``BN(C) -> Dropout2d -> 1x1 conv`` on the (concatenated) maps.

    With ``input_transform="resize_concat"``, ``in_index`` picks several backbone maps that are resized to the
    first one's size and concatenated (``C = sum(in_channels)``); otherwise ``in_index`` picks one map.

    Args:
        in_channels: Channels of the picked map (int), or of each picked map (list, with ``resize_concat``).
        channels: Must be ``None`` or equal to ``C`` (the head has no hidden layer); kept for mmseg's API.
        norm_cfg: Norm before the classifier; ``SyncBN`` as in VICRegL (reverted to BN by mmengine when not
            distributed), ``BN``, or ``None`` for none.
        **kwargs: ``BaseDecodeHead`` arguments (``num_classes``, ``in_index``, ``input_transform``,
            ``dropout_ratio``, ``loss_decode``, ``align_corners``, ...).
    """

    def __init__(self, in_channels: int | Sequence[int], channels: int | None = None,
                 norm_cfg: dict | None = _SYNC_BN, **kwargs: Any) -> None:
        norm_cfg = dict(norm_cfg) if norm_cfg is not None else None
        if kwargs.get("input_transform") == "resize_concat":
            if not isinstance(in_channels, (list, tuple)):
                raise ValueError("LinearHead with input_transform='resize_concat' needs in_channels as a list "
                                 f"(one entry per in_index), got {in_channels!r}")
            total = int(sum(in_channels))
        elif isinstance(in_channels, (list, tuple)):
            raise ValueError(f"LinearHead got a list in_channels={list(in_channels)}: set "
                             f"input_transform='resize_concat' to concatenate several maps")
        else:
            total = int(in_channels)
        if channels is not None and channels != total:
            raise ValueError(f"LinearHead has no hidden layer: channels must be None or {total} (the input "
                             f"channels), got {channels}")
        super().__init__(in_channels, total, norm_cfg=norm_cfg, **kwargs)
        self.bn = build_norm_layer(norm_cfg, total)[1] if norm_cfg is not None else nn.Identity()

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Per-pixel class logits at the resolution of the (first) picked map."""
        return self.cls_seg(self.bn(self._transform_inputs(inputs)))


@DATASETS.register_module()
class FolderSegDataset(BaseSegDataset):
    """Your own data in the generic folder layout, validated up front by ``FolderSegmentation``.

    Layout: ``data_root/images/<split>/**/*.<ext>`` (any ``densessl`` image extension, subfolders allowed),
    ``data_root/masks/<split>/**/*.png`` (class indices, same relative path and stem as the image, 255 = ignore) and
    ``data_root/classes.txt`` (one class name per line, line k = class k).

    Args:
        data_root: The dataset folder.
        split: ``"train"`` or ``"val"``.
        check_values: Decode every mask at start-up to check its values are classes or 255 (skip for huge sets).
        metainfo: Optional ``dict(palette=...)``; ``classes`` always come from ``classes.txt``.
        **kwargs: ``BaseSegDataset`` arguments (``pipeline``, ``test_mode``, ``indices``, ...). ``data_prefix``,
            ``img_suffix``, ``seg_map_suffix`` and ``ann_file`` are not used.

    Raises:
        FileNotFoundError: ``data_root`` does not exist.
        ValueError: ``classes.txt`` is missing or bad, or the split fails validation (one message lists every
            problem with the offending files).
    """

    def __init__(self, data_root: str | os.PathLike, split: str = "train", check_values: bool = True,
                 metainfo: dict | None = None, **kwargs: Any) -> None:
        for key in ("data_prefix", "img_suffix", "seg_map_suffix", "ann_file"):
            kwargs.pop(key, None)
        if kwargs.get("ignore_index", 255) != 255:
            raise ValueError("FolderSegDataset masks mark ignored pixels with 255; ignore_index must be 255")
        if kwargs.get("reduce_zero_label"):
            raise ValueError("FolderSegDataset does not support reduce_zero_label: class 0 is a class (line 1 of "
                             "classes.txt); mark ignored pixels with 255 in the masks instead")
        self.split = split
        self.reader = FolderSegmentation(data_root, split, check_values=check_values)
        meta = dict(metainfo or {})
        if "classes" in meta and tuple(meta["classes"]) != self.reader.class_names:
            raise ValueError(f"metainfo classes {list(meta['classes'])} differ from "
                             f"{Path(data_root) / 'classes.txt'}; edit classes.txt instead")
        meta["classes"] = self.reader.class_names
        super().__init__(data_root=os.fspath(data_root), metainfo=meta, data_prefix=dict(img_path="", seg_map_path=""),
                         **kwargs)

    def load_data_list(self) -> list[dict]:
        """One entry per validated image/mask pair, sorted by name."""
        return [dict(img_path=str(pair.image), seg_map_path=str(pair.mask), label_map=self.label_map,
                     reduce_zero_label=self.reduce_zero_label, seg_fields=[])
                for pair in self.reader.samples]


def render_synthetic_folder(root: str | os.PathLike, split: str, num_images: int, size: tuple[int, int],
                            seed: int) -> Path:
    """Render a split of the synthetic scenes as PNGs in the folder layout, once; later calls reuse the files.

    The files go to ``root/<H>x<W>-seed<seed>-<split><num_images>/`` (``images/<split>/<index>.png``,
    ``masks/<split>/<index>.png``, ``classes.txt``). They are rendered into a temporary folder that is renamed into
    place when complete, so an interrupted render leaves nothing behind and concurrent processes (one per GPU) never
    see a half-written folder.

    Args:
        root: Cache folder (created when missing; ``~`` is expanded).
        split: ``"train"`` or ``"val"``.
        num_images: Images in the split.
        size: ``(H, W)`` of every image.
        seed: Dataset seed (``SyntheticScenes``).

    Returns:
        The dataset folder, ready for ``FolderSegDataset``.
    """
    scenes = SyntheticScenes(num_images, size=tuple(size), seed=seed, split=split)  # validates the arguments
    height, width = scenes.size
    folder = Path(root).expanduser() / f"{height}x{width}-seed{scenes.seed}-{split}{num_images}"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    logger.info("rendering %d synthetic %s scenes at %dx%d into %s", num_images, split, height, width, folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (tmp / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "masks" / split).mkdir(parents=True)
        for index in range(num_images):
            sample = scenes[index]
            sample.image.save(tmp / "images" / split / f"{index:06d}.png")
            Image.fromarray(sample.semantic_mask).save(tmp / "masks" / split / f"{index:06d}.png")
        try:
            tmp.rename(folder)
        except OSError:
            if not folder.is_dir():  # not a lost race with another process: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


@DATASETS.register_module()
class SyntheticSegDataset(FolderSegDataset):
    """The embedded synthetic scenes (7 classes incl. background) as an mmseg dataset; needs no download.

    The split is rendered into ``data_root`` on first use (``render_synthetic_folder``) and read back as a
    ``FolderSegDataset``, so the standard mmseg loading transforms and metrics apply unchanged.

    Args:
        data_root: Cache folder for the rendered PNGs.
        split: ``"train"`` or ``"val"`` (disjoint seed streams).
        num_images: Images in the split.
        size: ``(H, W)`` of every image.
        seed: Dataset seed.
        **kwargs: ``BaseSegDataset`` arguments (``pipeline``, ``test_mode``, ...).
    """

    def __init__(self, data_root: str | os.PathLike = "~/.cache/densessl/synthetic_seg", split: str = "train",
                 num_images: int = 200, size: Sequence[int] = (128, 128), seed: int = 0, **kwargs: Any) -> None:
        if len(size) != 2:
            raise ValueError(f"SyntheticSegDataset size must be (H, W), got {size!r}")
        folder = render_synthetic_folder(data_root, split, num_images, (int(size[0]), int(size[1])), seed)
        kwargs.setdefault("check_values", False)  # rendered by us: values are known to be valid
        super().__init__(data_root=folder, split=split, **kwargs)
