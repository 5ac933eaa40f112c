"""The pretraining config schema: nested dataclasses holding every default.

An experiment YAML lists only what it changes; the command line overrides single values as ``key.sub=value``
(``tools/train.py CONFIG optim.base_lr=0.3 data.batch_size=512``). Loading, type checking and "did you mean"
errors live in ``densessl.config_io``; this module only declares the schema and its value checks. A field with a fixed
set of values is a ``Literal[...]``, which the loader checks (``train.precision=fp8`` -> "must be one of ..."), and so
is a numeric field annotated with a ``Range`` (``train.epochs=0`` -> "must be >= 1, got 0"); the ``validate()``
methods hold only the checks that involve several fields.

Batch sizes are **global** (summed over processes and accumulation steps), as in the official VICRegL code, so a
recipe means the same thing on 1 GPU or 32: each process sees ``batch_size / (world_size * accumulate)`` images
per forward pass. The peak learning rate is ``base_lr * batch_size / 256``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Sequence

from densessl.config_io import flatten, parse_dotlist
from densessl.config_io import load_config as _load
from densessl.data.transforms import MultiCropConfig
from densessl.objectives import OBJECTIVES
from densessl.objectives.densecl import DenseCLConfig
from densessl.objectives.gram import GramConfig
from densessl.objectives.pixpro import PixProConfig
from densessl.objectives.vicreg import VICRegConfig
from densessl.objectives.vicregl import VICRegLConfig
from densessl.schema import Range, check_timm_arch

logger = logging.getLogger("densessl")

__all__ = ["ModelConfig", "DataConfig", "OptimConfig", "TrainConfig", "Config", "load_config", "METHODS"]

METHODS: tuple[str, ...] = tuple(OBJECTIVES)
Method = Literal[METHODS]  # type: ignore[valid-type]
"""The pretraining methods: the keys of the registry ``densessl.objectives.OBJECTIVES``, which a new method joins."""


@dataclass
class ModelConfig:
    """Backbone: any timm model with ``forward_intermediates``."""

    arch: str = "resnet18"
    levels: list[int] = field(default_factory=lambda: [-1])
    weights: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.arch:
            raise ValueError("arch: must name a timm model, e.g. resnet50")
        check_timm_arch(self.arch)
        if not self.levels:
            raise ValueError("levels: at least one feature level is needed")


@dataclass
class DataConfig:
    """Training data: the embedded ``synthetic`` scenes or an image ``folder`` (recursive, ImageNet layout works).

    ``augment_on``: where multi-crop's photometric half (colour jitter, grayscale, blur, solarization, normalization)
    runs. ``loader`` (default): in the data loader, with PIL, exactly the reference recipe. ``device``: the loader only
    decodes, crops, resamples and flips (uint8 crops, same boxes and flips as ``loader``); the rest runs batched on
    the training device (``densessl.data.device_augment``), with the same per-view probabilities and parameter
    ranges, drawn from a generator seeded by (seed, epoch, step, rank, micro-batch). Use it when the CPUs cannot
    keep a GPU busy. ``fast_decode``: decode JPEG files at 1/2, 1/4 or 1/8 size when every crop window of the image
    stays at least as large as its output crop (``data.source=folder`` only; boxes are unchanged, pixels change
    slightly; off: bit-exact crops).
    """

    source: Literal["synthetic", "folder"] = "synthetic"
    root: str | None = None
    synthetic_images: Annotated[int, Range(ge=1)] = 2000
    synthetic_size: Annotated[int, Range(ge=32)] = 128
    batch_size: Annotated[int, Range(ge=2)] = 64  # >= 2: the variance term needs two samples
    num_workers: Annotated[int, Range(ge=0)] = 2
    strict: bool = False
    augment_on: Literal["loader", "device"] = "loader"
    fast_decode: bool = False
    multicrop: MultiCropConfig = field(default_factory=MultiCropConfig)

    def validate(self) -> None:
        if self.source == "folder" and not self.root:
            raise ValueError("root: data.source=folder needs data.root=/path/to/images")


@dataclass
class OptimConfig:
    """Optimizer and per-iteration schedule (linear warm-up, then cosine to ``end_lr_ratio`` of the peak)."""

    name: Literal["lars", "adamw", "sgd"] = "lars"
    base_lr: Annotated[float, Range(gt=0)] = 0.2
    weight_decay: Annotated[float, Range(ge=0)] = 1e-6
    momentum: Annotated[float, Range(ge=0)] = 0.9
    betas: Annotated[tuple[float, float], Range(ge=0, lt=1)] = (0.9, 0.999)
    lars_eta: Annotated[float, Range(gt=0)] = 1e-3
    warmup_epochs: Annotated[float, Range(ge=0)] = 10.0
    end_lr_ratio: Annotated[float, Range(ge=0, le=1)] = 1e-3
    clip_grad: Annotated[float | None, Range(gt=0)] = None
    accumulate: Annotated[int, Range(ge=1)] = 1


@dataclass
class TrainConfig:
    """Loop, precision, logging and checkpoint settings."""

    epochs: Annotated[int, Range(ge=1)] = 100
    max_iters: Annotated[int | None, Range(ge=1)] = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (any torch device name)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    # torch.compile the backbone forward (student and EMA teacher); checkpoints and exports are unchanged. The
    # first step compiles (tens of seconds; needs a C++ compiler on the CPU, Triton on GPUs).
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"  # inductor only
    # torch.compile backend: "inductor" (generated C++/Triton kernels, the fast one) or any other registered backend,
    # e.g. "aot_eager" (graph capture and AOT autograd without code generation: quick to compile, for debugging).
    compile_backend: str = "inductor"
    sync_bn: bool = True
    log_every: Annotated[int, Range(ge=1)] = 10
    checkpoint_every_epochs: Annotated[int, Range(ge=1)] = 1
    checkpoint_every_iters: Annotated[int | None, Range(ge=1)] = None
    keep_every_epochs: Annotated[int | None, Range(ge=1)] = None
    tensorboard: bool = False  # TensorBoard event files in <run>/tensorboard (the tensorboard extra)
    wandb: str | None = None  # W&B project to log to (the wandb extra; WANDB_MODE=offline is honoured); null: off
    progress: bool = True
    diagnostics_every: Annotated[int, Range(ge=0)] = 0  # 0: off
    diagnostics_images: Annotated[int, Range(ge=1)] = 32
    diagnostics_size: Annotated[int, Range(ge=32)] = 224


@dataclass
class Config:
    """A full pretraining run. ``method`` picks which objective section is used."""

    method: Method = "vicregl"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vicregl: VICRegLConfig = field(default_factory=VICRegLConfig)
    vicreg: VICRegConfig = field(default_factory=VICRegConfig)
    densecl: DenseCLConfig = field(default_factory=DenseCLConfig)
    pixpro: PixProConfig = field(default_factory=PixProConfig)
    gram: GramConfig = field(default_factory=GramConfig)  # Gram anchoring, added to any method (off by default)

    @property
    def objective(self) -> Any:
        """The config section of the chosen method."""
        return getattr(self, self.method)

    def inactive_sections(self) -> list[str]:
        """The objective sections the chosen method does not read (``--print-config`` leaves them out)."""
        return [name for name in METHODS if name != self.method]


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- YAML file (with optional ``_base_``) <- ``key.sub=value`` overrides, validated.

    Raises:
        densessl.config_io.ConfigError: naming the offending dotted key.
    """
    cfg = _load(Config, path, overrides)
    unused = [key for key in flatten(parse_dotlist(overrides)) if key.split(".", 1)[0] in cfg.inactive_sections()]
    if unused:
        logger.warning("%s: set for a method this run does not use (method=%s); the %s section is the one read",
                       ", ".join(unused), cfg.method, cfg.method)
    return cfg
