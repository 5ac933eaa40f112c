"""Protocol cards: a published number and the exact protocol it was measured under (``densessl-reproduce``).

A card is a YAML file (``configs/protocols/*.yaml``, shipped with the package) loaded with the shared config loader
(``densessl.config_io``: unknown keys get "did you mean", ``Literal`` choices are checked, ``validate()`` names the
dotted key). It states

* ``name``, ``task`` (``seg_linear``, ``seg_knn``, ``depth_linear`` or ``detection``), ``arch`` (the timm
  architecture of the published model) and ``dataset`` (the reader, plus the split names the published number used);
* ``published``: the value, the metric (``mIoU``, ``box_AP``, ...), the model it belongs to, the exact ``source``
  (paper table or README line), and ``verified`` (whether the value was confirmed from a stored copy of that source;
  ``note`` says what was found when it was not);
* the protocol itself, reusing the tools' own schemas instead of repeating their fields: ``seg`` is an
  ``EvalSegConfig`` section (``densessl-eval-seg``: input size, resize mode, levels, linear head, kNN memory, ...),
  ``depth`` a ``DepthProbeConfig`` section (``densessl-eval-depth``: input size, levels, bins or regression, depth
  range, Eigen crop, ...) and ``detection`` a ``DetConfig`` section (``densessl-finetune-det``: detector kind, neck,
  norm, schedule, sizes, ...); a card fills only the one its task uses;
* ``differences``: where densessl's implementation of the protocol is known to differ from the published one;
* ``smoke``: extra ``key=value`` overrides for ``--smoke`` runs (e.g. an input size divisible by the patch size).

The keys that a run supplies are not part of a card: ``--weights`` (``seg.weights`` / ``detection.model.weights``),
``--data-root`` (``seg.data_root`` / ``detection.data.root``), and the ones the card states once at the top level:
``arch`` (``seg.arch`` / ``detection.model.arch``), ``dataset.name`` (``seg.dataset`` / ``detection.data.dataset``) and
the task (``seg.protocol``). :func:`build_eval_seg_config`, :func:`build_depth_config` and :func:`build_det_config`
put them together into the config the existing tools run with. Depth cards read an RGB-D folder
(``densessl.depth.data.DepthFolder``) whose depth PNGs have ``DEPTH_SCALE[dataset.name]`` units per metre.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from densessl.config_io import (
    SHIPPED_CONFIGS,
    flatten,
    load_config,
    merge,
    parse_dotlist,
    resolve_config_path,
    validate_config,
)
from densessl.depth.probe import DepthProbeConfig
from densessl.det.finetune import DetConfig, DetDataset
from densessl.schema import ConfigError, to_dict
from densessl.seg.config import EvalSegConfig, SegDataset

__all__ = [
    "DEPTH_SCALE",
    "PROTOCOLS_DIR",
    "RUN_ONLY_KEYS",
    "CardDataset",
    "ProtocolCard",
    "Published",
    "apply_overrides",
    "apply_smoke",
    "build_depth_config",
    "build_det_config",
    "build_eval_seg_config",
    "flatten",
    "load_card",
    "protocol_settings",
    "resolve_card_path",
    "shipped_cards",
]

Task = Literal["seg_linear", "seg_knn", "depth_linear", "detection"]
Metric = Literal["mIoU", "box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75", "rmse", "abs_rel",
                 "delta1"]
DatasetName = Literal["voc", "ade20k", "cityscapes", "coco_stuff", "coco", "folder", "synthetic", "nyuv2"]
"""The segmentation readers (``densessl.seg.config.SegDataset``), the detection datasets (``DetDataset``) and the
RGB-D sets of the depth probe (``DEPTH_SCALE``) together."""

TASKS: tuple[str, ...] = typing.get_args(Task)
METRICS: tuple[str, ...] = typing.get_args(Metric)
SEG_DATASETS: tuple[str, ...] = typing.get_args(SegDataset)
DET_DATASETS: tuple[str, ...] = typing.get_args(DetDataset)
SEG_PROTOCOL = {"seg_linear": "linear", "seg_knn": "knn"}
DEPTH_METRICS = ("rmse", "abs_rel", "delta1")
"""Depth metrics a card can publish: RMSE in metres, AbsRel as a ratio, delta1 in percent."""
DEPTH_SCALE = {"nyuv2": 1000.0}
"""Depth datasets: depth PNG units per metre (NYUv2's common layout stores millimetres)."""

PROTOCOLS_DIR = Path(SHIPPED_CONFIGS) / "protocols"
"""Where the shipped cards live (``densessl/configs/protocols``; ``configs/protocols`` in a checkout)."""

# A data root a card is validated with: the real one comes from --data-root at run time.
_ROOT_PLACEHOLDER = "<data-root>"

# Card keys that do not change what is measured (devices, threads, workers, chunking, logging): overriding them keeps
# a run comparable with the published number. Everything else under seg./detection. is part of the protocol.
RUN_ONLY_KEYS = frozenset({
    "seg.num_threads", "seg.out", "seg.features.device", "seg.features.batch_size", "seg.features.num_workers",
    "seg.features.progress", "seg.knn.query_chunk_size", "seg.knn.memory_chunk_size", "seg.knn.use_faiss",
    "detection.train.device", "detection.train.num_threads", "detection.train.progress", "detection.train.log_every",
    "detection.train.checkpoint_every", "detection.train.eval_every", "detection.train.eval_batch_size",
    "detection.data.num_workers", "depth.device",
})

# --smoke: the embedded synthetic data and tiny sizes, so that every card runs on a CPU in seconds. Applied to the
# card's protocol section; then the card's own ``smoke`` overrides; then the user's overrides.
SEG_SMOKE: dict[str, Any] = {
    "num_classes": None,
    "synthetic": {"train_images": 8, "val_images": 4, "size": 64},
    "features": {"input_size": 64, "batch_size": 4, "num_workers": 0, "progress": False},
    "linear": {"epochs": 1, "head_batch_size": 4},
    "knn": {"memory_size": 4096},
}
DET_SMOKE: dict[str, Any] = {
    "model": {"out_channels": 16, "representation_size": 32, "roi_batch_size": 32, "rpn_proposals_train": 32,
              "rpn_proposals_test": 32, "detections_per_img": 20, "anchor_sizes": None},
    "data": {"synthetic_train_images": 8, "synthetic_val_images": 4, "synthetic_size": 32, "min_size_train": [32],
             "min_size_test": 32, "max_size": 32, "val_max_images": None, "num_workers": 0},
    "optim": {"warmup_iters": 1, "steps": [], "accumulate": 1},
    "train": {"max_iters": 2, "epochs": None, "batch_size": 2, "eval_every": None, "eval_batch_size": 2,
              "checkpoint_every": 2, "log_every": 1, "progress": False},
}
DEPTH_SMOKE: dict[str, Any] = {"input_size": 64, "epochs": 1, "batch_size": 4}
DEPTH_SMOKE_IMAGES = {"train": 8, "val": 4}
DEPTH_SMOKE_SIZE = (64, 96)


@dataclass
class Published:
    """The published number a card reproduces.

    Attributes:
        value: The number (percent; ``rmse`` in metres, ``abs_rel`` a ratio), or ``None`` when it could not be
            confirmed from a stored source (``note`` says what was found).
        metric: What the number measures: ``mIoU`` for segmentation, ``rmse``/``abs_rel``/``delta1`` for depth,
            ``box_AP``/``mask_AP`` (COCO-style AP, also ``*_AP50``/``*_AP75``) for detection.
        model: The published model, e.g. ``VICRegL ResNet-50 alpha=0.75`` (what the weights must be).
        source: Where the number is printed, precisely: paper and table, or repository, file and line/row.
        verified: The value was read from a stored copy of ``source`` (not from memory or a secondary citation).
        note: What was found or not found when checking the source; anything a reader must know about the number.
        also: Further numbers from the same source and run, metric -> value (e.g. ``mask_AP`` next to ``box_AP``);
            compared too when the run measures them.
    """

    value: float | None = None
    metric: Metric = "mIoU"
    model: str = ""
    source: str = ""
    verified: bool = False
    note: str = ""
    also: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first missing or impossible value."""
        if not self.model.strip():
            raise ValueError("model: required: the published model, e.g. 'VICRegL ResNet-50 alpha=0.75'")
        if not self.source.strip():
            raise ValueError("source: required: the paper table or README line the value is printed in")
        if self.verified and self.value is None:
            raise ValueError("verified: true needs a value")
        if not self.verified and not self.note.strip():
            raise ValueError("note: required when verified is false: say what was found (and what was not)")
        for metric in self.also:
            if metric not in METRICS or metric == self.metric:
                raise ValueError(f"also: {metric!r} must be another metric of {', '.join(METRICS)}")

    def values(self) -> dict[str, float | None]:
        """Every published number, metric -> value, the main one first."""
        return {self.metric: self.value, **self.also}


@dataclass
class CardDataset:
    """The dataset of a card.

    Attributes:
        name: The reader: a segmentation dataset of ``densessl-eval-seg`` (``voc``, ``ade20k``, ``cityscapes``,
            ``coco_stuff``, ``folder``), an RGB-D folder of ``densessl-eval-depth`` (``nyuv2``) or a detection
            dataset of ``densessl-finetune-det`` (``voc``, ``coco``).
        train_split: The training split as the source names it (e.g. ``VOC2012 train_aug (10,582 images)``).
        val_split: The split the published number is measured on (e.g. ``VOC2012 val (1,449 images)``).
    """

    name: DatasetName | None = None
    train_split: str = ""
    val_split: str = ""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first missing value."""
        if self.name is None:
            raise ValueError(f"name: required, one of {', '.join(typing.get_args(DatasetName))}")
        if not self.train_split.strip() or not self.val_split.strip():
            raise ValueError("train_split: train_split and val_split are required (the split names of the source)")


@dataclass
class ProtocolCard:
    """A published number and the protocol that measures it (see the module docstring).

    Attributes:
        name: The card's name (the file stem of a shipped card).
        task: ``seg_linear`` (linear probe), ``seg_knn`` (dense kNN retrieval), ``depth_linear`` (linear depth
            probe) or ``detection``.
        arch: timm architecture of the published model (``--arch`` runs the protocol on another one).
        description: One line on what the card measures.
        dataset: Reader and split names.
        published: The number, its source and whether it was verified.
        seg: The segmentation protocol (``EvalSegConfig``; seg tasks only).
        depth: The depth protocol (``DepthProbeConfig``; the depth task only).
        detection: The detection protocol (``DetConfig``; the detection task only).
        differences: Known differences between densessl's implementation and the published protocol.
        smoke: Extra ``key.sub=value`` overrides (card keys) for ``--smoke`` runs.
    """

    name: str = ""
    task: Task | None = None
    arch: str = ""
    description: str = ""
    dataset: CardDataset = field(default_factory=CardDataset)
    published: Published = field(default_factory=Published)
    seg: EvalSegConfig = field(default_factory=EvalSegConfig)
    depth: DepthProbeConfig = field(default_factory=DepthProbeConfig)
    detection: DetConfig = field(default_factory=DetConfig)
    differences: list[str] = field(default_factory=list)
    smoke: list[str] = field(default_factory=list)

    @property
    def is_seg(self) -> bool:
        """Whether the task is a segmentation protocol (``seg`` section) rather than detection."""
        return self.task in SEG_PROTOCOL

    @property
    def section(self) -> str:
        """The card's protocol section: ``seg``, ``depth`` or ``detection``."""
        return "seg" if self.is_seg else "depth" if self.task == "depth_linear" else "detection"

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the dotted key of the first inconsistency."""
        if not self.name.strip():
            raise ValueError("name: required (the card's name; a shipped card's file stem)")
        if self.task is None:
            raise ValueError(f"task: required, one of {', '.join(TASKS)}")
        if not self.arch.strip():
            raise ValueError("arch: required: the timm architecture of the published model, e.g. resnet50")
        assert self.dataset.name is not None  # CardDataset.validate ran first (children are validated first)
        metric = self.published.metric
        for name, empty in (("seg", EvalSegConfig()), ("depth", DepthProbeConfig()), ("detection", DetConfig())):
            if name != self.section and getattr(self, name) != empty:
                raise ConfigError(f"{name}: a {self.task} card has no {name} section; remove it", key=name)
        if self.is_seg:
            if self.dataset.name not in SEG_DATASETS:
                raise ConfigError(f"dataset.name: {self.task} needs a segmentation dataset "
                                  f"({', '.join(SEG_DATASETS)}), got {self.dataset.name!r}", key="dataset.name")
            if metric != "mIoU":
                raise ConfigError(f"published.metric: {self.task} measures mIoU, got {metric!r}",
                                  key="published.metric")
            for name, source in (("weights", "--weights"), ("data_root", "--data-root"), ("arch", "the card's arch (or --arch)"),
                                 ("dataset", "the card's dataset.name"), ("protocol", "the card's task"),
                                 ("out", "--out")):
                if getattr(self.seg, name) is not None:
                    raise ConfigError(f"seg.{name}: set by {source}; leave it out of the card", key=f"seg.{name}")
            _validate_section("seg", lambda: build_eval_seg_config(self, weights="random"))
        elif self.section == "depth":
            if self.dataset.name not in DEPTH_SCALE:
                raise ConfigError(f"dataset.name: depth_linear needs an RGB-D dataset ({', '.join(DEPTH_SCALE)}), "
                                  f"got {self.dataset.name!r}", key="dataset.name")
            for metric_name in self.published.values():
                if metric_name not in DEPTH_METRICS:
                    raise ConfigError(f"published.metric: depth_linear measures {', '.join(DEPTH_METRICS)}, got "
                                      f"{metric_name!r}", key="published.metric")
            if self.depth.device is not None:
                raise ConfigError("depth.device: a device is the run's choice; leave it out of the card (override "
                                  "it with depth.device=...)", key="depth.device")
            _validate_section("depth", lambda: build_depth_config(self))
        else:
            if self.dataset.name not in DET_DATASETS or self.dataset.name == "synthetic":
                raise ConfigError(f"dataset.name: detection needs a detection dataset (voc, coco), got "
                                  f"{self.dataset.name!r}", key="dataset.name")
            if not metric.startswith(("box_", "mask_")):
                raise ConfigError(f"published.metric: detection measures box_AP / mask_AP, got {metric!r}",
                                  key="published.metric")
            model, data = self.detection.model, self.detection.data
            if model.weights is not None:
                raise ConfigError("detection.model.weights: set by --weights; leave it out of the card",
                                  key="detection.model.weights")
            if data.root is not None:
                raise ConfigError("detection.data.root: set by --data-root; leave it out of the card",
                                  key="detection.data.root")
            default = DetConfig()
            if model.arch not in (default.model.arch, self.arch):
                raise ConfigError(f"detection.model.arch: set by the card's arch ({self.arch}) or --arch; leave it out",
                                  key="detection.model.arch")
            if data.dataset not in (default.data.dataset, self.dataset.name):
                raise ConfigError(f"detection.data.dataset: set by the card's dataset.name ({self.dataset.name}); "
                                  "leave it out", key="detection.data.dataset")
            for metric_name in self.published.values():
                if metric_name.startswith("mask_") and model.kind != "mask_rcnn":
                    raise ConfigError(f"published: {metric_name} needs detection.model.kind: mask_rcnn",
                                      key="published")
            _validate_section("detection", lambda: build_det_config(self, weights="random",
                                                                     data_root=_ROOT_PLACEHOLDER))
        if self.smoke:
            try:
                smoke = parse_dotlist(self.smoke)
            except ConfigError as error:
                raise ConfigError(f"smoke: {error}", key="smoke") from error
            for key in flatten(smoke):
                if not key.startswith(("seg.", "depth.", "detection.")):
                    raise ConfigError(f"smoke: {key}: only seg.* / depth.* / detection.* keys can be changed for "
                                      "smoke runs", key="smoke")


def _validate_section(section: str, build: Any) -> None:
    """Build the effective protocol config and validate it; errors get the card's ``section.`` prefix."""
    try:
        build()
    except ConfigError as error:
        key = f"{section}.{error.key}" if error.key else section
        message = str(error)
        if error.key and message.startswith(f"{error.key}:"):
            message = message[len(error.key) + 1:].strip()
        raise ConfigError(f"{key}: {message}", key=key) from error


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #


def shipped_cards() -> list[Path]:
    """The cards shipped with densessl, sorted by name."""
    return sorted(PROTOCOLS_DIR.glob("*.yaml"))


def resolve_card_path(card: str | os.PathLike[str]) -> str:
    """A card file: an existing path, a shipped config path (``protocols/x.yaml``), or a shipped card's name (``x``).

    A name that matches nothing is returned unchanged (loading it reports the file as missing).
    """
    card = os.fspath(card)
    for candidate in (card, f"protocols/{card}", f"protocols/{card}.yaml"):
        resolved = resolve_config_path(candidate)
        if os.path.isfile(resolved):
            return resolved
        if os.path.isabs(card):
            break
    return card


def load_card(card: str | os.PathLike[str], overrides: Sequence[str] = ()) -> ProtocolCard:
    """Load and validate a card (a path, ``protocols/<name>.yaml`` or a shipped card's name), overrides applied.

    Raises:
        densessl.config_io.ConfigError: Missing file, YAML error, unknown key, bad value; the message names the file
            or the dotted key.
    """
    return load_config(ProtocolCard, resolve_card_path(card), overrides)


def apply_overrides(card: ProtocolCard, overrides: Sequence[str] | Mapping[str, Any]) -> ProtocolCard:
    """A new card with ``key.sub=value`` overrides (or a nested mapping) applied, validated.

    Raises:
        densessl.config_io.ConfigError: Unknown key or bad value, naming the dotted key.
    """
    data = parse_dotlist(overrides) if not isinstance(overrides, Mapping) else overrides
    if not data:
        return card
    updated = merge(card, data)
    validate_config(updated)
    return updated


def apply_smoke(card: ProtocolCard) -> ProtocolCard:
    """The card for a ``--smoke`` run: tiny sizes on its protocol section, then the card's own ``smoke`` overrides.

    The dataset becomes the embedded synthetic one when the configs are built (``smoke=True``); a depth card's run
    writes ``DEPTH_SMOKE_IMAGES`` generated RGB-D scenes (``densessl.depth.data.write_synthetic_rgbd``).
    """
    if card.is_seg:
        seg_smoke = copy.deepcopy(SEG_SMOKE)
        seg_smoke["knn"]["augment_memory"] = min(card.seg.knn.augment_memory, 1)
        smoked = merge(card, {"seg": seg_smoke})
    elif card.section == "depth":
        smoked = merge(card, {"depth": DEPTH_SMOKE})
    else:
        smoked = merge(card, {"detection": DET_SMOKE})
    return apply_overrides(smoked, card.smoke)


# --------------------------------------------------------------------------- #
# The configs the tools run with
# --------------------------------------------------------------------------- #


def build_eval_seg_config(card: ProtocolCard, *, weights: str, data_root: str | None = None,
                          arch: str | None = None, smoke: bool = False) -> EvalSegConfig:
    """The ``densessl-eval-seg`` config of a seg card: its ``seg`` section plus the run's weights, data and arch.

    Args:
        card: A seg card (``seg_linear`` or ``seg_knn``).
        weights: Weights file or ``random``.
        data_root: Dataset folder (ignored when ``smoke``).
        arch: Architecture; ``None`` = the card's.
        smoke: Use the embedded synthetic dataset (see :func:`apply_smoke` for the sizes).

    Raises:
        ValueError: The card is not a seg card.
        densessl.config_io.ConfigError: The resulting config is invalid (keys relative to ``EvalSegConfig``).
    """
    if not card.is_seg:
        raise ValueError(f"card {card.name!r} is a {card.task} card, not a segmentation one")
    values: dict[str, Any] = {
        "weights": weights, "arch": arch or card.arch, "protocol": SEG_PROTOCOL[card.task],  # type: ignore[index]
        "dataset": "synthetic" if smoke else card.dataset.name, "data_root": None if smoke else data_root,
    }
    cfg = dataclasses.replace(card.seg, **values)
    validate_config(cfg)
    return cfg


def build_det_config(card: ProtocolCard, *, weights: str | None, data_root: str | None = None,
                     arch: str | None = None, smoke: bool = False) -> DetConfig:
    """The ``densessl-finetune-det`` config of a detection card: its ``detection`` section plus weights, data, arch.

    Args:
        card: A detection card.
        weights: Weights file, or ``random`` / ``None`` for a random init.
        data_root: Dataset folder (ignored when ``smoke``).
        arch: Architecture; ``None`` = the card's.
        smoke: Use the embedded synthetic instances (see :func:`apply_smoke` for the sizes).

    Raises:
        ValueError: The card is not a detection card.
        densessl.config_io.ConfigError: The resulting config is invalid (keys relative to ``DetConfig``).
    """
    if card.section != "detection":
        raise ValueError(f"card {card.name!r} is a {card.task} card, not a detection one")
    det = card.detection
    model = dataclasses.replace(det.model, arch=arch or card.arch,
                                weights=None if weights in (None, "random") else weights)
    data = dataclasses.replace(det.data, dataset="synthetic" if smoke else card.dataset.name,
                               root=None if smoke else data_root)
    cfg = dataclasses.replace(det, model=model, data=data)
    validate_config(cfg)
    return cfg


def build_depth_config(card: ProtocolCard, *, device: str | None = None) -> DepthProbeConfig:
    """The ``densessl-eval-depth`` settings of a depth card: its ``depth`` section, on ``device`` if given.

    Raises:
        ValueError: The card is not a depth card.
        densessl.config_io.ConfigError: The resulting config is invalid (keys relative to ``DepthProbeConfig``).
    """
    if card.section != "depth":
        raise ValueError(f"card {card.name!r} is a {card.task} card, not a depth one")
    cfg = card.depth if device is None else dataclasses.replace(card.depth, device=device)
    validate_config(cfg)
    return cfg


# --------------------------------------------------------------------------- #
# Settings
# --------------------------------------------------------------------------- #


def protocol_settings(card: ProtocolCard) -> dict[str, Any]:
    """Every setting of the card's protocol section, as dotted card keys (``seg.knn.k``) -> plain values."""
    return flatten(to_dict(getattr(card, card.section)), card.section)
