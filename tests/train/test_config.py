"""The shipped configs load and validate; the schemas reject bad values naming the key; Literal choices agree with
the registries the code uses."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from densessl.schema import ConfigError
from densessl.train.config import Config, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "pretrain").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    # The scene and post-training recipes name no image folder: the user (or benchmarks/quality.py) gives data.root.
    needs_root = path.stem.endswith("_scenes") or path.stem.startswith("posttrain_")
    overrides = ["data.root=/data/scenes/images/train"] if needs_root else []
    cfg = load_config(path, overrides)
    assert isinstance(cfg, Config) and cfg.objective is getattr(cfg, cfg.method)


def test_a_scene_recipe_without_its_image_folder_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"data\.root"):
        load_config(CONFIGS[0].parent / "vicregl_resnet18_scenes.yaml")


def test_official_resnet50_recipe_values() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs/pretrain/vicregl_resnet50_imagenet.yaml")
    assert (cfg.optim.name, cfg.optim.base_lr, cfg.optim.weight_decay, cfg.data.batch_size) == ("lars", 0.2, 1e-6, 2048)
    assert cfg.vicregl.alpha == 0.75 and tuple(cfg.vicregl.num_matches) == (20, 4) and cfg.train.epochs == 300
    assert cfg.vicregl.inv_coeff == 25.0 and cfg.vicregl.var_coeff == 25.0 and cfg.vicregl.cov_coeff == 1.0


@pytest.mark.parametrize("override,key", [
    ("data.batch_size=1", "data.batch_size"),
    ("optim.name=adam", "optim.name"),
    ("method=simclr", "method"),
    ("vicregl.preset=paper", "vicregl"),
    ("data.multicrop.global_scale=[0.9,0.1]", "data.multicrop"),
    ("train.precision=fp8", "train.precision"),
    ("data.source=folder", "data.root"),
    ("model.arch_name=resnet18", "model.arch_name"),
])
def test_bad_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_fixed_choices_are_checked_by_the_loader_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.precision=bf61"])
    assert str(info.value) == ("train.precision: must be one of 'auto', 'fp32', 'bf16', 'fp16', got 'bf61'; "
                               "did you mean 'bf16'?")
    with pytest.raises(ConfigError, match=r"^vicregl\.local_matching: must be one of 'both', 'location', 'feature'"):
        load_config(None, ["vicregl.local_matching=learned"])
    with pytest.raises(ConfigError, match=r"^data\.multicrop\.interpolation: .*; did you mean 'bilinear'\?$"):
        load_config(None, ["data.multicrop.interpolation=bilinar"])
    with pytest.raises(ConfigError, match=r"^pixpro\.transform_layers: must be one of 0, 1, 2, got 3$"):
        load_config(None, ["pixpro.transform_layers=3"])


def test_method_choices_agree_with_the_objective_registry() -> None:
    """``Config.method`` is a Literal for the loader; the objectives live in ``OBJECTIVES``: both must list the same."""
    from densessl.objectives import OBJECTIVES
    from densessl.train.config import METHODS

    assert sorted(METHODS) == sorted(OBJECTIVES)
    hints = typing.get_type_hints(Config)
    for method in METHODS:  # each method has its config section, of the registry's config class
        assert hints[method] is OBJECTIVES[method][1]
        assert load_config(None, [f"method={method}"]).objective is not None


def test_literal_choices_agree_with_the_code_that_uses_them() -> None:
    from densessl.data.transforms import _INTERPOLATIONS, MultiCropConfig
    from densessl.det import model as detection
    from densessl.det.model import ModelConfig as DetModelConfig
    from densessl.seg.config import EvalSegConfig
    from densessl.seg.readers import SEGMENTATION_DATASETS

    def choices(cls: type, name: str) -> set:
        tp = typing.get_type_hints(cls)[name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and typing.get_origin(args[0]) is typing.Literal:
            args = list(typing.get_args(args[0]))
        return set(args)

    assert choices(MultiCropConfig, "interpolation") == set(_INTERPOLATIONS)
    assert choices(DetModelConfig, "kind") == set(detection.DETECTOR_KINDS)
    assert choices(DetModelConfig, "neck") == set(detection.NECKS)
    assert choices(DetModelConfig, "norm") == set(detection.NORMS)
    assert choices(DetModelConfig, "box_head") == set(detection.BOX_HEADS)
    assert choices(EvalSegConfig, "dataset") == set(SEGMENTATION_DATASETS)


DET_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "detection").glob("*.yaml"))


@pytest.mark.parametrize("path", DET_CONFIGS, ids=lambda p: p.name)
def test_shipped_detection_configs_load(path: Path) -> None:
    from densessl.config_io import load_config as load
    from densessl.det.finetune import DetConfig

    assert isinstance(load(DetConfig, path), DetConfig)


@pytest.mark.parametrize("override", ["model.kind=mask", "model.neck=c5", "model.norm=syncbn", "model.box_head=2fcc",
                                      "data.dataset=vocc", "optim.schedule=cos", "train.device=gpu"])
def test_detection_choices_name_the_key(override: str) -> None:
    from densessl.config_io import load_config as load
    from densessl.det.finetune import DetConfig

    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', r'[.]')}: must be one of "):
        load(DetConfig, None, [override])


def test_objective_configs_built_in_python_still_reject_bad_choices() -> None:
    """The objectives and MultiCrop validate their config themselves: ``check_fields`` replaces the hand checks."""
    from densessl.data.transforms import MultiCropConfig
    from densessl.objectives import PixProConfig, VICRegConfig, VICRegLConfig

    for cfg, key in [(VICRegLConfig(preset="paper"), "preset"), (VICRegLConfig(norm="layer"), "norm"),
                     (VICRegLConfig(selection_order="random"), "selection_order"), (VICRegConfig(norm="gn"), "norm"),
                     (PixProConfig(transform_layers=4), "transform_layers"),
                     (MultiCropConfig(interpolation="lanczos"), "interpolation")]:
        with pytest.raises(ValueError, match=rf"^{key}: must be one of "):
            cfg.validate()  # type: ignore[union-attr]
