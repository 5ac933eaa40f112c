"""Converting published self-supervised checkpoints into densessl backbones (timm state dicts).

Each method releases its weights in its own layout: a training checkpoint with wrappers (``model``, ``teacher``,
``state_dict``), DDP's ``module.`` prefix, heads (projectors, DINO heads), momentum encoders and queues next to the
backbone, sometimes module names that differ from timm's. ``convert_state_dict`` keeps the backbone, renames it to the
timm model's names, and checks it against ``timm.create_model(arch, pretrained=False, num_classes=0)``; everything it
leaves out is listed in the report's ``dropped``. This module is a leaf: it converts loaded objects and reads or
writes no file. ``densessl.weights`` owns the files: ``convert_file`` converts a checkpoint file and writes the
densessl export, and ``read_backbone_weights`` converts a raw published checkpoint wherever a weights file is
accepted (``model.weights=``, ``--weights``), with the architecture inferred from the tensor shapes
(``infer_arch``).

The layouts (``FORMATS``; ``detect_format`` tells them apart), with the official code the key names come from:

=========  ==========================================================================================================
vicregl    facebookresearch/VICRegL ``main_vicregl.py``/``utils.checkpoint``: ``{"epoch", "model", "optimizer"}``,
           ``model`` from the DDP-wrapped ``VICRegL`` module: ``module.backbone.*`` + ``module.projector.*``,
           ``module.maps_projector.*``, ``module.classifier.*``. The hub files (``resnet50_alpha0.9.pth``, ...,
           ``hubconf.py``) are the bare backbone: ``resnet.py`` uses torchvision's names (= timm's ``resnet50``);
           ``convnext.py`` uses the official ConvNeXt names (``downsample_layers``, ``stages.S.B.dwconv``,
           ``pwconv1/2``, final ``norm``) and is trained without layer scale (``--layer-scale-init-value 0``).
vicreg     facebookresearch/vicreg ``main_vicreg.py``: ``{"epoch", "model", "optimizer"}`` with
           ``module.backbone.*`` + ``module.projector.*``; the hub ``resnet50.pth`` is torchvision-named ("timm").
densecl    WXinlong/DenseCL (OpenSelfSup, ``openselfsup/models/densecl.py``): ``{"meta", "state_dict", ...}`` with
           ``backbone.*`` (= ``encoder_q.0.*``, the online ResNet), ``encoder_q.1.*`` (neck), ``encoder_k.*``
           (momentum encoder), ``queue``/``queue2`` buffers. The released backbone files are written by
           ``tools/extract_backbone_weights.py``: ``{"state_dict": <torchvision names>, "author": "DenseCL"}``.
pixpro     zdaxie/PixPro ``main_pretrain.py`` + ``publish_model.py``: ``{"model": ...}`` from the DDP-wrapped
           ``PixPro`` module: ``module.encoder.*`` (online ResNet, ``contrast/resnet.py``: torchvision names),
           ``module.encoder_k.*`` (momentum), ``module.projector(_k).*``, ``module.value_transform.*``, and with
           the instance branch ``module.projector_instance(_k).*``, ``module.predictor.*``.
dino       facebookresearch/dino ``main_dino.py``: ``{"student", "teacher", "optimizer", "epoch", "args",
           "dino_loss", ...}``; ``student`` is DDP-wrapped (``module.backbone.*``, ``module.head.*``), ``teacher``
           is not unless the backbone has BatchNorm (``backbone.*``, ``head.*``). ``vision_transformer.py`` uses
           timm's ViT names; the hub backbone files are timm-named already ("timm"). The teacher is converted.
ibot       bytedance/ibot ``main_ibot.py``: as dino, with ``ibot_loss``, an ``iBOTHead`` (``head.last_layer2``)
           and the student's ``backbone.masked_embed``; ``extract_backbone_weights.py`` writes
           ``{"state_dict": <backbone>}`` (timm names; "ibot" when it holds ``masked_embed``). Layer scale
           ``gamma_1/2`` becomes timm's ``ls1/2.gamma`` (timm's ``adapt_layer_scale``).
dinov2     facebookresearch/dinov2: hub backbones (``dinov2_vits14_pretrain.pth``, ...) use timm-like names plus
           ``mask_token``, ``register_tokens`` (``_reg4``), ``ls1/ls2.gamma``, SwiGLU ``mlp.w12/w3`` (giant) and
           ``blocks.C.I.*`` when trained with ``block_chunks``; ``train.py`` writes ``teacher_checkpoint.pth``
           ``{"teacher": backbone.*, dino_head.*, ibot_head.*}`` and FSDP checkpoints ``{"model":
           student.backbone.*, teacher.backbone.*, ...}``. timm's own converter (its ViT
           ``checkpoint_filter_fn``) renames, folds the registers and resamples ``pos_embed`` (37x37 at 518 px)
           to the arch's grid.
dinov3     facebookresearch/dinov3: the released ViT backbones (``dinov3_vits16_pretrain_lvd1689m-*.pth``, ...) hold
           ``cls_token``, ``storage_tokens`` (4 registers), ``mask_token``, ``patch_embed.proj``, the RoPE buffer
           ``rope_embed.periods``, blocks with ``attn.qkv`` (+ ``qkv.bias`` and its ``bias_mask``, which zeroes the
           key bias), ``ls1/ls2.gamma`` and an MLP (``mlp.fc1/fc2``) or SwiGLU (``mlp.w1/w2/w3``: ``vits16plus``,
           ``vith16plus``, ``vit7b16``), and a final ``norm`` (training checkpoints: ``teacher``/``student`` with
           ``backbone.*`` as DINOv2's). timm's EVA ``checkpoint_filter_fn`` renames them for its
           ``vit_*_patch16_dinov3`` models (registers -> ``reg_token``, layer scale -> ``gamma_1/2``, q/v biases
           split out for the ``_qkvb`` variants, RoPE periods recomputed by timm). The ConvNeXt backbones
           (``dinov3_convnext_{tiny,small,base,large}``) use the official ConvNeXt names with layer scale and no
           classifier, plus per-stage output norms ``norms.*`` that timm's ``convnext_*`` does not have (dropped).
convnext   facebookresearch/ConvNeXt releases ``{"model": <official names> + head.weight/bias}``.
timm       Already timm's names (timm/torchvision ResNets, the DINO/iBOT/VICReg(L) ResNet and ViT backbone files,
           densessl exports), possibly under a wrapper, ``module.`` or ``backbone.``.
=========  ==========================================================================================================

ConvNeXt and ViT keys are renamed by timm's own ``checkpoint_filter_fn`` (``timm.models.convnext`` and
``timm.models.vision_transformer``), which handle the official ConvNeXt and DINOv2 layouts. Two documented
differences remain after a conversion:

* VICRegL's ConvNeXt has no layer scale; timm's ``convnext_*`` has one, set to 1 (``filled``): the same function.
* VICRegL's ConvNeXt applies its final LayerNorm to every token and averages; timm averages, then applies the same
  norm (``head.norm``): densessl's pooled vector differs, the dense maps do not (see ``densessl.backbones``).

Not covered: detectron2 ``.pkl`` conversions (numpy arrays in a plain pickle, which densessl does not unpickle),
Swin backbones (iBOT), and architectures without a timm counterpart (VICReg ResNet-50 x2/x4/x5, ResNet-200 x2).
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "FORMATS",
    "Conversion",
    "ConversionReport",
    "convert_checkpoint",
    "convert_state_dict",
    "describe_keys",
    "detect_format",
    "infer_arch",
    "is_tensor_dict",
    "unknown_arch_message",
]

FORMATS: dict[str, str] = {
    "vicregl": "VICRegL checkpoint (facebookresearch/VICRegL)",
    "vicreg": "VICReg checkpoint (facebookresearch/vicreg)",
    "densecl": "DenseCL checkpoint (WXinlong/DenseCL, OpenSelfSup)",
    "pixpro": "PixPro checkpoint (zdaxie/PixPro)",
    "dino": "DINO checkpoint (facebookresearch/dino)",
    "ibot": "iBOT checkpoint (bytedance/ibot)",
    "dinov2": "DINOv2 checkpoint (facebookresearch/dinov2)",
    "dinov3": "DINOv3 checkpoint (facebookresearch/dinov3)",
    "convnext": "official ConvNeXt checkpoint (facebookresearch/ConvNeXt)",
    "timm": "state dict with timm key names",
}
BRANCHES = ("teacher", "student")
_TEACHER_STUDENT = ("dino", "ibot", "dinov2", "dinov3")  # formats with a teacher and a student network

# Where the backbone sits in each format's state dict (after DDP's "module." is removed), first match wins;
# "{branch}" is "teacher" or "student". No match: the whole state dict is the backbone (a backbone-only file).
_BACKBONE_PREFIXES: dict[str, tuple[str, ...]] = {
    "vicregl": ("backbone.",),
    "vicreg": ("backbone.",),
    "densecl": ("backbone.", "encoder_q.0."),
    "pixpro": ("encoder.",),
    "dino": ("backbone.",),
    "ibot": ("backbone.",),
    "dinov2": ("{branch}.backbone.", "backbone."),
    "dinov3": ("{branch}.backbone.", "backbone."),
    "convnext": (),
    "timm": ("backbone.",),
}
_WRAPPERS = ("model", "state_dict", "backbone")  # where checkpoints keep their state dict
_DDP = "module."
_MIN_FRACTION = 0.5  # below this share of the arch's tensors matched, the conversion is refused

_FAMILY_NAMES = {"resnet": "ResNet", "convnext": "ConvNeXt", "vit": "ViT"}


@dataclass
class ConversionReport:
    """What a conversion kept, renamed, left out and filled in.

    Attributes:
        source_format: The layout converted from (a key of ``FORMATS``).
        arch: The timm architecture converted to.
        loaded: How many of the arch's tensors came from the checkpoint.
        missing: Tensors of the arch the checkpoint did not provide (left at their random init).
        unexpected: Converted backbone tensors the arch has no place for.
        dropped: Keys of the checkpoint's state dict that are not part of the backbone (heads, projectors,
            momentum encoders, queues, mask tokens, classifiers), as named in the checkpoint.
        filled: Tensors of the arch set to a value that computes what the source computes (VICRegL ConvNeXt's
            absent layer scale -> 1; BatchNorm ``num_batches_tracked`` absent from old checkpoints -> 0).
        notes: Other facts worth knowing (which entry of the checkpoint was used, resampled position embeddings).
    """

    source_format: str
    arch: str
    loaded: int
    missing: list[str]
    unexpected: list[str]
    dropped: list[str]
    filled: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every tensor of the arch came from (or was filled for) the checkpoint, and nothing is left over."""
        return not self.missing and not self.unexpected

    def summary(self) -> str:
        """A few lines for people: counts, the dropped keys grouped by module, what was filled, notes."""
        source = FORMATS.get(self.source_format, self.source_format)
        lines = [(f"{source} -> {self.arch}: {self.loaded} tensors loaded, {len(self.missing)} missing, "
                  f"{len(self.unexpected)} unexpected, {len(self.dropped)} dropped, {len(self.filled)} filled")]
        if self.missing:
            lines.append(f"missing (random init): {_first(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected (not in {self.arch}): {_first(self.unexpected)}")
        if self.dropped:
            lines.append(f"dropped (not the backbone): {_grouped(self.dropped)}")
        if self.filled:
            counts = Counter(re.sub(r"\.\d+\.", ".N.", k) for k in self.filled)
            lines.append("filled: " + ", ".join(f"{pattern} ({n})" for pattern, n in counts.items()))
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _first(keys: list[str], count: int = 6) -> str:
    return ", ".join(keys[:count]) + (f", ... ({len(keys)} in all)" if len(keys) > count else "")


def _group_of(key: str) -> str:
    """``module.projector.0.weight`` -> ``module.projector.*``; ``queue`` -> ``queue``."""
    parts = key.split(".")
    depth = 2 if parts[0] in ("module", "student", "teacher") and len(parts) > 2 else 1
    return ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")


def _grouped(keys: list[str]) -> str:
    counts = Counter(_group_of(k) for k in keys)
    return ", ".join(f"{group} ({n})" for group, n in counts.items())


# --------------------------------------------------------------------------- #
# Reading the layout
# --------------------------------------------------------------------------- #


def is_tensor_dict(value: Any) -> bool:
    """A non-empty ``{str: Tensor}`` dict: a state dict."""
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items()))


def describe_keys(keys: list[str], count: int = 8) -> str:
    """``['a', 'b', ...]``: the first ``count`` keys, for error messages."""
    return "[" + ", ".join(repr(k) for k in keys[:count]) + (", ...]" if len(keys) > count else "]")


def unknown_arch_message(arch: str) -> str:
    """``unknown timm architecture 'resnt18'; did you mean: resnet18, ...?`` (close names by spelling, else prefix)."""
    import timm

    names = timm.list_models()
    close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
    if not close:
        prefix = re.split(r"[\d_]", arch, maxsplit=1)[0]
        close = [name for name in names if prefix and name.startswith(prefix)][:5]
    hint = f"did you mean: {', '.join(close)}?" if close else "see timm.list_models() for the names"
    return f"unknown timm architecture {arch!r}; {hint}"


def _entry_order(source_format: str | None, branch: str | None) -> list[str]:
    order = [branch] if branch else []
    if source_format in _TEACHER_STUDENT or source_format is None:
        order += ["teacher", "student"]
    return [*order, *_WRAPPERS, "teacher", "student"]


def _select_entry(state: Any, source_format: str | None, branch: str | None) -> tuple[dict[str, Tensor], str | None]:
    """The state dict inside a checkpoint object, and the name of the entry it came from (``None``: the object)."""
    if is_tensor_dict(state):
        return state, None
    if isinstance(state, dict):
        for name in _entry_order(source_format, branch):
            if is_tensor_dict(state.get(name)):
                return state[name], name
    raise ValueError(_no_state_dict_message(state))


def _no_state_dict_message(state: Any) -> str:
    if not isinstance(state, dict):
        return f"the checkpoint holds a {type(state).__name__}, not a state dict (parameter name -> tensor)"
    entries = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in list(state.items())[:8])
    return (f"found no state dict of tensors in the checkpoint: it is a dict of {entries}; expected parameter name "
            f"-> tensor, or one under {', '.join(repr(w) for w in ('teacher', 'student', *_WRAPPERS))}")


def _strip_ddp(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Remove DDP's ``module.`` prefix; returns the state and new name -> name in the checkpoint."""
    out: dict[str, Tensor] = {}
    original: dict[str, str] = {}
    for key, value in state.items():
        new = key.removeprefix(_DDP)
        out[new] = value
        original[new] = key
    return out, original


def _family(keys: set[str] | dict[str, Any]) -> str | None:
    """``"resnet"``, ``"convnext"`` (official names: ``"convnext_official"``) or ``"vit"`` from a backbone's keys."""
    if "downsample_layers.0.0.weight" in keys:
        return "convnext_official"
    if "stem.0.weight" in keys and any(k.startswith("stages.0.blocks.") for k in keys):
        return "convnext"
    if "patch_embed.proj.weight" in keys and any(k.startswith("blocks.") for k in keys):
        return "vit"
    if "layer1.0.conv1.weight" in keys:
        return "resnet"
    return None


def _is_dinov2_backbone(keys: set[str] | dict[str, Any]) -> bool:
    return ("mask_token" in keys or "register_tokens" in keys
            or any(re.match(r"blocks\.\d+\.(\d+\.norm1|mlp\.w12)\.", k) for k in keys))


def _is_dinov3_backbone(keys: set[str] | dict[str, Any]) -> bool:
    """DINOv3's ViT (storage tokens, RoPE periods) or ConvNeXt (official names with per-stage ``norms.*``)."""
    return ("storage_tokens" in keys or "rope_embed.periods" in keys
            or ("downsample_layers.0.0.weight" in keys and any(k.startswith("norms.") for k in keys)))


def detect_format(state: Any) -> str:
    """The layout of a loaded checkpoint: a key of ``FORMATS``, or ``"unknown"``.

    Layouts that are already timm's (torchvision/timm ResNets, DINO/iBOT ViT backbone files, the VICReg and
    VICRegL ResNet backbone files, which hold exactly torchvision's names) are ``"timm"``: their keys do not say
    which method trained them. Pass the format to ``convert_state_dict`` to have it named in the report.

    Args:
        state: What ``torch.load`` returned for the checkpoint (any object).
    """
    if not isinstance(state, dict) or not state:
        return "unknown"
    try:
        tensors, entry = _select_entry(state, None, None)
    except ValueError:
        return "unknown"
    keys, _ = _strip_ddp(tensors)
    tops = {k.split(".", 1)[0] for k in keys}
    branches = {k.split(".backbone.", 1)[1] for k in keys if k.startswith(("teacher.backbone.", "student.backbone."))}
    backbone = {k[len("backbone."):] for k in keys if k.startswith("backbone.")} or set(keys)
    if branches or tops & {"dino_head", "ibot_head"}:
        return "dinov3" if _is_dinov3_backbone(branches or backbone) else "dinov2"
    if _is_dinov3_backbone(backbone):
        return "dinov3"
    if "ibot_loss" in state or "masked_embed" in backbone or any(k.startswith("head.last_layer2") for k in keys):
        return "ibot"
    if "dino_loss" in state or entry in BRANCHES:  # teacher/student checkpoints: the DINO family
        return "dinov2" if _is_dinov2_backbone(backbone) else "dino"
    if _family(backbone) == "convnext_official" and "head.weight" not in backbone \
            and any(k.endswith(".gamma") for k in backbone):
        return "dinov3"  # layer scale without a classifier: DINOv3's ConvNeXt (facebookresearch releases have heads)
    if {"encoder", "encoder_k"} <= tops:
        return "pixpro"
    if tops & {"encoder_q", "encoder_k", "queue2"} or state.get("author") == "DenseCL":
        return "densecl"
    if "backbone" in tops and tops & {"maps_projector", "classifier"}:
        return "vicregl"
    if "backbone" in tops and "projector" in tops:
        return "vicreg"
    family = _family(backbone)
    if family == "convnext_official":
        # VICRegL trains ConvNeXt without layer scale and keeps no classifier; the official releases have both.
        official = "head.weight" in backbone or any(k.endswith(".gamma") for k in backbone)
        return "convnext" if official else "vicregl"
    if family == "vit" and _is_dinov2_backbone(backbone):
        return "dinov2"
    return "timm" if family is not None else "unknown"


@dataclass
class _Backbone:
    """The backbone part of a checkpoint, in the source's own names."""

    tensors: dict[str, Tensor]
    family: str | None
    dropped: list[str]
    notes: list[str]


def _extract(state: Any, source_format: str, branch: str | None) -> _Backbone:
    tensors, entry = _select_entry(state, source_format, branch)
    notes = []
    if entry is not None:
        others = [k for k in state if k != entry]
        notes.append(f"used the checkpoint's {entry!r} entry" + (f" (ignored: {', '.join(map(str, others))})"
                                                                 if others else ""))
    stripped, original = _strip_ddp(tensors)
    chosen = branch or ("teacher" if entry != "student" else "student")
    prefixes = [p.format(branch=chosen) for p in _BACKBONE_PREFIXES[source_format]]
    prefix = next((p for p in prefixes if any(k.startswith(p) for k in stripped)), "")
    backbone = {k[len(prefix):]: v for k, v in stripped.items() if k.startswith(prefix)}
    dropped = [original[k] for k in stripped if not k.startswith(prefix)]
    if prefix:
        notes.append(f"backbone taken from the '{prefix}*' keys")
    return _Backbone(backbone, _family(backbone), dropped, notes)


# --------------------------------------------------------------------------- #
# Inferring the architecture from tensor shapes
# --------------------------------------------------------------------------- #

_RESNETS = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34", (True, (3, 4, 6, 3)): "resnet50",
            (True, (3, 4, 23, 3)): "resnet101", (True, (3, 8, 36, 3)): "resnet152"}
_CONVNEXTS = {((2, 2, 6, 2), 40): "convnext_atto", ((2, 2, 6, 2), 48): "convnext_femto",
              ((2, 2, 6, 2), 64): "convnext_pico", ((2, 2, 8, 2), 80): "convnext_nano",
              ((3, 3, 9, 3), 96): "convnext_tiny", ((3, 3, 27, 3), 96): "convnext_small",
              ((3, 3, 27, 3), 128): "convnext_base", ((3, 3, 27, 3), 192): "convnext_large",
              ((3, 3, 27, 3), 256): "convnext_xlarge"}
_VIT_SIZES = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large", (1536, 40): "giant"}
# DINOv3 ViTs: (width, depth, SwiGLU) -> timm name stem (``vit_<stem>_patch16_dinov3``, ``_qkvb`` with q/v biases).
_DINOV3_VITS = {(384, 12, False): "small", (384, 12, True): "small_plus", (768, 12, False): "base",
                (1024, 24, False): "large", (1280, 32, True): "huge_plus", (4096, 40, True): "7b"}


def _dinov3_vit_name(backbone: dict[str, Tensor]) -> str | None:
    """``vit_small_patch16_dinov3`` etc. from a DINOv3 ViT's shapes; ``_qkvb`` when its q or v biases are not 0."""
    proj = backbone["patch_embed.proj.weight"]
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    depth = _count(backbone, r"blocks\.(\d+)\.")
    swiglu = "blocks.0.mlp.w1.weight" in backbone
    stem = _DINOV3_VITS.get((dim, depth, swiglu))
    if stem is None:
        return None
    bias = backbone.get("blocks.0.attn.qkv.bias")
    qkvb = bias is not None and bool(torch.cat([bias[:dim], bias[2 * dim:]]).abs().sum() > 0)
    return f"vit_{stem}_patch{patch}_dinov3{'_qkvb' if qkvb else ''}"


def _count(keys: Any, pattern: str) -> int:
    return len({m.group(1) for k in keys if (m := re.match(pattern, k))})


def _unchunk(key: str) -> str:
    """DINOv2's ``block_chunks`` layout ``blocks.C.I.*`` (I counts from the first block) -> ``blocks.I.*``."""
    return re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)


def _infer_from_backbone(backbone: dict[str, Tensor], family: str | None) -> str | None:
    import timm

    name = None
    if family == "resnet" and "conv1.weight" in backbone:
        bottleneck = "layer1.0.conv3.weight" in backbone
        depths = tuple(_count(backbone, rf"layer{n}\.(\d+)\.conv1\.weight") for n in range(1, 5))
        standard = backbone["conv1.weight"].shape[0] == 64 and backbone["layer1.0.conv1.weight"].shape[0] == 64
        name = _RESNETS.get((bottleneck, depths)) if standard else None
        if bottleneck and depths == (3, 4, 6, 3) and backbone["conv1.weight"].shape[0] == 64 \
                and backbone["layer1.0.conv1.weight"].shape[0] == 128:
            name = "wide_resnet50_2"
    elif family in ("convnext", "convnext_official"):
        official = family == "convnext_official"
        block = r"stages\.{}\.(\d+)\.dwconv\.weight" if official else r"stages\.{}\.blocks\.(\d+)\.conv_dw\.weight"
        depths = tuple(_count(backbone, block.format(s)) for s in range(4))
        stem = backbone["downsample_layers.0.0.weight" if official else "stem.0.weight"]
        name = _CONVNEXTS.get((depths, int(stem.shape[0])))
    elif family == "vit":
        keys = [_unchunk(k) for k in backbone]
        proj = backbone["patch_embed.proj.weight"]
        dim, patch = int(proj.shape[0]), int(proj.shape[-1])
        size = _VIT_SIZES.get((dim, _count(keys, r"blocks\.(\d+)\.")))
        if _is_dinov3_backbone(backbone):
            name = _dinov3_vit_name(backbone)
        elif size is not None and _is_dinov2_backbone(backbone):
            registers = int(backbone["register_tokens"].shape[1]) if "register_tokens" in backbone else 0
            name = f"vit_{size}_patch{patch}_{f'reg{registers}_' if registers else ''}dinov2"
        elif size is not None and "pos_embed" in backbone:
            grid = math.isqrt(int(backbone["pos_embed"].shape[1]) - 1)
            name = f"vit_{size}_patch{patch}_{grid * patch}"
    return name if name is not None and timm.is_model(name) else None


def infer_arch(state: Any, source_format: str | None = None, branch: str | None = None) -> str | None:
    """The timm architecture a checkpoint's backbone fits, from its tensor shapes; ``None`` when unsure.

    Knows the standard ResNets (18-152, wide_resnet50_2), ConvNeXts (atto-xlarge) and ViTs (tiny/small/base/large/
    giant; ``*_dinov2`` and ``*_reg4_dinov2`` for DINOv2, ``vit_*_patch16_dinov3[_qkvb]`` for DINOv3, otherwise the
    patch size and the grid of ``pos_embed``).
    """
    source_format = source_format or detect_format(state)
    if source_format not in FORMATS:
        return None
    try:
        backbone = _extract(state, source_format, branch)
    except ValueError:
        return None
    return _infer_from_backbone(backbone.tensors, backbone.family)


# --------------------------------------------------------------------------- #
# Renaming to timm
# --------------------------------------------------------------------------- #


def _model_family(model: nn.Module) -> str | None:
    if hasattr(model, "patch_embed") and hasattr(model, "blocks"):
        return "vit"
    if type(model).__name__ == "ConvNeXt" and hasattr(model, "stem"):
        return "convnext"
    if hasattr(model, "conv1") and hasattr(model, "layer1"):
        return "resnet"
    return None


@dataclass
class _Renamed:
    state: dict[str, Tensor]
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _split_off(state: dict[str, Tensor], prefixes: tuple[str, ...]) -> tuple[dict[str, Tensor], list[str]]:
    kept = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    return kept, [k for k in state if k.startswith(prefixes)]


def _rename_resnet(backbone: dict[str, Tensor]) -> _Renamed:
    # torchvision's ResNet names are timm's (VICReg(L) resnet.py, PixPro contrast/resnet.py, OpenSelfSup's ResNet).
    kept, dropped = _split_off(backbone, ("fc.",))
    return _Renamed(kept, dropped)


def _rename_convnext(backbone: dict[str, Tensor], official: bool, model: nn.Module) -> _Renamed:
    from timm.models.convnext import checkpoint_filter_fn

    if not official:
        kept, dropped = _split_off(backbone, ("head.fc.",))
        return _Renamed(kept, dropped)
    # The official classifier (head.weight, head.bias); DINOv3's per-stage output norms (norms.S.*).
    kept, dropped = _split_off(backbone, ("head.", "norms."))
    try:
        state = checkpoint_filter_fn(dict(kept), model)
    except (KeyError, RuntimeError) as error:  # a 2-D tensor with no counterpart in the model, or a bad reshape
        raise _NoFit(f"timm's ConvNeXt converter failed on it ({type(error).__name__}: {error})") from None
    return _Renamed(state, dropped)


def _rename_vit(backbone: dict[str, Tensor], model: nn.Module) -> _Renamed:
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = {_unchunk(k): v for k, v in backbone.items()}
    notes = ["DINOv2 block chunks 'blocks.C.I.*' renamed to 'blocks.I.*'"] if list(state) != list(backbone) else []
    dropped = [k for k in ("mask_token", "masked_embed") if k in state]  # masked-image-modeling inputs
    state.pop("masked_embed", None)  # timm's filter drops mask_token itself (and keys DINOv2 handling on it)
    if "head.weight" in state:
        state, classifier = _split_off(state, ("head.",))
        dropped += classifier
    proj = state.get("patch_embed.proj.weight")
    want = tuple(model.patch_embed.proj.weight.shape[-2:])
    if proj is not None and proj.dim() == 4 and tuple(proj.shape[-2:]) != want:
        raise _NoFit(f"its patch size is {tuple(proj.shape[-2:])}, the arch's is {want}")
    pos = state.get("pos_embed")
    converted = checkpoint_filter_fn(dict(state), model, adapt_layer_scale=True)
    new_pos = converted.get("pos_embed")
    if pos is not None and new_pos is not None and new_pos.shape != pos.shape and "register_tokens" not in state:
        notes.append(f"pos_embed resampled from {tuple(pos.shape)} to {tuple(new_pos.shape)} (bicubic, timm's "
                     "resample_abs_pos_embed) to fit the arch's patch grid")
    if "register_tokens" in state:
        notes.append("DINOv2 register tokens -> reg_token; the class token's position embedding folded into "
                     "cls_token (timm's no_embed_class layout)")
    return _Renamed(converted, dropped, notes)


# DINOv3 ViT tensors timm's models do not hold: the masking input, the RoPE buffer (timm computes its own), the
# key-bias mask, the local-crop class-token norm of the 7B's training.
_DINOV3_UNUSED = ("mask_token", ".periods", ".bias_mask", "local_cls_norm.")


def _rename_dinov3_vit(backbone: dict[str, Tensor], model: nn.Module) -> _Renamed:
    from timm.models.eva import checkpoint_filter_fn

    dropped = [k for k in backbone if k.startswith(_DINOV3_UNUSED) or k.endswith(_DINOV3_UNUSED)]
    notes = ["DINOv3 storage tokens -> reg_token, ls1/ls2.gamma -> gamma_1/2 (timm's EVA converter); RoPE periods "
             "recomputed by timm in float32 (the release stores them in bfloat16: timm's model card notes small "
             "numerical differences)"]
    has_q_bias = any(name.endswith("attn.q_bias") for name, _ in model.named_parameters())
    biases = [k for k in backbone if k.endswith("attn.qkv.bias")]
    if biases and not has_q_bias:
        if any(bool(backbone[k].abs().sum() > 0) for k in biases):
            raise _NoFit("its q/v biases are not zero but the arch has none; use the arch's _qkvb variant")
        dropped += biases
        notes.append("the all-zero qkv biases dropped (the arch has qkv_bias=False)")
    elif biases:
        notes.append("qkv.bias split into q_bias and v_bias (the key bias is fixed at 0 by its bias_mask)")
    proj = backbone.get("patch_embed.proj.weight")
    want = tuple(model.patch_embed.proj.weight.shape[-2:])
    if proj is not None and tuple(proj.shape[-2:]) != want:
        raise _NoFit(f"its patch size is {tuple(proj.shape[-2:])}, the arch's is {want}")
    source = {k: v for k, v in backbone.items() if not (k in biases and not has_q_bias)}
    converted = checkpoint_filter_fn(source, model)
    return _Renamed(converted, dropped, notes)


class _NoFit(Exception):
    """The checkpoint's backbone does not fit the arch (turned into a ValueError with the context)."""


def _fill_values(model_state: dict[str, Tensor], converted: dict[str, Tensor],
                 family: str | None) -> dict[str, Tensor]:
    """Tensors of the arch that the source does not have but whose value is known (see ``ConversionReport.filled``)."""
    filled: dict[str, Tensor] = {}
    no_layer_scale = family == "convnext_official" and not any(k.endswith(".gamma") for k in converted)
    for key, value in model_state.items():
        if key in converted:
            continue
        if key.endswith(".num_batches_tracked"):
            filled[key] = torch.zeros_like(value)
        elif (no_layer_scale and re.fullmatch(r"stages\.\d+\.blocks\.\d+\.gamma", key)
              and key.replace(".gamma", ".conv_dw.weight") in converted):
            filled[key] = torch.ones_like(value)
    return filled


def _build_model(arch: str | nn.Module) -> tuple[nn.Module, str]:
    if isinstance(arch, nn.Module):
        cfg = getattr(arch, "pretrained_cfg", None)
        name = cfg.get("architecture") if isinstance(cfg, dict) else None
        return arch, name if isinstance(name, str) else type(arch).__name__
    import timm

    if not isinstance(arch, str) or not arch:
        raise ValueError(f"arch must be a timm model name (e.g. resnet50), got {arch!r}")
    if not timm.is_model(arch):
        raise ValueError(unknown_arch_message(arch))
    return timm.create_model(arch, pretrained=False, num_classes=0), arch


@dataclass
class Conversion:
    """A converted checkpoint.

    Attributes:
        model: The timm model with the converted tensors loaded (``strict=False``: see ``report.missing``).
        state: The converted tensors in timm's names.
        report: What was loaded, missing, unexpected, dropped and filled.
    """

    model: nn.Module
    state: dict[str, Tensor]
    report: ConversionReport


def convert_checkpoint(state: Any, arch: str | nn.Module, source_format: str | None = None,
                       branch: str | None = None) -> Conversion:
    """Convert a loaded checkpoint into a timm model of ``arch``: ``convert_state_dict`` with the built model.

    Raises:
        ValueError: As ``convert_state_dict``.
    """
    detected = detect_format(state)
    if source_format is None:
        source_format = detected
    if source_format not in FORMATS:
        if source_format == "unknown":
            keys = _keys_of(state)
            raise ValueError("unknown checkpoint layout: not one of " + ", ".join(FORMATS)
                             + f" (keys {describe_keys(keys)}); pass the format if you know it, or convert the "
                             "state dict to timm's names yourself")
        raise ValueError(f"unknown source format {source_format!r}; choose one of {', '.join(FORMATS)}")
    if branch is not None and branch not in BRANCHES:
        raise ValueError(f"branch must be 'teacher' or 'student', got {branch!r}")
    model, arch_name = _build_model(arch)
    where = f"{FORMATS[source_format]} (detected: {detected})" if detected != source_format else \
        FORMATS[source_format]
    backbone = _extract(state, source_format, branch)
    first = describe_keys(list(backbone.tensors) or _keys_of(state))
    if not backbone.tensors:
        raise ValueError(f"{where}: no backbone tensors found (keys {describe_keys(_keys_of(state))})")
    family = backbone.family
    want = _model_family(model)
    if family is None:
        raise ValueError(f"{where}: the backbone keys are not a ResNet, ConvNeXt or ViT in any layout densessl "
                         f"knows (first keys {first}); check the format (detect_format says {detected!r})")
    have = "convnext" if family == "convnext_official" else family
    guess = _infer_from_backbone(backbone.tensors, family)
    hint = f" (the checkpoint fits {guess})" if guess else ""
    if want is not None and want != have:
        raise ValueError(f"{where} holds a {_FAMILY_NAMES[have]} backbone but {arch_name} is a "
                         f"{_FAMILY_NAMES[want]}; pass a {_FAMILY_NAMES[have]} arch{hint}")
    model_state = model.state_dict()
    try:
        if have == "resnet":
            renamed = _rename_resnet(backbone.tensors)
        elif have == "convnext":
            renamed = _rename_convnext(backbone.tensors, family == "convnext_official", model)
        elif _is_dinov3_backbone(backbone.tensors):
            renamed = _rename_dinov3_vit(backbone.tensors, model)
        else:
            renamed = _rename_vit(backbone.tensors, model)
    except _NoFit as error:
        raise ValueError(f"{where} does not fit {arch_name}: {error}{hint}") from None
    converted = renamed.state
    mismatched = [f"{k}: checkpoint {tuple(converted[k].shape)} vs {arch_name} {tuple(model_state[k].shape)}"
                  for k in converted if k in model_state and converted[k].shape != model_state[k].shape]
    loaded = [k for k in converted if k in model_state]
    if mismatched:
        raise ValueError(f"{where} does not fit {arch_name}{hint}: {len(mismatched)} tensors have other shapes "
                         f"({'; '.join(mismatched[:4])})")
    if len(loaded) < _MIN_FRACTION * len(model_state):
        absent = describe_keys([k for k in model_state if k not in converted])
        extra = describe_keys([k for k in converted if k not in model_state])
        raise ValueError(f"{where} does not fit {arch_name}{hint}: only {len(loaded)} of its {len(model_state)} "
                         f"tensors matched; the checkpoint lacks {absent} and has {extra} that {arch_name} lacks")
    filled = _fill_values(model_state, converted, family)
    result = {k: converted[k] for k in loaded} | filled
    model.load_state_dict(result, strict=False)
    notes = backbone.notes + renamed.notes
    if family == "convnext_official" and any(k.endswith(".gamma") for k in filled):
        notes.append("the source ConvNeXt has no layer scale (VICRegL trains with layer_scale_init_value=0): "
                     "timm's gammas set to 1, which computes the same function")
    if family == "convnext_official" and "head.norm.weight" in loaded:
        notes.append("the official final 'norm' is timm's 'head.norm': timm applies it after pooling, the official "
                     "ConvNeXt before (same weights; see densessl.backbones)")
    report = ConversionReport(
        source_format=source_format,
        arch=arch_name,
        loaded=len(loaded),
        missing=[k for k in model_state if k not in result],
        unexpected=[k for k in converted if k not in model_state],
        dropped=backbone.dropped + renamed.dropped,
        filled=list(filled),
        notes=notes,
    )
    return Conversion(model, result, report)


def _keys_of(state: Any) -> list[str]:
    if isinstance(state, dict):
        try:
            tensors, _ = _select_entry(state, None, None)
            return list(tensors)
        except ValueError:
            return [str(k) for k in state]
    return []


def convert_state_dict(state: Any, arch: str | nn.Module, source_format: str | None = None, *,
                       branch: str | None = None) -> tuple[dict[str, Tensor], ConversionReport]:
    """Convert a published checkpoint's backbone into the state dict of a timm model.

    Args:
        state: The loaded checkpoint (``torch.load``'s result): a state dict, or a checkpoint dict holding one.
        arch: The timm architecture (``timm.create_model(arch, pretrained=False, num_classes=0)`` is built to check
            the result), or such a model itself.
        source_format: The layout (a key of ``FORMATS``); ``None`` detects it (``detect_format``).
        branch: For teacher/student checkpoints (DINO, iBOT, DINOv2): ``"teacher"`` (default) or ``"student"``.

    Returns:
        The converted tensors (timm names; the arch's tensors that the checkpoint provided or that were filled) and
        the report. Load with ``model.load_state_dict(state, strict=not report.missing)``.

    Raises:
        ValueError: Unknown layout or format, a backbone of another family than the arch, tensors of other shapes,
            or less than half of the arch's tensors matched (the message names the detected format, the keys, and
            the architecture the checkpoint fits when it can tell).
    """
    conversion = convert_checkpoint(state, arch, source_format, branch)
    return conversion.state, conversion.report
