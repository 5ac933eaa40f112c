"""The segmentation-evaluation config schema (``densessl-eval-seg``): nested dataclasses holding every default.

Loaded by ``densessl-eval-seg --config`` with the loader every tool uses (``densessl.config_io``): a YAML file lists
only what differs from these defaults, ``key.sub=value`` overrides change single values, and the tool's flags
(``--k 5``) are applied on top::

    weights: runs/vicregl_r50
    dataset: voc
    data_root: /data/VOCdevkit
    protocol: linear
    features: {input_size: 448, levels: [2, 3]}
    linear: {epochs: 20, lr: 0.1}

Groups reuse the protocol configs' own dataclasses: ``features`` is ``densessl.seg.features.FeatureConfig``
(extraction, shared by both protocols), ``linear`` is ``densessl.seg.linear.LinearHeadConfig`` and ``knn`` is
``densessl.seg.knn.KNNRetrievalConfig``; :meth:`EvalSegConfig.protocol_config` joins ``features``, the chosen
protocol's group and ``seed`` into the ``LinearProbeConfig`` / ``KNNConfig`` the protocol runs with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Literal

from densessl.schema import Range
from densessl.seg.features import FeatureConfig
from densessl.seg.knn import KNNConfig, KNNRetrievalConfig
from densessl.seg.linear import LinearHeadConfig, LinearProbeConfig
from densessl.seg.readers import SegDataset

__all__ = ["REQUIRED", "EvalSegConfig", "Protocol", "SegDataset", "SyntheticSegConfig"]

Protocol = Literal["linear", "knn"]

# The fields a run cannot do without, and the flag that sets each.
REQUIRED = {"weights": "--weights", "dataset": "--dataset", "protocol": "--protocol"}


@dataclass
class SyntheticSegConfig:
    """The embedded synthetic scenes (``dataset: synthetic``): no data root needed.

    Attributes:
        train_images: Train split size.
        val_images: Val split size.
        size: Side of the square images.
    """

    train_images: Annotated[int, Range(ge=1)] = 400
    val_images: Annotated[int, Range(ge=1)] = 100
    size: Annotated[int, Range(ge=1)] = 128


@dataclass
class EvalSegConfig:
    """One segmentation evaluation of a frozen backbone: weights, dataset, protocol and every protocol setting.

    Attributes:
        weights: Backbone weights (a run folder or its export folder, a training checkpoint, a timm state dict) or
            ``random``. Required.
        arch: timm architecture; ``None`` = the one the weights file states (needed with ``random`` or a plain timm
            state dict).
        dataset: Dataset reader. Required.
        data_root: Dataset folder (not needed for ``synthetic``).
        protocol: ``linear`` probe or dense ``knn`` retrieval. Required.
        out: Write the results as JSON to this file (``None``: print only).
        num_classes: Class count (folder datasets; a check for the others).
        ignore_index: Mask value meaning "ignore" in a folder dataset (remapped to 255).
        seed: Seed for random weights, the synthetic data and the protocol (probe, memory sampling).
        num_threads: torch CPU threads (``None``: torch's default).
        features: Feature extraction, shared by both protocols; ``features.device`` ``None`` = CUDA if available.
        linear: Head training of the linear probe.
        knn: Memory and retrieval of the kNN protocol.
        synthetic: The synthetic dataset's sizes.
    """

    weights: str | None = None
    arch: str | None = None
    dataset: SegDataset | None = None
    data_root: str | None = None
    protocol: Protocol | None = None
    out: str | None = None
    num_classes: Annotated[int | None, Range(ge=1)] = None
    ignore_index: Annotated[int, Range(ge=0, le=255)] = 255  # a mask value
    seed: int = 0
    num_threads: Annotated[int | None, Range(ge=1)] = None
    features: FeatureConfig = field(default_factory=FeatureConfig)
    linear: LinearHeadConfig = field(default_factory=LinearHeadConfig)
    knn: KNNRetrievalConfig = field(default_factory=KNNRetrievalConfig)
    synthetic: SyntheticSegConfig = field(default_factory=SyntheticSegConfig)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first impossible value (unset required fields are :meth:`missing`)."""
        if self.weights == "":
            raise ValueError("weights: must be a weights file or 'random', got ''")

    def missing(self) -> list[str]:
        """The required fields (``weights``, ``dataset``, ``protocol``) that are not set, in that order."""
        return [name for name in REQUIRED if getattr(self, name) is None]

    def protocol_config(self, device: str | None = None) -> LinearProbeConfig | KNNConfig:
        """The config the chosen protocol runs with: ``features`` + the protocol's group + ``seed``.

        Args:
            device: Overrides ``features.device`` (the tool passes the resolved device).

        Raises:
            ValueError: If ``protocol`` is not set.
        """
        if self.protocol is None:
            raise ValueError("protocol: required, 'linear' or 'knn'")
        group, cls = (self.linear, LinearProbeConfig) if self.protocol == "linear" else (self.knn, KNNConfig)
        values = {**_shallow(self.features), **_shallow(group), "seed": self.seed}
        if device is not None:
            values["device"] = device
        cfg = cls(**values)
        cfg.validate()
        return cfg


def _shallow(obj: object) -> dict[str, object]:
    """A dataclass's fields as a name -> value dict, values not copied (``dataclasses.asdict`` recurses)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
