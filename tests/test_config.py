"""The shipped configs load and validate; the pretraining schema rejects bad values naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from densessl.config import Config, load_config
from densessl.config_io import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "pretrain").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config) and cfg.objective is getattr(cfg, cfg.method)


def test_official_resnet50_recipe_values() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/pretrain/vicregl_resnet50_imagenet.yaml")
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
