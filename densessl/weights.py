"""Backbone weight files: the export written at the end of pretraining, and reading every weights file densessl takes.

``save_backbone`` writes one copy of the weights into an export folder (``RUN/export/`` for a pretraining run), each
file atomically (``densessl.atomic``: temporary file in the same folder, then ``os.replace``)::

    model.safetensors  the backbone's timm state dict (``num_classes=0``); string metadata "arch", "format"
                       ("densessl-backbone"), "format_version", "densessl_version" and "config" (the training config
                       as JSON text)
    config.json        timm's model config (``architecture``, ``num_classes`` 0, ``model_args``, ``pretrained_cfg``
                       with the input size and normalization), plus a ``densessl`` entry (format, version)

so the folder is what timm reads itself::

    model = timm.create_model("local-dir:RUN/export", pretrained=True)   # strict load, no densessl import needed

``read_backbone_weights`` recognizes a file by its first bytes (not its name) and always reads on the CPU without
unpickling Python objects (safetensors, or ``torch.load(weights_only=True)``). It accepts:

* folders: an export folder (``model.safetensors``), a run folder (``export/model.safetensors``; run folders of the
  older layout: ``backbone.safetensors``, else ``backbone.pt``), or a timm/Hugging Face model folder;
* ``.safetensors`` files (architecture from densessl's metadata, else from a timm ``config.json`` beside the file);
* torch files (``.pt``/``.pth``/``.bin``) holding a timm state dict (architecture from a ``backbone.json`` in the same
  folder that lists the file, as the older export layout wrote, or from a timm ``config.json`` beside it);
* densessl training checkpoints (``runs/<run>/checkpoints/last.pt``, ``epoch_*.pt``): the student backbone's
  weights (keys ``backbone.model.*`` of the checkpoint's ``"model"``), architecture and config from the checkpoint;
* wrapper dicts ``{"state_dict": ...}``, ``{"model": ...}``, ``{"backbone": ...}``, with DDP's ``module.`` prefix
  removed;
* checkpoints published by VICRegL, VICReg, DenseCL, PixPro, DINO, iBOT, DINOv2, DINOv3 and ConvNeXt in their own
  layouts (``densessl.convert``): the backbone is converted to timm's names, the architecture inferred from its
  shapes.

Anything else fails with one ``ValueError`` naming the file and the cause (``FileNotFoundError`` for a missing file).
``load_backbone_weights`` loads a file into a timm model, strictly, skipping only classifier-head keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from densessl.atomic import atomic_write, atomic_write_json
from densessl.convert import (
    FORMATS,
    ConversionReport,
    convert_checkpoint,
    describe_keys,
    detect_format,
    infer_arch,
    is_tensor_dict,
)
from densessl.safe_load import allow_checkpoint_args, file_kind, load_plain, read_safetensors

__all__ = [
    "FORMAT",
    "BackboneWeights",
    "ExportedWeights",
    "convert_file",
    "export_folder",
    "load_backbone_weights",
    "read_backbone_weights",
    "resolve_arch",
    "run_label",
    "save_backbone",
    "weights_file",
]

logger = logging.getLogger("densessl")

FORMAT = "densessl-backbone"
FORMAT_VERSION = "1"
EXPORT_DIR = "export"  # a pretraining run's export folder, RUN/export
MODEL_NAME = "model.safetensors"  # the weights in an export folder (the name timm's local-dir loader looks for)
TIMM_CONFIG_NAME = "config.json"  # timm's model config in an export folder
# The older export layout: RUN/backbone.safetensors, RUN/backbone.pt and RUN/backbone.json (read, never written).
LEGACY_SAFETENSORS_NAME = "backbone.safetensors"
LEGACY_TORCH_NAME = "backbone.pt"
LEGACY_JSON_NAME = "backbone.json"

# The weights files of a timm model folder, which its config.json describes (timm's local-dir loader reads these).
_TIMM_FOLDER_WEIGHTS = (MODEL_NAME, "pytorch_model.bin", "pytorch_model.pth", "model.pth")

_CHECKPOINT_PREFIX = "backbone.model."  # Pretrainer.backbone (DenseBackbone) .model (the timm model)
_WRAPPER_KEYS = ("state_dict", "model", "backbone")


@dataclass(frozen=True)
class ExportedWeights:
    """The files ``save_backbone`` wrote.

    Attributes:
        folder: The export folder (``timm.create_model(f"local-dir:{folder}", pretrained=True)`` loads it).
        safetensors: ``<folder>/model.safetensors`` (tensors + metadata; the file to hand to other tools).
        config: ``<folder>/config.json`` (timm's model config).
    """

    folder: Path
    safetensors: Path
    config: Path


@dataclass
class BackboneWeights:
    """A backbone's weights as read from a file.

    Attributes:
        state_dict: The timm model's state dict (``timm.create_model(arch, num_classes=0)`` key names), on the CPU.
        arch: The timm architecture the file states, or ``None`` when it states none.
        config: The training config stored with the weights (plain types), or ``None``.
        source: What the file was, e.g. ``"densessl backbone export"``, ``"timm state dict"``,
            ``"densessl training checkpoint (iteration 500)"``.
        path: The file read.
        arch_origin: Where ``arch`` came from, e.g. ``"model.safetensors metadata"``, ``"config.json"``,
            ``"checkpoint config"``; ``None`` when ``arch`` is ``None``.
    """

    state_dict: dict[str, Tensor]
    arch: str | None
    config: dict[str, Any] | None
    source: str
    path: Path | None = None
    arch_origin: str | None = None

    def describe_arch(self) -> str:
        """``"'resnet50' (from model.safetensors metadata)"``, or ``"no architecture"``."""
        if self.arch is None:
            return "no architecture"
        return f"{self.arch!r} (from {self.arch_origin})" if self.arch_origin else repr(self.arch)


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def _standalone_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors that share no memory (safetensors refuses shared storage).

    A tensor is cloned when its storage was already used by an earlier key (tied weights) or when it covers only
    part of its storage (a view: ``torch.save`` would write the whole storage).
    """
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        partial = tensor.data_ptr() != pointer or tensor.numel() * tensor.element_size() != storage.nbytes()
        if pointer != 0 and (pointer in seen or partial):
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        else:
            seen.add(pointer)
        out[key] = tensor
    return out


def _timm_model(backbone_model: nn.Module) -> nn.Module:
    """The timm model inside a dense backbone (a module with the timm model as ``.model`` and its name as ``.arch``,
    as ``densessl.backbones.DenseBackbone`` has), or ``backbone_model`` itself."""
    inner = getattr(backbone_model, "model", None)
    is_wrapper = isinstance(inner, nn.Module) and isinstance(getattr(backbone_model, "arch", None), str)
    return inner if is_wrapper else backbone_model


def _timm_config(model: nn.Module, arch: str) -> dict[str, Any]:
    """timm's model config for ``model`` (``timm.models._hub.save_config_for_hf``, timm's own writer, so the folder
    parses with the installed timm's ``local-dir:`` loader), with the pretrained-weights provenance of timm's default
    tag (its tag, licence, paper and URL describe timm's ImageNet weights, not these) removed and a ``densessl``
    entry added."""
    import tempfile

    from timm.models._hub import save_config_for_hf

    from densessl import __version__

    densessl = {"format": FORMAT, "format_version": int(FORMAT_VERSION), "densessl_version": __version__,
                "weights": MODEL_NAME}
    if not isinstance(getattr(model, "pretrained_cfg", None), dict):  # not a timm model: the architecture alone
        return {"architecture": _base_name(arch), "num_classes": 0, "pretrained_cfg": {}, "densessl": densessl}
    model_args = {"dynamic_img_size": True} if getattr(model, "dynamic_img_size", False) else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / TIMM_CONFIG_NAME
        save_config_for_hf(model, path, model_args=model_args)  # a Path: timm 1.0.20 calls path.open()
        config = json.loads(path.read_text(encoding="utf-8"))
    pretrained = config.get("pretrained_cfg", {})
    for key in ("tag", "license", "origin_url", "paper_ids", "paper_name", "notes", "hf_hub_id", "url", "file"):
        pretrained.pop(key, None)
    config["densessl"] = densessl
    return config


def save_backbone(backbone_model: nn.Module, folder: str | os.PathLike, arch: str,
                  config: dict[str, Any] | None = None) -> ExportedWeights:
    """Write ``model.safetensors`` and timm's ``config.json`` into the export folder ``folder``, each atomically.

    Args:
        backbone_model: The timm model (a ``DenseBackbone`` is unwrapped to its ``.model``); its ``state_dict()``
            is saved with timm key names. It must be built with ``num_classes=0`` for timm to load the folder
            strictly (``DenseBackbone`` builds it so).
        folder: The export folder (created if needed; ``RUN/export`` for a pretraining run). Existing export files
            are replaced.
        arch: The timm architecture name, stored so that tools need no ``--arch``.
        config: The training config as plain types (``densessl.config_io.to_dict``), stored as JSON in the
            safetensors metadata; values JSON cannot hold are written as their ``str()``.

    Returns:
        The paths written.

    Raises:
        ValueError: ``arch`` is empty.
        densessl.atomic.DiskFullError: No space left (files already there are intact).
    """
    from safetensors.torch import save as safetensors_bytes

    from densessl import __version__

    if not isinstance(arch, str) or not arch:
        raise ValueError(f"save_backbone needs the timm architecture name, got {arch!r}")
    model = _timm_model(backbone_model)
    state = _standalone_tensors(model.state_dict())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch, "densessl_version": __version__,
                "config": json.dumps(config, default=str)}
    exported = ExportedWeights(folder, folder / MODEL_NAME, folder / TIMM_CONFIG_NAME)
    atomic_write(exported.safetensors, lambda handle: handle.write(safetensors_bytes(state, metadata=metadata)))
    atomic_write_json(exported.config, _timm_config(model, arch))
    return exported


def export_folder(run_dir: str | os.PathLike) -> Path:
    """A pretraining run's export folder, ``RUN/export``."""
    return Path(run_dir) / EXPORT_DIR


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #


def _read_safetensors(path: Path) -> BackboneWeights:
    state, metadata = read_safetensors(path, "weights file", "export or copy it again")
    arch = metadata.get("arch") or None
    config = None
    if metadata.get("config"):
        try:
            config = json.loads(metadata["config"])
        except json.JSONDecodeError:
            logger.warning("%s: the 'config' metadata is not valid JSON; ignoring it", path)
    if not isinstance(config, dict):
        config = None
    densessl = metadata.get("format") == FORMAT
    origin = f"{path.name} metadata" if arch else None
    if arch is None:
        arch, _, origin = _sidecar_arch(path)
    return BackboneWeights(state, arch, config, "densessl backbone export" if densessl else "safetensors state dict",
                           path, origin)


def _sidecar_arch(path: Path) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """Architecture, config and the file they came from, from a file beside ``path``: ``backbone.json`` when it
    lists ``path``'s name (the older export layout), else a timm ``config.json`` when ``path`` has one of the names
    timm gives the weights of a model folder (an export, a timm/Hugging Face model folder); ``(None, None, None)``
    when neither states one."""
    sidecar = path.parent / LEGACY_JSON_NAME
    data = _read_json(sidecar) if sidecar.is_file() else None
    if isinstance(data, dict) and path.name in (data.get("files") or []):
        arch = data.get("arch") if isinstance(data.get("arch"), str) and data.get("arch") else None
        config = data.get("config") if isinstance(data.get("config"), dict) else None
        if arch:
            return arch, config, LEGACY_JSON_NAME
    timm_config = path.parent / TIMM_CONFIG_NAME
    data = _read_json(timm_config) if path.name in _TIMM_FOLDER_WEIGHTS and timm_config.is_file() else None
    if isinstance(data, dict) and isinstance(data.get("architecture"), str) and data["architecture"]:
        return data["architecture"], None, TIMM_CONFIG_NAME
    return None, None, None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("ignoring %s: %s", path, error)
        return None


def _is_training_checkpoint(loaded: Any) -> bool:
    """A densessl training checkpoint: ``{"iteration": N, "model": Pretrainer state dict, ...}``.

    Both layouts are recognized: ``{"format": "densessl-checkpoint-v2", "recipe": ..., ...}`` (``densessl.train
    .engine``) and the earlier ``{"densessl_version": 1, ...}``.
    """
    if not (isinstance(loaded, dict) and "iteration" in loaded and isinstance(loaded.get("model"), dict)):
        return False
    fmt = loaded.get("format")
    return (isinstance(fmt, str) and fmt.startswith("densessl-checkpoint")) or "densessl_version" in loaded or any(
        isinstance(k, str) and k.startswith(_CHECKPOINT_PREFIX) for k in loaded["model"])


def _from_checkpoint(path: Path, state: dict[str, Any]) -> BackboneWeights:
    """The student backbone of a densessl training checkpoint (``densessl.train.pretrain``)."""
    model_state = state["model"]
    backbone = {k[len(_CHECKPOINT_PREFIX):]: v for k, v in model_state.items()
                if isinstance(k, str) and k.startswith(_CHECKPOINT_PREFIX)}
    if not backbone:
        recipe = f" of recipe {state['recipe']!r}" if isinstance(state.get("recipe"), str) else ""
        raise ValueError(f"weights file {str(path)!r} is a densessl training checkpoint{recipe} without pretraining "
                         f"backbone weights (no '{_CHECKPOINT_PREFIX}*' keys in its 'model' entry); pass the "
                         "export folder of a pretraining run (RUN/export) instead")
    config = state.get("config") if isinstance(state.get("config"), dict) else None
    arch, origin = state.get("arch"), "checkpoint"
    if not (isinstance(arch, str) and arch):
        model_cfg = (config or {}).get("model")
        arch = model_cfg.get("arch") if isinstance(model_cfg, dict) else None
        arch, origin = (arch, "checkpoint config") if isinstance(arch, str) and arch else (None, None)
    iteration = state.get("iteration")
    return BackboneWeights(backbone, arch, config, f"densessl training checkpoint (iteration {iteration})", path,
                           origin)


def _unwrap_state_dict(path: Path, loaded: Any) -> tuple[dict[str, Tensor], str]:
    """The tensor dict inside a torch file's object, and a description of the wrapping."""
    if not isinstance(loaded, dict):
        raise ValueError(f"weights file {str(path)!r} holds a {type(loaded).__name__}, not a state dict "
                         "(a dict of parameter name -> tensor)")
    if not loaded:
        raise ValueError(f"weights file {str(path)!r} holds an empty dict: there are no weights in it")
    state, source = loaded, "timm state dict"
    for key in _WRAPPER_KEYS:
        if not is_tensor_dict(state) and isinstance(state.get(key), dict):
            state, source = state[key], f"state dict under {key!r}"
    if not state:
        raise ValueError(f"weights file {str(path)!r} holds an empty state dict: there are no weights in it")
    if not is_tensor_dict(state):
        others = sorted({type(v).__name__ for v in state.values() if not isinstance(v, Tensor)})
        raise ValueError(f"weights file {str(path)!r} is not a state dict of tensors: it holds "
                         f"{', '.join(others)} values (keys {describe_keys(list(state))}); expected parameter name -> "
                         "tensor, or a dict with one under 'state_dict', 'model' or 'backbone'")
    keys = [k for k in state if isinstance(k, str)]
    if len(keys) == len(state) and all(k.startswith("module.") for k in keys):  # saved from a DDP-wrapped model
        state = {k[len("module."):]: v for k, v in state.items()}
        source += " (DDP 'module.' prefix removed)"
    return state, source


# In a folder given as weights, in this order: an export folder, a run folder, a run folder of the older layout.
_FOLDER_WEIGHTS = (MODEL_NAME, f"{EXPORT_DIR}/{MODEL_NAME}", LEGACY_SAFETENSORS_NAME, LEGACY_TORCH_NAME)


def weights_file(path: str | os.PathLike) -> Path:
    """The weights file a path names: ``path`` itself, or for a folder the first of ``model.safetensors`` (an export
    or timm model folder), ``export/model.safetensors`` (a run folder), ``backbone.safetensors`` and ``backbone.pt``
    (a run folder of the older layout) that it holds.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: A folder that holds none of those files (the message lists what was looked for).
    """
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"backbone weights file not found: {str(path)!r}")
        return path
    found = next((path / name for name in _FOLDER_WEIGHTS if (path / name).is_file()), None)
    if found is None:
        raise ValueError(f"weights folder {str(path)!r} holds no weights file (looked for {', '.join(_FOLDER_WEIGHTS)}"
                         "); pass a run folder, its export folder or a weights file")
    return found


def run_label(weights: str | os.PathLike) -> str:
    """A short name for the weights a path names, for tables: the run folder's name for a run folder or a file inside
    it (``runs/x``, ``runs/x/export``, ``runs/x/export/model.safetensors``, ``runs/x/checkpoints/last.pt``,
    ``runs/x/backbone.pt``), else the file's stem (``model.pth`` -> ``model``); ``random`` stays ``random``. Nothing
    is read from disk."""
    path = Path(weights)
    if path.parent.name in (EXPORT_DIR, "checkpoints"):
        return path.parent.parent.name
    if path.name in (EXPORT_DIR, LEGACY_SAFETENSORS_NAME, LEGACY_TORCH_NAME):
        return path.parent.name
    return path.stem if path.suffix else path.name


def read_backbone_weights(path: str | os.PathLike) -> BackboneWeights:
    """Read a backbone's timm state dict, and the architecture/config the file states, from any accepted file.

    See the module docstring for the accepted files. Nothing is unpickled beyond tensors and plain types.

    Args:
        path: A ``.safetensors`` file, a torch file holding a (wrapped) state dict, a densessl training checkpoint,
            or a folder holding one (``weights_file``: a run or export folder).

    Returns:
        The weights, with ``arch``/``config`` as stated by the file (``None`` when it states none).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: A folder without weights, a file that is empty, is neither a torch nor a safetensors file, is
            damaged or truncated, holds Python objects other than tensors, or holds no tensors (the message names the
            file and the cause).
    """
    path = weights_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {str(path)!r}")
    if file_kind(path, "weights file", "export or copy it again", noun="weights file") == "safetensors":
        return _read_safetensors(path)
    with allow_checkpoint_args():  # DINO/iBOT checkpoints store their argparse.Namespace
        loaded = load_plain(path, "weights file", "export or copy it again")
    if _is_training_checkpoint(loaded):
        return _from_checkpoint(path, loaded)
    published = _read_published(path, loaded)  # None unless a published (non-timm) layout
    if published is not None:
        return published
    state, source = _unwrap_state_dict(path, loaded)
    arch, config, origin = _sidecar_arch(path)
    if arch is None and isinstance(loaded, dict) and isinstance(loaded.get("arch"), str) and loaded["arch"]:
        arch, origin = loaded["arch"], "the file's 'arch' entry"
    if arch is not None and source == "timm state dict" and origin == LEGACY_JSON_NAME:
        source = "densessl backbone export"
    return BackboneWeights(state, arch, config, source, path, origin)


# --------------------------------------------------------------------------- #
# Loading into a model, choosing the architecture
# --------------------------------------------------------------------------- #


def _base_name(arch: str) -> str:
    """``resnet50.a1_in1k`` -> ``resnet50`` (a pretrained tag does not change the architecture)."""
    return arch.split(".", 1)[0]


def resolve_arch(arch: str | None, weights: BackboneWeights | None, option: str = "--arch") -> str:
    """The architecture to build: the one given, else the one the weights file states.

    Args:
        arch: The architecture the user gave, or ``None``.
        weights: The weights read with ``read_backbone_weights``, or ``None`` for a random init.
        option: How the user gives an architecture, for the messages.

    Returns:
        The timm architecture name.

    Raises:
        ValueError: Neither gives an architecture, or both do and they differ.
    """
    if weights is None:
        if not arch:
            raise ValueError(f"random weights need an architecture: pass {option} (a timm model name, e.g. resnet18)")
        return arch
    where = str(weights.path) if weights.path is not None else "the weights file"
    if not arch:
        if weights.arch is None:
            raise ValueError(f"weights file {where!r} ({weights.source}) states no architecture; pass {option} "
                             "(the timm model name it was trained with, e.g. resnet50)")
        return weights.arch
    if weights.arch is not None and _base_name(weights.arch) != _base_name(arch):
        raise ValueError(f"{option} {arch} does not match weights file {where!r}: the weights are for "
                         f"{weights.describe_arch()}; drop {option} to use the file's architecture")
    return arch


def _model_arch(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    return arch if isinstance(arch, str) else None


def load_backbone_weights(model: nn.Module, weights: str | os.PathLike | BackboneWeights) -> BackboneWeights:
    """Load a weights file into a timm model, strictly, skipping only classifier-head keys.

    Any file ``read_backbone_weights`` accepts works. Keys of the model's classifier (``pretrained_cfg
    ["classifier"]``, e.g. ``fc`` or ``head``) that the model lacks are skipped, so files saved from a model with a
    classifier load into ``num_classes=0`` backbones.

    Args:
        model: A timm model (e.g. ``DenseBackbone.model``).
        weights: A weights file, or weights already read with ``read_backbone_weights``.

    Returns:
        The weights read (with the architecture and config the file states).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file cannot be read, or its keys/shapes do not fit the model (the message lists them and,
            when the file states another architecture, names both).
    """
    read = weights if isinstance(weights, BackboneWeights) else read_backbone_weights(weights)
    where = str(read.path) if read.path is not None else "<in memory>"
    model_arch = _model_arch(model)
    own = model.state_dict()
    # Files saved from a model with a classifier carry its weights; our backbones are built with num_classes=0.
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or "fc"
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {k: v for k, v in read.state_dict.items()
             if k in own or not k.startswith(tuple(f"{c}." for c in classifiers))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    differs = read.arch is not None and model_arch is not None and _base_name(read.arch) != _base_name(model_arch)
    if missing or unexpected or mismatched:
        arch_note = (f"weights are for {read.describe_arch()} but the model is {model_arch!r}; "
                     if differs else "")
        raise ValueError(
            f"weights file {where!r} ({read.source}) does not fit {model_arch or type(model).__name__}: {arch_note}"
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:5]}. Check --arch matches the weights (or drop it when "
            "the file states its architecture)."
        )
    if differs:
        logger.warning("%s: weights are for %s but the model is %r; their keys and shapes fit, loading anyway",
                       where, read.describe_arch(), model_arch)
    model.load_state_dict(state, strict=True)
    return read


# --------------------------------------------------------------------------- #
# Published checkpoints (the conversion itself: densessl.convert)
# --------------------------------------------------------------------------- #


def _load_checkpoint(path: Path) -> Any:
    if path.is_dir():
        raise ValueError(f"checkpoint path {str(path)!r} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {str(path)!r}")
    fix = "download or copy it again"
    if file_kind(path, "checkpoint", fix) == "safetensors":
        return read_safetensors(path, "checkpoint", fix)[0]
    with allow_checkpoint_args():
        return load_plain(path, "checkpoint", fix)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_file(path: str | os.PathLike, arch: str | None = None, source_format: str | None = None,
                 out: str | os.PathLike | None = None, *, branch: str | None = None,
                 allow_partial: bool = False) -> ConversionReport:
    """Convert a published checkpoint file; with ``out``, write the densessl export there.

    The file is read without unpickling Python objects (``densessl.safe_load.load_plain``, ``weights_only=True``;
    ``argparse.Namespace`` is allowed for DINO/iBOT's ``args``), or as safetensors.

    Args:
        path: The checkpoint file.
        arch: The timm architecture; ``None`` infers it from the tensor shapes (``infer_arch``).
        source_format: The layout (a key of ``FORMATS``); ``None`` detects it.
        out: Export folder for ``model.safetensors`` and ``config.json`` (``densessl.weights.save_backbone``; the
            stored config records the source file, its SHA-256, the format and the report's counts). ``None``: convert
            and check only.
        branch: ``"teacher"`` (default) or ``"student"`` for DINO, iBOT, DINOv2 and DINOv3 checkpoints.
        allow_partial: Accept (and write) a conversion with missing or unexpected tensors.

    Returns:
        The report.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file cannot be read, the layout is unknown, the architecture cannot be inferred, the
            backbone does not fit, or (without ``allow_partial``) tensors are missing or unexpected.
        densessl.atomic.DiskFullError: No space left while writing.
    """
    path = Path(path)
    if source_format is not None and source_format not in FORMATS:
        raise ValueError(f"unknown source format {source_format!r}; choose one of {', '.join(FORMATS)}")
    state = _load_checkpoint(path)
    if arch is None:
        arch = infer_arch(state, source_format, branch)
        if arch is None:
            layout = FORMATS.get(source_format or detect_format(state), "unknown layout")
            raise ValueError(f"cannot infer the architecture of {str(path)!r} ({layout}) from its tensor shapes; "
                             "pass the timm model name (--arch)")
    try:
        conversion = convert_checkpoint(state, arch, source_format, branch)
    except ValueError as error:
        raise ValueError(f"{str(path)!r}: {error}") from None
    report = conversion.report
    if not report.complete and not allow_partial:
        raise ValueError(f"{str(path)!r} converts only partly to {report.arch}: {len(report.missing)} missing "
                         f"{report.missing[:5]}, {len(report.unexpected)} unexpected {report.unexpected[:5]}; check "
                         "the arch, or allow a partial conversion (--allow-partial)")
    if out is not None:
        provenance = {"converted_from": {"file": path.name, "sha256": _sha256(path), "format": report.source_format,
                                         "branch": branch, "loaded": report.loaded, "missing": report.missing,
                                         "unexpected": report.unexpected, "dropped": len(report.dropped),
                                         "filled": report.filled}}
        save_backbone(conversion.model, out, report.arch, provenance)
    return report


def _read_published(path: Path, loaded: Any) -> BackboneWeights | None:
    """A published checkpoint (``read_backbone_weights``), converted; ``None`` for others.

    Files already in timm's names (``detect_format`` gives ``"timm"``) and unknown layouts return ``None``: the
    caller reads them as before. Others are converted to the architecture their tensor shapes fit.

    Returns:
        The converted weights (arch inferred, ``arch_origin`` saying so), or ``None``.

    Raises:
        ValueError: A published layout whose architecture cannot be inferred or that does not convert completely.
    """
    fmt = detect_format(loaded)
    if fmt in ("timm", "unknown"):
        return None
    where = f"weights file {str(path)!r} ({FORMATS[fmt]})"
    fix = (f"convert it with densessl-convert (python -m densessl.cli.convert) {str(path)!r} --arch NAME --out DIR "
           "and use DIR (timm loads it too: timm.create_model('local-dir:DIR', pretrained=True))")
    arch = infer_arch(loaded, fmt)
    if arch is None:
        raise ValueError(f"{where}: cannot infer the architecture from its tensor shapes; {fix}")
    try:
        conversion = convert_checkpoint(loaded, arch, fmt, None)
    except ValueError as error:
        raise ValueError(f"weights file {str(path)!r}: {error}; {fix}") from None
    report = conversion.report
    if not report.complete:
        raise ValueError(f"{where} converts only partly to {arch} ({len(report.missing)} missing, "
                         f"{len(report.unexpected)} unexpected tensors); {fix}")
    source = f"{FORMATS[fmt]}, converted ({report.loaded} tensors; {len(report.dropped)} non-backbone dropped)"
    return BackboneWeights(conversion.state, arch, None, source, path, "inferred from the checkpoint's tensor shapes")
