"""densessl.weights: the backbone export (model.safetensors + timm config.json), reading every accepted file, clear
errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from densessl.backbones import DenseBackbone
from densessl.weights import (
    FORMAT,
    BackboneWeights,
    export_folder,
    load_backbone_weights,
    read_backbone_weights,
    resolve_arch,
    save_backbone,
    weights_file,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "pretrain" / "_tiny_test.yaml"
CONFIG = {"method": "vicregl", "model": {"arch": "resnet18", "levels": [-1]}, "optim": {"base_lr": 0.3}}


class NotATensor:
    """A custom class: a file pickling it must be refused, never unpickled."""


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)  # safetensors stores keys sorted
    for key, value in a.items():
        assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_export_round_trip(tmp_path: Path, arch: str) -> None:
    backbone = DenseBackbone(arch)
    expected = backbone.model.state_dict()
    config = {**CONFIG, "model": {**CONFIG["model"], "arch": arch}}
    run = tmp_path / "run"
    exported = save_backbone(backbone.model, export_folder(run), arch, config)
    assert exported.folder == run / "export" and exported.safetensors == run / "export" / "model.safetensors"
    assert sorted(p.name for p in exported.folder.iterdir()) == ["config.json", "model.safetensors"]  # one copy

    from_safetensors = read_backbone_weights(exported.safetensors)
    _assert_same(from_safetensors.state_dict, expected)
    assert from_safetensors.arch == arch and from_safetensors.config == config
    assert from_safetensors.source == "densessl backbone export"
    assert from_safetensors.arch_origin == "model.safetensors metadata"
    # The run folder and the export folder name the same file.
    assert weights_file(run) == weights_file(exported.folder) == exported.safetensors
    _assert_same(read_backbone_weights(run).state_dict, expected)

    # timm loads the export folder itself, strictly, with the same outputs; plain safetensors reads the file.
    model = timm.create_model(f"local-dir:{exported.folder}", pretrained=True).eval()
    assert type(model) is type(backbone.model) and model.num_classes == 0
    x = torch.randn(1, 3, 64, 64) if arch == "resnet18" else torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), backbone.model.eval()(x))
    _assert_same(load_file(exported.safetensors), expected)
    with safe_open(str(exported.safetensors), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["arch"] == arch and metadata["format"] == FORMAT and metadata["densessl_version"]
    assert json.loads(metadata["config"]) == config
    timm_config = json.loads(exported.config.read_text())
    assert timm_config["architecture"] == arch and timm_config["num_classes"] == 0
    assert timm_config["densessl"]["format"] == FORMAT
    # Provenance of timm's default ImageNet weights does not describe these weights.
    assert not {"tag", "license", "origin_url", "paper_ids"} & set(timm_config["pretrained_cfg"])
    if arch.startswith("vit"):  # densessl builds ViTs with dynamic_img_size=True; the export rebuilds them so
        assert timm_config["model_args"]["dynamic_img_size"] is True

    # A DenseBackbone (a DenseBackbone passed to save_backbone is unwrapped too) needs no arch.
    again = save_backbone(backbone, tmp_path / "again", arch, None)
    assert read_backbone_weights(again.safetensors).config is None
    rebuilt = DenseBackbone(weights=run)
    assert rebuilt.arch == arch
    _assert_same(rebuilt.model.state_dict(), expected)


def test_run_folders_of_the_older_export_layout_are_read(tmp_path: Path) -> None:
    """RUN/backbone.safetensors (arch in its metadata) or RUN/backbone.pt + RUN/backbone.json (arch in the json)."""
    from safetensors.torch import save_file

    state = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    both, pt_only = tmp_path / "both", tmp_path / "pt_only"
    for run in (both, pt_only):
        run.mkdir()
        torch.save(state, run / "backbone.pt")
        (run / "backbone.json").write_text(json.dumps({"arch": "resnet18", "config": CONFIG,
                                                       "files": ["backbone.safetensors", "backbone.pt"]}))
    save_file(state, str(both / "backbone.safetensors"), metadata={"format": FORMAT, "arch": "resnet18",
                                                                   "config": json.dumps(CONFIG)})
    assert weights_file(both) == both / "backbone.safetensors" and weights_file(pt_only) == pt_only / "backbone.pt"
    for run, origin in ((both, "backbone.safetensors metadata"), (pt_only, "backbone.json")):
        read = read_backbone_weights(run)
        assert read.arch == "resnet18" and read.arch_origin == origin and read.config == CONFIG
        _assert_same(read.state_dict, state)
        assert DenseBackbone(weights=run).arch == "resnet18"


def test_a_timm_model_folder_states_its_architecture_in_config_json(tmp_path: Path) -> None:
    """A folder as timm/Hugging Face save it (model.safetensors without densessl metadata, config.json, a classifier
    head): the architecture comes from config.json and the head is skipped on load."""
    from safetensors.torch import save_file

    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 10}))
    read = read_backbone_weights(tmp_path)
    assert read.arch == "resnet18" and read.arch_origin == "config.json" and read.source == "safetensors state dict"
    backbone = DenseBackbone(weights=tmp_path)
    assert torch.equal(backbone.model.conv1.weight, model.conv1.weight)


def test_a_folder_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("method: vicregl\n")
    with pytest.raises(ValueError, match=r"weights folder .* holds no weights file \(looked for model.safetensors, "
                                         r"export/model.safetensors, backbone.safetensors, backbone.pt\)"):
        read_backbone_weights(tmp_path)


def test_export_of_shared_and_non_contiguous_tensors(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight  # tied: two keys, one storage
            self.register_buffer("t", torch.arange(12.0).reshape(3, 4).t())  # non-contiguous
            self.register_buffer("part", torch.arange(10.0)[2:6])  # a view of a larger storage

    model = Tied()
    exported = save_backbone(model, tmp_path, "resnet18")
    read = read_backbone_weights(exported.safetensors)
    assert set(read.state_dict) == {"a.weight", "b.weight", "t", "part"}
    for key, value in model.state_dict().items():
        assert torch.equal(read.state_dict[key], value)
    assert torch.equal(load_file(exported.safetensors)["part"], torch.arange(2.0, 6.0))


def test_export_replaces_an_earlier_export(tmp_path: Path) -> None:
    save_backbone(nn.Linear(2, 2), tmp_path, "resnet18")
    save_backbone(nn.Linear(3, 3), tmp_path, "resnet34")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temporary files
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == "resnet34"
    read = read_backbone_weights(tmp_path)
    assert read.arch == "resnet34" and read.state_dict["weight"].shape == (3, 3)
    with pytest.raises(ValueError, match="architecture name"):
        save_backbone(nn.Linear(2, 2), tmp_path, "")


def _checkpoint(backbone: DenseBackbone, layout: str) -> dict:
    """A training checkpoint laid out as densessl's pretraining saves it (Pretrainer state dict under 'model')."""
    student = {f"backbone.model.{k}": v for k, v in backbone.model.state_dict().items()}
    teacher = {f"teacher_backbone.model.{k}": torch.zeros_like(v) for k, v in backbone.model.state_dict().items()}
    model = {**student, **teacher, "objective.projector.0.weight": torch.randn(8, 512)}
    common = {"iteration": 7, "epoch": 1, "model": model, "optimizer": {"state": {}, "param_groups": []},
              "config": {**CONFIG, "model": {"arch": "resnet18"}}}
    if layout == "v2":  # densessl.train.engine.save_checkpoint
        return {"format": "densessl-checkpoint-v2", "recipe": "pretrain", "world_size": 1, "accumulate": 1,
                "rng": {"torch": torch.get_rng_state()}, "arch": "resnet18", **common}
    return {"densessl_version": 1, **common}  # the earlier layout, arch only in the config


@pytest.mark.parametrize("layout", ["v2", "v1"])
def test_training_checkpoint_gives_the_student_backbone(tmp_path: Path, layout: str) -> None:
    backbone = DenseBackbone("resnet18")
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    torch.save(_checkpoint(backbone, layout), path)
    read = read_backbone_weights(path)
    _assert_same(read.state_dict, backbone.model.state_dict())
    assert read.arch == "resnet18" and read.config["optim"] == {"base_lr": 0.3}
    assert read.source == "densessl training checkpoint (iteration 7)"
    assert read.arch_origin == ("checkpoint" if layout == "v2" else "checkpoint config")
    loaded = DenseBackbone(weights=path)
    _assert_same(loaded.model.state_dict(), backbone.model.state_dict())


def test_checkpoint_of_a_real_tiny_pretraining_run(tmp_path: Path) -> None:
    from densessl.train.config import load_config
    from densessl.train.pretrain import train

    result = train(load_config(TINY, ["train.max_iters=2"]), tmp_path / "run")
    assert result.backbone_path == tmp_path / "run" / "export" / "model.safetensors"
    # A finished run keeps one export, last.pt and stable.pt (a hard link); previous.pt is dropped.
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) in (["last.pt"],
                                                                                    ["last.pt", "stable.pt"])
    export = read_backbone_weights(result.backbone_path)
    checkpoint = read_backbone_weights(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint.source == "densessl training checkpoint (iteration 2)" and checkpoint.arch == "resnet18"
    assert export.arch == "resnet18" and export.config == checkpoint.config
    _assert_same(checkpoint.state_dict, export.state_dict)  # the export is the checkpoint's student backbone


def test_wrapped_state_dicts(tmp_path: Path) -> None:
    state = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    for name, obj, source in [
        ("sd.pth", {"state_dict": state, "epoch": 3}, "state dict under 'state_dict'"),
        ("model.pt", {"model": state}, "state dict under 'model'"),
        ("ddp.pt", {f"module.{k}": v for k, v in state.items()}, "timm state dict (DDP 'module.' prefix removed)"),
    ]:
        torch.save(obj, tmp_path / name)
        read = read_backbone_weights(tmp_path / name)
        assert read.source == source and read.arch is None
        _assert_same(read.state_dict, state)
    torch.save({"arch": "resnet18", "state_dict": state}, tmp_path / "with_arch.pt")
    assert read_backbone_weights(tmp_path / "with_arch.pt").arch == "resnet18"
    # backbone.json only speaks for the files it lists.
    (tmp_path / "backbone.json").write_text(json.dumps({"arch": "resnet50", "files": ["backbone.pt"]}))
    assert read_backbone_weights(tmp_path / "model.pt").arch is None


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    good = tmp_path / "good.pt"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(), good)
    data = good.read_bytes()
    cases = {
        "text": b"hello, I am a text file\n",
        "random": bytes((i * 37 + 11) % 256 for i in range(4096)),
        "truncated": data[: len(data) // 2],
        "damaged": data[:2000] + bytes(b ^ 0xFF for b in data[2000:2100]) + data[2100:],
        "empty": b"",
        "plain_pickle": pickle.dumps({"weight": [1.0, 2.0]}, protocol=4),
    }
    for name, content in cases.items():
        files[name] = tmp_path / f"{name}.pt"
        files[name].write_bytes(content)
    files["object"] = tmp_path / "object.pt"
    torch.save({"weight": torch.ones(2), "extra": NotATensor()}, files["object"])
    files["empty_dict"] = tmp_path / "empty_dict.pt"
    torch.save({}, files["empty_dict"])
    files["not_tensors"] = tmp_path / "not_tensors.pt"
    torch.save({"lr": 0.1, "epochs": 3}, files["not_tensors"])
    files["tensor"] = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), files["tensor"])
    exported = save_backbone(nn.Linear(8, 8), tmp_path / "export", "resnet18")
    files["damaged_safetensors"] = tmp_path / "damaged.safetensors"
    files["damaged_safetensors"].write_bytes(exported.safetensors.read_bytes()[:-10])
    files["directory"] = tmp_path / "empty_folder"
    files["directory"].mkdir()
    return files


@pytest.mark.parametrize(("case", "message"), [
    ("text", "is not a torch or safetensors weights file (it starts with bytes b'hello, I am a te';"),
    ("random", "is not a torch or safetensors weights file (it starts with bytes b'\\x0b"),
    ("truncated", "is damaged or truncated"),
    ("damaged", "is damaged"),
    ("empty", "is empty (0 bytes)"),
    ("plain_pickle", "is a Python pickle but not a torch weights file"),
    ("object", "holds Python objects other than tensors (tests.test_weights.NotATensor); densessl never unpickles"),
    ("empty_dict", "holds an empty dict"),
    ("not_tensors", "is not a state dict of tensors: it holds float, int values"),
    ("tensor", "holds a Tensor, not a state dict"),
    ("damaged_safetensors", "is a damaged or truncated safetensors file"),
    ("directory", "holds no weights file (looked for model.safetensors"),
])
def test_bad_files_give_one_clear_error(tmp_path: Path, case: str, message: str) -> None:
    path = _bad_files(tmp_path)[case]
    with pytest.raises(ValueError) as info:
        read_backbone_weights(path)
    text = str(info.value)
    assert message in text and str(path) in text
    assert "weights_only" not in text and "\n" not in text and "KeyError" not in text
    with pytest.raises(ValueError):  # the same through DenseBackbone
        DenseBackbone("resnet18", weights=path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="backbone weights file not found: .*nope.safetensors"):
        read_backbone_weights(tmp_path / "nope.safetensors")


def test_load_names_both_architectures_when_keys_do_not_fit(tmp_path: Path) -> None:
    exported = save_backbone(timm.create_model("resnet34", pretrained=False, num_classes=0), tmp_path, "resnet34")
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    with pytest.raises(ValueError, match=r"weights are for 'resnet34' \(from model.safetensors metadata\) but the "
                                         r"model is 'resnet18'; \d+ missing keys"):
        load_backbone_weights(model, exported.safetensors)
    # A file without an architecture: the key report alone.
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="does not fit resnet18: 0 missing keys") as info:
        load_backbone_weights(model, tmp_path / "plain.pt")
    assert "weights are for" not in str(info.value) and "unexpected keys ['layer1.2." in str(info.value)


def test_resolve_arch() -> None:
    stated = BackboneWeights({}, "resnet50", None, "densessl backbone export", Path("r/backbone.safetensors"),
                             "backbone.safetensors metadata")
    unstated = BackboneWeights({}, None, None, "timm state dict", Path("r50.pth"))
    assert resolve_arch(None, stated) == "resnet50"
    assert resolve_arch("resnet50", stated) == "resnet50"
    assert resolve_arch("resnet50.a1_in1k", stated) == "resnet50.a1_in1k"  # a pretrained tag is the same model
    assert resolve_arch("resnet18", unstated) == "resnet18" and resolve_arch("resnet18", None) == "resnet18"
    with pytest.raises(ValueError, match=r"--arch resnet18 does not match weights file 'r/backbone.safetensors': the "
                                         r"weights are for 'resnet50' \(from backbone.safetensors metadata\)"):
        resolve_arch("resnet18", stated)
    with pytest.raises(ValueError, match=r"'r50.pth' \(timm state dict\) states no architecture; pass --arch"):
        resolve_arch(None, unstated)
    with pytest.raises(ValueError, match="random weights need an architecture: pass --arch"):
        resolve_arch(None, None)


def test_run_label_names_the_run_folder() -> None:
    from densessl.weights import run_label

    for path in ("runs/x", "runs/x/", "runs/x/export", "runs/x/export/model.safetensors", "runs/x/checkpoints/last.pt",
                 "runs/x/backbone.safetensors", "runs/x/backbone.pt"):
        assert run_label(path) == "x", path
    assert run_label("random") == "random" and run_label("/w/resnet50_alpha0p75.pth") == "resnet50_alpha0p75"
