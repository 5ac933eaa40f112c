"""Tests for densessl.config_io and densessl.schema (schema-agnostic config loading and checking)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional

import pytest
import yaml

from densessl.config_io import from_dict, load_config, merge, parse_dotlist, save_config, validate_config
from densessl.schema import ConfigError, Range, check_fields, to_dict

# --------------------------------------------------------------------------- #
# Example schema
# --------------------------------------------------------------------------- #


@dataclass
class ModelCfg:
    arch: Literal["resnet18", "resnet50"] = "resnet50"
    pretrained: str | None = None
    out_dim: int = 128

    def validate(self) -> None:
        if self.out_dim <= 0:
            raise ValueError(f"out_dim: must be positive, got {self.out_dim}")


@dataclass
class OptimCfg:
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    nesterov: bool = False

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")


@dataclass
class DataCfg:
    root: str = "/data"
    sizes: tuple[int, ...] = (224, 96)
    crops: list[int] = field(default_factory=lambda: [2, 6])
    loss_weights: dict[str, float] = field(default_factory=lambda: {"dense": 1.0, "global": 1.0})


@dataclass
class HeadCfg:
    hidden: int = 2048
    layers: int = 2


@dataclass
class ExpCfg:
    name: str = "exp"
    seed: int = 0
    epochs: Optional[int] = None
    model: ModelCfg = field(default_factory=ModelCfg)
    # Parent default differs from OptimCfg's own default: partial YAML must keep it.
    optim: OptimCfg = field(default_factory=lambda: OptimCfg(lr=0.3))
    data: DataCfg = field(default_factory=DataCfg)
    head: HeadCfg | None = None

    def validate(self) -> None:
        if self.model.arch == "resnet18" and self.model.out_dim > 512:
            raise ValueError("resnet18 supports out_dim <= 512")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- #
# Loading, precedence
# --------------------------------------------------------------------------- #


def test_defaults_only() -> None:
    assert load_config(ExpCfg) == ExpCfg()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(ExpCfg, write(tmp_path / "e.yaml", "# nothing\n")) == ExpCfg()


def test_nested_partial_yaml(tmp_path: Path) -> None:
    path = write(
        tmp_path / "exp.yaml",
        "model:\n  arch: resnet18\noptim:\n  momentum: 0.8\ndata:\n  sizes: [160, 64, 32]\n",
    )
    cfg = load_config(ExpCfg, path)
    assert cfg.model == ModelCfg(arch="resnet18")
    assert cfg.optim.momentum == 0.8
    assert cfg.optim.lr == 0.3  # parent's default_factory value kept, not OptimCfg.lr
    assert cfg.optim.weight_decay == 1e-4
    assert cfg.data.sizes == (160, 64, 32)  # list converted to the annotated tuple
    assert cfg.data.crops == [2, 6] and cfg.name == "exp"


def test_dotlist_overrides_win_over_yaml(tmp_path: Path) -> None:
    path = write(tmp_path / "exp.yaml", "seed: 1\noptim:\n  lr: 0.1\n  momentum: 0.8\n")
    cfg = load_config(ExpCfg, str(path), ["optim.lr=0.5", "seed=7", "data.crops=[1,2,3]", "seed=8"])
    assert cfg.optim.lr == 0.5 and cfg.optim.momentum == 0.8  # sibling from YAML kept
    assert cfg.seed == 8  # later override wins
    assert cfg.data.crops == [1, 2, 3]


def test_dict_field_yaml_replaces_cli_updates(tmp_path: Path) -> None:
    path = write(tmp_path / "exp.yaml", "data:\n  loss_weights: {dense: 0.5}\n")
    assert load_config(ExpCfg, path).data.loss_weights == {"dense": 0.5}  # YAML: whole value
    cfg = load_config(ExpCfg, path, ["data.loss_weights.dense=2", "data.loss_weights.extra=3"])
    assert cfg.data.loss_weights == {"dense": 2.0, "extra": 3.0}  # CLI: key by key
    cfg = load_config(ExpCfg, None, ["data.loss_weights.dense=0.5"])
    assert cfg.data.loss_weights == {"dense": 0.5, "global": 1.0}


# --------------------------------------------------------------------------- #
# parse_dotlist
# --------------------------------------------------------------------------- #


def test_parse_dotlist_nested() -> None:
    out = parse_dotlist(["optim.lr=0.1", "model.arch=resnet18", "data.sizes=[224,96]", "model.pretrained=null"])
    assert out == {
        "optim": {"lr": 0.1},
        "model": {"arch": "resnet18", "pretrained": None},
        "data": {"sizes": [224, 96]},
    }
    assert parse_dotlist(["name=a=b"]) == {"name": "a=b"}  # split on the first '=' only


def test_scientific_notation(tmp_path: Path) -> None:
    out = parse_dotlist(["a=1e-3", "b=-2E+5", "c=1.5e3", "d='1e-3'", "e=10"])
    assert out == {"a": 0.001, "b": -200000.0, "c": 1500.0, "d": "1e-3", "e": 10}
    assert isinstance(out["a"], float) and isinstance(out["e"], int)
    path = write(tmp_path / "exp.yaml", "optim:\n  lr: 1e-3\n  weight_decay: 5e-5\n")
    cfg = load_config(ExpCfg, path, ["optim.momentum=1"])
    assert cfg.optim.lr == 0.001 and cfg.optim.weight_decay == 5e-5
    assert cfg.optim.momentum == 1.0 and isinstance(cfg.optim.momentum, float)  # int -> float


@pytest.mark.parametrize(
    ("items", "match"),
    [
        (["optim.lr"], r"optim\.lr: .*key\.sub=value"),
        (["optim.lr="], r"optim\.lr: empty value"),
        (["optim.lr=  "], r"optim\.lr: empty value"),
        (["=3"], r"invalid key"),
        (["optim..lr=3"], r"invalid key"),
        (["x=[1,2"], r"x: cannot parse value"),
        (["optim=1", "optim.lr=2"], r"optim: set to a value"),
    ],
)
def test_parse_dotlist_errors(items: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_dotlist(items)


# --------------------------------------------------------------------------- #
# Unknown keys and type checking
# --------------------------------------------------------------------------- #


def test_unknown_key_with_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ExpCfg, None, ["optim.lrr=0.1"])
    msg = str(info.value)
    assert msg.startswith("optim.lrr: unknown key")
    assert "did you mean 'lr'?" in msg
    assert "lr, momentum, weight_decay, betas, nesterov" in msg
    assert info.value.key == "optim.lrr"
    with pytest.raises(ConfigError, match=r"^modle: unknown key; did you mean 'model'\?"):
        from_dict(ExpCfg, {"modle": {}})
    with pytest.raises(ConfigError, match=r"^zzz: unknown key\. Valid keys at the top level \(ExpCfg\): name, seed, epochs, model,"):
        from_dict(ExpCfg, {"zzz": 1})


def test_wrong_type_messages() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ExpCfg, None, ["optim.lr=abc"])
    assert str(info.value) == "optim.lr: expected float, got 'abc' (str)"
    cases = [
        ({"seed": True}, "seed: expected int, got True (bool)"),
        ({"seed": 1.5}, "seed: expected int, got 1.5 (float)"),
        ({"optim": {"lr": False}}, "optim.lr: expected float, got False (bool)"),
        ({"optim": {"nesterov": 1}}, "optim.nesterov: expected bool, got 1 (int)"),
        ({"name": 3}, "name: expected str, got 3 (int)"),
        ({"model": "resnet18"}, "model: expected mapping for ModelCfg, got 'resnet18' (str)"),
    ]
    for data, message in cases:
        with pytest.raises(ConfigError) as info:
            from_dict(ExpCfg, data)
        assert str(info.value) == message


def test_literal() -> None:
    assert from_dict(ModelCfg, {"arch": "resnet18"}).arch == "resnet18"
    with pytest.raises(ConfigError) as info:
        from_dict(ExpCfg, {"model": {"arch": "vit"}})
    assert str(info.value) == "model.arch: must be one of 'resnet18', 'resnet50', got 'vit'"
    assert info.value.key == "model.arch"


@dataclass
class ChoiceCfg:
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    layers: Literal[0, 1, 2] = 1
    norm: Optional[Literal["bn", "ln"]] = None
    model: ModelCfg = field(default_factory=ModelCfg)

    def validate(self) -> None:
        check_fields(self)


def test_literal_near_miss_suggests_a_choice() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ChoiceCfg, None, ["precision=bf61"])
    assert str(info.value) == ("precision: must be one of 'auto', 'fp32', 'bf16', 'fp16', got 'bf61'; "
                               "did you mean 'bf16'?")
    with pytest.raises(ConfigError, match=r"^precision: must be one of .*, got 'xyz'$"):  # nothing close: no guess
        load_config(ChoiceCfg, None, ["precision=xyz"])


def test_literal_of_ints_and_optional_literal(tmp_path: Path) -> None:
    assert load_config(ChoiceCfg, write(tmp_path / "c.yaml", "layers: 2\nnorm: ln\n")) == ChoiceCfg(layers=2, norm="ln")
    for value in ("3", "'1'", "true", "1.0"):  # an int choice takes that int only, not '1', True or 1.0
        with pytest.raises(ConfigError, match=r"^layers: must be one of 0, 1, 2, got "):
            load_config(ChoiceCfg, None, [f"layers={value}"])
    assert load_config(ChoiceCfg, None, ["norm=null"]).norm is None
    with pytest.raises(ConfigError) as info:
        load_config(ChoiceCfg, None, ["norm=lnn"])
    assert str(info.value) == "norm: must be one of 'bn', 'ln' (or null), got 'lnn'; did you mean 'ln'?"


def test_choices_of_a_config_built_in_python() -> None:
    """Values set in Python skip the loader's coercion: validate_config and check_fields still catch them."""
    bad = ChoiceCfg(model=ModelCfg(arch="resnet19"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        validate_config(bad)
    assert str(info.value) == ("model.arch: must be one of 'resnet18', 'resnet50', got 'resnet19'; "
                               "did you mean 'resnet18'?")
    with pytest.raises(ConfigError, match=r"^precision: must be one of .* got 'fp8'"):
        validate_config(ChoiceCfg(precision="fp8"))  # type: ignore[arg-type]
    # check_fields (for validate() of configs used without the loader) raises a plain ValueError naming the field.
    with pytest.raises(ValueError, match=r"^layers: must be one of 0, 1, 2, got 5$") as raised:
        ChoiceCfg(layers=5).validate()  # type: ignore[arg-type]
    assert not isinstance(raised.value, ConfigError)
    ChoiceCfg(norm="bn").validate()
    with pytest.raises(TypeError, match="dataclass instance"):
        check_fields(ChoiceCfg)


@dataclass
class RangeCfg:
    epochs: Annotated[int, Range(ge=1)] = 10
    lr: Annotated[float, Range(gt=0)] = 0.1
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.1
    clip: Annotated[Optional[float], Range(gt=0)] = None
    sizes: Annotated[list[int], Range(ge=32)] = field(default_factory=lambda: [224])
    scale: Annotated[tuple[float, float], Range(gt=0, le=1, ordered=True)] = (0.4, 1.0)

    def validate(self) -> None:
        check_fields(self)


def test_range_fields_are_checked_by_the_loader() -> None:
    assert load_config(RangeCfg, None, ["epochs=1", "clip=null", "sizes=[32,64]", "scale=[0.1,1.0]"]).epochs == 1
    for override, message in [
        ("epochs=0", "epochs: must be >= 1, got 0"),
        ("lr=0", "lr: must be > 0, got 0.0"),
        ("dropout=1.0", "dropout: must be in [0, 1), got 1.0"),
        ("clip=-1", "clip: must be > 0 or null, got -1.0"),
        ("sizes=[16,224]", "sizes: every item must be >= 32, got [16, 224]"),
        ("scale=[0.0,1.0]", "scale: every item must be in (0, 1], got (0.0, 1.0)"),
        ("scale=[0.9,0.5]", "scale: must be in non-decreasing order, got (0.9, 0.5)"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(RangeCfg, None, [override])
        assert str(info.value) == message and info.value.key == override.split("=")[0]


def test_range_fields_of_a_config_built_in_python() -> None:
    with pytest.raises(ValueError, match=r"^epochs: must be >= 1, got 0$") as raised:
        RangeCfg(epochs=0).validate()
    assert not isinstance(raised.value, ConfigError)
    with pytest.raises(ConfigError, match=r"^lr: must be > 0, got -0.5$"):
        validate_config(RangeCfg(lr=-0.5))
    assert [Range(ge=1).describe(), Range(gt=0, le=0.5).describe(), Range(lt=2).describe()] == [
        ">= 1", "in (0, 0.5]", "< 2"]


def test_every_range_of_the_shipped_schemas_holds_for_its_defaults() -> None:
    """The defaults are valid, and a bound that was only a combined hand check before names its own key now."""
    from densessl.det.finetune import DetConfig
    from densessl.seg.config import EvalSegConfig
    from densessl.train.config import Config

    for cls in (Config, EvalSegConfig, DetConfig):
        validate_config(cls())
    with pytest.raises(ConfigError, match=r"^train\.epochs: must be >= 1 or null, got 0$"):
        validate_config(merge(DetConfig(), {"train": {"epochs": 0, "max_iters": None}}))  # passed unchecked before
    with pytest.raises(ConfigError, match=r"^data\.multicrop\.blur_p: every item must be in \[0, 1\]"):
        validate_config(merge(Config(), {"data": {"multicrop": {"blur_p": [1.5, 0.1]}}}))


def test_updates_are_applied_after_the_overrides(tmp_path: Path) -> None:
    path = write(tmp_path / "exp.yaml", "seed: 1\noptim:\n  lr: 0.1\n")
    cfg = load_config(ExpCfg, path, ["seed=2", "optim.momentum=0.5"], {"seed": 3, "data": {"loss_weights": {"x": 2}}})
    assert cfg.seed == 3 and cfg.optim.lr == 0.1 and cfg.optim.momentum == 0.5
    assert cfg.data.loss_weights == {"dense": 1.0, "global": 1.0, "x": 2.0}  # merged like an override
    with pytest.raises(ConfigError, match=r"^optim: learning rate must be > 0"):  # and validated
        load_config(ExpCfg, path, (), {"optim": {"lr": -1.0}})
    with pytest.raises(ConfigError, match=r"^model\.arch: must be one of"):
        load_config(ExpCfg, path, (), {"model": {"arch": "vit"}})


def test_optional() -> None:
    cfg = from_dict(ExpCfg, {"epochs": 100, "model": {"pretrained": "ckpt.pt"}})
    assert cfg.epochs == 100 and cfg.model.pretrained == "ckpt.pt"
    cfg = merge(cfg, {"epochs": None, "model": {"pretrained": None}})
    assert cfg.epochs is None and cfg.model.pretrained is None
    with pytest.raises(ConfigError) as info:
        from_dict(ExpCfg, {"model": {"pretrained": 5}})
    assert str(info.value) == "model.pretrained: expected str | None, got 5 (int)"
    with pytest.raises(ConfigError, match=r"^epochs: expected int \| None, got 'x' \(str\)$"):
        from_dict(ExpCfg, {"epochs": "x"})
    # Optional nested dataclass: None by default, a mapping builds it, errors keep the path.
    assert load_config(ExpCfg, None, ["head.layers=3"]).head == HeadCfg(layers=3)
    with pytest.raises(ConfigError, match=r"^head\.hiden: unknown key; did you mean 'hidden'\?"):
        from_dict(ExpCfg, {"head": {"hiden": 1}})


def test_tuples_lists_dicts() -> None:
    cfg = from_dict(ExpCfg, {"optim": {"betas": [0.5, 1]}, "data": {"sizes": (1, 2), "crops": (3,)}})
    assert cfg.optim.betas == (0.5, 1.0) and isinstance(cfg.optim.betas[1], float)
    assert cfg.data.sizes == (1, 2) and cfg.data.crops == [3] and isinstance(cfg.data.crops, list)
    with pytest.raises(ConfigError, match=r"^optim\.betas: expected tuple\[float, float\] with 2 element\(s\), got 3"):
        from_dict(ExpCfg, {"optim": {"betas": [0.1, 0.2, 0.3]}})
    with pytest.raises(ConfigError) as info:
        from_dict(ExpCfg, {"data": {"crops": [1, "two"]}})
    assert str(info.value) == "data.crops[1]: expected int, got 'two' (str)"
    with pytest.raises(ConfigError, match=r"^data\.sizes: expected tuple\[int, \.\.\.\], got 224 \(int\)$"):
        from_dict(ExpCfg, {"data": {"sizes": 224}})
    with pytest.raises(ConfigError, match=r"^data\.loss_weights\.dense: expected float, got 'x' \(str\)$"):
        from_dict(ExpCfg, {"data": {"loss_weights": {"dense": "x"}}})
    # from_dict: a dict field's mapping is its whole value
    assert from_dict(ExpCfg, {"data": {"loss_weights": {"a": 1}}}).data.loss_weights == {"a": 1.0}


def test_missing_required_field() -> None:
    @dataclass
    class Needs:
        x: int
        y: int = 0

    with pytest.raises(ConfigError, match=r"^sub\.x: missing required value"):
        from_dict(Needs, {"y": 1}, prefix="sub")
    assert from_dict(Needs, {"x": 2}) == Needs(x=2)


# --------------------------------------------------------------------------- #
# validate()
# --------------------------------------------------------------------------- #


def test_validate_errors_are_wrapped_with_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ExpCfg, None, ["model.out_dim=0"])
    assert str(info.value) == "model.out_dim: must be positive, got 0"  # "field: ..." -> field path
    with pytest.raises(ConfigError) as info:
        load_config(ExpCfg, None, ["optim.lr=-1"])
    assert str(info.value) == "optim: learning rate must be > 0, got -1.0"
    with pytest.raises(ConfigError, match=r"^<root>: resnet18 supports out_dim <= 512$"):
        load_config(ExpCfg, None, ["model.arch=resnet18", "model.out_dim=1024"])


CALLS: list[str] = []


@dataclass
class Leaf:
    tag: str = "leaf"

    def validate(self) -> None:
        CALLS.append(self.tag)


@dataclass
class Mid:
    a: Leaf = field(default_factory=lambda: Leaf("a"))
    items: list[Leaf] = field(default_factory=lambda: [Leaf("i0")])

    def validate(self) -> None:
        CALLS.append("mid")


@dataclass
class Top:
    mid: Mid = field(default_factory=Mid)
    b: Leaf = field(default_factory=lambda: Leaf("b"))

    def validate(self) -> None:
        CALLS.append("top")


def test_validate_post_order() -> None:
    CALLS.clear()
    load_config(Top)
    assert CALLS == ["a", "i0", "mid", "b", "top"]


# --------------------------------------------------------------------------- #
# _base_ inheritance
# --------------------------------------------------------------------------- #


def test_base_inheritance(tmp_path: Path) -> None:
    write(tmp_path / "base" / "default.yaml", "seed: 1\noptim:\n  lr: 0.1\n  momentum: 0.7\ndata:\n  loss_weights: {dense: 2.0}\n")
    write(tmp_path / "base" / "small.yaml", "_base_: default.yaml\nmodel:\n  arch: resnet18\nseed: 2\n")
    write(tmp_path / "base" / "other.yaml", "name: other\nseed: 3\n")
    exp = write(
        tmp_path / "exp" / "run.yaml",
        "_base_: [../base/small.yaml, ../base/other.yaml]\noptim:\n  lr: 0.2\ndata:\n  loss_weights: {global: 0.5}\n",
    )
    cfg = load_config(ExpCfg, exp, ["optim.momentum=0.9"])
    assert cfg.model.arch == "resnet18"
    assert cfg.seed == 3 and cfg.name == "other"  # later base wins over earlier
    assert cfg.optim.lr == 0.2  # file wins over base
    assert cfg.optim.momentum == 0.9  # CLI wins over everything
    assert cfg.data.loss_weights == {"dense": 2.0, "global": 0.5}  # mappings deep-merged


def test_base_cycle_detected(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "_base_: b.yaml\nseed: 1\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"_base_ inclusion cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(ExpCfg, tmp_path / "a.yaml")
    write(tmp_path / "self.yaml", "_base_: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(ExpCfg, tmp_path / "self.yaml")


def test_base_diamond_is_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path / "root.yaml", "seed: 5\n")
    write(tmp_path / "l.yaml", "_base_: root.yaml\n")
    write(tmp_path / "r.yaml", "_base_: root.yaml\n")
    write(tmp_path / "exp.yaml", "_base_: [l.yaml, r.yaml]\n")
    assert load_config(ExpCfg, tmp_path / "exp.yaml").seed == 5


def test_base_errors(tmp_path: Path) -> None:
    write(tmp_path / "exp.yaml", "_base_: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found \(in _base_ of .*exp\.yaml\)"):
        load_config(ExpCfg, tmp_path / "exp.yaml")
    write(tmp_path / "bad.yaml", "_base_: 3\n")
    with pytest.raises(ConfigError, match=r"^_base_: in .*bad\.yaml: expected a path or a list of paths"):
        load_config(ExpCfg, tmp_path / "bad.yaml")


# --------------------------------------------------------------------------- #
# to_dict / save_config / merge
# --------------------------------------------------------------------------- #


def _custom_cfg() -> ExpCfg:
    cfg = load_config(ExpCfg, None, ["name=run-1", "epochs=10", "head.hidden=512", "optim.betas=[0.8,0.9]"])
    # a dict field with a default key removed must survive the round trips too
    return dataclasses.replace(cfg, data=DataCfg(sizes=(64,), loss_weights={"a": 1.0}))


def _assert_plain(obj: object) -> None:
    assert obj is None or type(obj) in (dict, list, str, int, float, bool), type(obj)
    if isinstance(obj, dict):
        for key, value in obj.items():
            assert isinstance(key, str)
            _assert_plain(value)
    elif isinstance(obj, list):
        for value in obj:
            _assert_plain(value)


def test_to_dict_round_trip_and_torch_weights_only(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    cfg = _custom_cfg()
    plain = to_dict(cfg)
    _assert_plain(plain)
    assert list(plain) == [f.name for f in dataclasses.fields(ExpCfg)]
    assert plain["optim"]["betas"] == [0.8, 0.9]
    assert from_dict(ExpCfg, plain) == cfg
    torch.save({"config": plain}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert from_dict(ExpCfg, loaded["config"]) == cfg


def test_save_then_load_gives_equal_config(tmp_path: Path) -> None:
    cfg = merge(_custom_cfg(), {"name": "1e-3", "model": {"pretrained": "yes"}})  # strings that look like numbers/bools
    out = tmp_path / "runs" / "r1" / "config.yaml"
    save_config(cfg, out)
    assert load_config(ExpCfg, out) == cfg
    assert list(yaml.safe_load(out.read_text())) == [f.name for f in dataclasses.fields(ExpCfg)]
    assert os.listdir(out.parent) == ["config.yaml"]  # no temporary file left behind
    save_config(ExpCfg(), out)  # overwrite in place
    assert load_config(ExpCfg, out) == ExpCfg()


def test_merge_does_not_mutate_base() -> None:
    base = ExpCfg()
    snapshot = to_dict(base)
    new = merge(base, {"optim": {"lr": 0.01}, "data": {"loss_weights": {"dense": 0.1}}})
    assert to_dict(base) == snapshot
    assert new.optim.lr == 0.01 and new.optim.momentum == base.optim.momentum
    assert new.data.loss_weights == {"dense": 0.1, "global": 1.0}
    new.data.crops.append(99)  # no shared mutable state
    assert base.data.crops == [2, 6]
    with pytest.raises(ConfigError, match=r"^optim\.lrr: unknown key"):
        merge(base, {"optim": {"lrr": 1}})


# --------------------------------------------------------------------------- #
# File errors
# --------------------------------------------------------------------------- #


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=rf"^{missing}: config file not found$"):
        load_config(ExpCfg, missing)


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "seed: 1\noptim:\n  lr: [0.1\n  momentum: 0.9\n")
    with pytest.raises(ConfigError) as info:
        load_config(ExpCfg, path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:") and "YAML syntax error" in msg
    line = int(msg[len(str(path)) + 1 :].split(":")[0])
    assert 3 <= line <= 5


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: top level of a config file must be a mapping, got list"):
        load_config(ExpCfg, path)


def test_duplicate_keys_are_an_error_naming_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.yaml", "seed: 1\noptim:\n  lr: 0.1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:4:1: .*duplicate key 'seed' \(first defined on line 1\)"):
        load_config(ExpCfg, path)
