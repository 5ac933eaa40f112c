"""mmsegmentation plugin: registration, backbone maps/freezing/weights, LinearHead, datasets, configs, end to end."""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mmengine.config import Config  # noqa: E402, I001
from mmseg.registry import DATASETS, MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402
from PIL import Image

from densessl.backbones import DenseBackbone
from densessl.seg.mmseg_plugin import (  # first: installs the mmcv.ops stand-in that mmseg needs on mmcv-lite
    DenseSSLBackbone,
    FolderSegDataset,
    LinearHead,
    SyntheticSegDataset,
    render_synthetic_folder,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs" / "mmseg"
CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.py"))
SYNTHETIC_LINEAR = CONFIG_DIR / "linear_densessl-r18_frozen_128x128_300it_synthetic.py"
SYNTHETIC_UPERNET = CONFIG_DIR / "upernet_densessl-r18_finetune_128x128_300it_synthetic.py"

register_all_modules(init_default_scope=True)  # what mmseg's Runner does; needed to build models outside of it


def _tiny_run_options(tmp_path: Path, iters: int = 4, batch: int = 4) -> dict:
    """Overrides that shrink a synthetic config to a few iterations on a handful of images."""
    data_root = str(tmp_path / "synthetic")
    return {
        "train_cfg.max_iters": iters,
        "train_cfg.val_interval": iters,
        "param_scheduler.0.end": iters,
        "default_hooks.logger.interval": 2,
        "default_hooks.checkpoint.interval": iters,
        "train_dataloader.batch_size": batch,
        "train_dataloader.dataset.num_images": 2 * batch,
        "train_dataloader.dataset.data_root": data_root,
        "val_dataloader.batch_size": batch,
        "val_dataloader.dataset.num_images": batch,
        "val_dataloader.dataset.data_root": data_root,
        "test_dataloader.dataset.num_images": batch,
        "test_dataloader.dataset.data_root": data_root,
    }


def test_everything_is_registered() -> None:
    assert MODELS.get("DenseSSLBackbone") is DenseSSLBackbone
    assert MODELS.get("LinearHead") is LinearHead
    assert DATASETS.get("FolderSegDataset") is FolderSegDataset
    assert DATASETS.get("SyntheticSegDataset") is SyntheticSegDataset


@pytest.mark.parametrize("arch,levels,channels,strides", [
    ("resnet18", (-4, -3, -2, -1), [64, 128, 256, 512], [4, 8, 16, 32]),
    ("vit_tiny_patch16_224", (-2, -1), [192, 192], [16, 16]),
])
def test_backbone_returns_tuple_of_nchw_maps(arch: str, levels: tuple[int, ...], channels: list[int],
                                             strides: list[int]) -> None:
    backbone = MODELS.build(dict(type="DenseSSLBackbone", arch=arch, levels=levels))
    assert backbone.channels == channels and backbone.strides == strides
    out = backbone(torch.randn(2, 3, 64, 96))
    assert isinstance(out, tuple)
    assert [tuple(m.shape) for m in out] == [(2, c, 64 // s, 96 // s) for c, s in zip(channels, strides)]


def test_frozen_backbone_has_no_grads_and_stays_in_eval_mode() -> None:
    backbone = DenseSSLBackbone("resnet18", frozen=True)
    backbone.train()
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not any(m.training for m in backbone.backbone.modules())
    out = backbone(torch.randn(2, 3, 64, 64))
    assert not any(m.requires_grad for m in out)
    running_mean = backbone.backbone.model.bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(backbone.backbone.model.bn1.running_mean, running_mean)  # BN statistics fixed


def test_trainable_backbone_and_norm_eval() -> None:
    tuned = DenseSSLBackbone("resnet18", frozen=False).train()
    assert all(p.requires_grad for p in tuned.parameters()) and tuned.backbone.model.bn1.training
    out = tuned(torch.randn(2, 3, 64, 64))
    out[-1].mean().backward()
    assert tuned.backbone.model.conv1.weight.grad is not None
    norm_eval = DenseSSLBackbone("resnet18", frozen=False, norm_eval=True).train()
    assert not norm_eval.backbone.model.bn1.training and norm_eval.backbone.model.layer1.training
    assert all(p.requires_grad for p in norm_eval.parameters())


def test_weights_load_and_survive_init_weights(tmp_path: Path) -> None:
    source = DenseSSLBackbone("resnet18").backbone.model
    with torch.no_grad():
        source.conv1.weight.fill_(0.125)
    path = tmp_path / "backbone.pt"
    torch.save(source.state_dict(), path)
    cfg = Config.fromfile(SYNTHETIC_LINEAR)
    cfg.model.backbone.weights = str(path)
    model = MODELS.build(cfg.model)
    model.init_weights()  # what mmengine's Runner does: must not re-initialise the loaded backbone
    torch.testing.assert_close(model.backbone.backbone.model.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(model.backbone.backbone.model.layer4[1].bn2.running_var,
                               source.layer4[1].bn2.running_var)


def test_bad_weights_and_init_cfg_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        DenseSSLBackbone("resnet18", weights=tmp_path / "nope.pt")
    torch.save(DenseSSLBackbone("resnet34").backbone.model.state_dict(), tmp_path / "r34.pt")
    with pytest.raises(ValueError, match="does not fit"):
        DenseSSLBackbone("resnet18", weights=tmp_path / "r34.pt")
    with pytest.raises(ValueError, match="weights"):
        DenseSSLBackbone("resnet18", init_cfg=dict(type="Pretrained", checkpoint="x.pth"))


def test_linear_head_resize_concat_and_single_map() -> None:
    feats = (torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4))
    head = LinearHead(in_channels=[8, 16, 32], in_index=[0, 1, 2], input_transform="resize_concat", num_classes=5,
                      norm_cfg=dict(type="BN", requires_grad=True))
    assert isinstance(head.bn, torch.nn.BatchNorm2d) and head.bn.num_features == 56
    assert head.conv_seg.in_channels == 56
    assert head(feats).shape == (2, 5, 16, 16)
    single = LinearHead(in_channels=32, in_index=2, num_classes=5, norm_cfg=None)
    assert single(feats).shape == (2, 5, 4, 4)
    with pytest.raises(ValueError, match="no hidden layer"):
        LinearHead(in_channels=32, channels=64, in_index=2, num_classes=5)
    with pytest.raises(ValueError, match="resize_concat"):
        LinearHead(in_channels=[8, 16], in_index=[0, 1], num_classes=5)


def _write_folder(root: Path, sizes: dict[str, int]) -> None:
    (root / "classes.txt").write_text("sky\nground\nthing\n")
    rng = np.random.default_rng(0)
    for split, count in sizes.items():
        (root / "images" / split / "sub").mkdir(parents=True)
        (root / "masks" / split / "sub").mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                root / "images" / split / "sub" / f"{i}.jpg")
            mask = rng.integers(0, 3, (40, 48), dtype=np.uint8)
            mask[0] = 255
            Image.fromarray(mask).save(root / "masks" / split / "sub" / f"{i}.png")


def test_folder_dataset_reads_classes_and_pairs(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"train": 3, "val": 1})
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
    dataset = DATASETS.build(dict(type="FolderSegDataset", data_root=str(tmp_path), split="train", pipeline=pipeline))
    assert len(dataset) == 3 and dataset.metainfo["classes"] == ("sky", "ground", "thing")
    sample = dataset[0]
    assert tuple(sample["inputs"].shape) == (3, 40, 48)
    mask = sample["data_samples"].gt_sem_seg.data
    assert tuple(mask.shape) == (1, 40, 48) and set(mask.unique().tolist()) <= {0, 1, 2, 255}
    assert len(FolderSegDataset(tmp_path, split="val")) == 1

    (tmp_path / "masks" / "train" / "sub" / "1.png").unlink()
    with pytest.raises(ValueError, match="sub/1.jpg"):
        FolderSegDataset(tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        FolderSegDataset(tmp_path / "missing_dir", split="train")


def test_synthetic_dataset_renders_once_and_reuses(tmp_path: Path) -> None:
    folder = render_synthetic_folder(tmp_path, "val", 3, (48, 64), seed=1)
    assert folder == tmp_path / "48x64-seed1-val3"
    first = (folder / "images" / "val" / "000000.png").stat().st_mtime_ns
    dataset = SyntheticSegDataset(data_root=tmp_path, split="val", num_images=3, size=(48, 64), seed=1)
    classes = dataset.metainfo["classes"]
    assert len(dataset) == 3 and len(classes) == 7 and classes[0] == "background"
    assert (folder / "images" / "val" / "000000.png").stat().st_mtime_ns == first  # reused, not rendered again
    mask = np.array(Image.open(folder / "masks" / "val" / "000002.png"))
    assert mask.shape == (48, 64) and mask.max() < 7
    assert len(SyntheticSegDataset(data_root=tmp_path, split="val", num_images=2, size=(48, 64), seed=1)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["48x64-seed1-val2", "48x64-seed1-val3"]  # no temp left


@functools.lru_cache(maxsize=None)
def _backbone_channels(arch: str, levels: tuple[int, ...], kwargs: tuple[tuple[str, object], ...]) -> list[int]:
    return DenseBackbone(arch, levels=levels, model_kwargs=dict(kwargs)).channels


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_parses_and_heads_fit_the_backbone(config: Path) -> None:
    cfg = Config.fromfile(config)
    backbone = cfg.model.backbone
    assert backbone.type == "DenseSSLBackbone" and backbone.weights is None
    assert "densessl.seg.mmseg_plugin" in cfg.custom_imports["imports"]
    assert cfg.train_cfg.max_iters > 0 and cfg.val_evaluator.type == "IoUMetric"
    assert ("_frozen_" in config.name) == backbone.frozen, "the file name says frozen/finetune"
    # The heads' in_channels must match what the backbone returns at their in_index (checked without a forward).
    kwargs = tuple(sorted((backbone.get("model_kwargs") or {}).items()))
    channels = _backbone_channels(backbone.arch, tuple(backbone.levels), kwargs)
    for name in ("decode_head", "auxiliary_head"):
        head = cfg.model.get(name)
        if head is None:
            continue
        several = isinstance(head.in_index, (list, tuple))
        wanted = [channels[i] for i in head.in_index] if several else channels[head.in_index]
        given = list(head.in_channels) if several else head.in_channels
        assert given == wanted, f"{config.name}: model.{name}.in_channels"


@pytest.mark.parametrize("config", [
    "linear_densessl-r50_frozen_512x512_40k_voc12aug.py",
    "fcn_densessl-r50-d8_finetune_512x1024_80k_cityscapes.py",
    "upernet_densessl-r50_frozen_512x512_160k_ade20k.py",
    "linear_densessl-vits16_frozen_512x512_40k_voc12aug.py",
])
def test_model_builds_and_runs_for_each_head_type(config: str) -> None:
    cfg = Config.fromfile(CONFIG_DIR / config)
    # Tiny version of the same model: resnet18 (or a ViT-tiny) with narrower heads, BN instead of SyncBN.
    vit = "vit" in cfg.model.backbone.arch
    cfg.model.backbone.arch = "vit_tiny_patch16_224" if vit else "resnet18"
    r18 = [192] * 4 if vit else [64, 128, 256, 512]
    for name in ("decode_head", "auxiliary_head"):
        head = cfg.model.get(name)
        if head is None:
            continue
        index = head.in_index if isinstance(head.in_index, (list, tuple)) else [head.in_index]
        head.in_channels = [r18[i] for i in index] if isinstance(head.in_index, (list, tuple)) else r18[head.in_index]
        head.norm_cfg = dict(type="BN", requires_grad=True)
        if head.type != "LinearHead":
            head.channels = 16
    model = MODELS.build(cfg.model)
    model.init_weights()
    num_classes = cfg.model.decode_head.num_classes
    model.eval()
    with torch.no_grad():
        logits = model._forward(torch.randn(1, 3, 64, 64))
    assert logits.shape[:2] == (1, num_classes)
    assert model.backbone.frozen == cfg.model.backbone.frozen


@pytest.mark.slow
def test_synthetic_config_trains_and_evaluates(tmp_path: Path) -> None:
    from mmengine.runner import Runner

    cfg = Config.fromfile(SYNTHETIC_UPERNET)  # fine-tuned backbone + UPerHead + auxiliary FCNHead
    cfg.merge_from_dict(_tiny_run_options(tmp_path, iters=2, batch=2))
    cfg.work_dir = str(tmp_path / "work")
    runner = Runner.from_cfg(cfg)
    conv1 = runner.model.backbone.backbone.model.conv1.weight.detach().clone()
    runner.train()
    assert not torch.equal(runner.model.backbone.backbone.model.conv1.weight, conv1)  # the backbone was trained
    metrics = runner.val()
    assert {"mIoU", "aAcc", "mAcc"} <= set(metrics) and 0.0 <= metrics["mIoU"] <= 100.0
    assert (tmp_path / "work" / "iter_2.pth").is_file()
    assert (tmp_path / "synthetic" / "128x128-seed0-train4" / "classes.txt").is_file()


@pytest.mark.slow
def test_finetune_seg_tool_end_to_end(tmp_path: Path) -> None:
    source = DenseSSLBackbone("resnet18").backbone.model
    weights = tmp_path / "backbone.pt"
    torch.save(source.state_dict(), weights)
    options = [f"{k}={v}" for k, v in _tiny_run_options(tmp_path).items()]
    options.append(f"model.backbone.weights={weights}")
    work = tmp_path / "work"
    env = dict(os.environ)  # OMP_NUM_THREADS: this worker's share (tests/conftest.py)
    command = [sys.executable, str(REPO / "tools" / "finetune_seg.py"), str(SYNTHETIC_LINEAR),
               "--work-dir", str(work), "--cfg-options", *options]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "mIoU=" in result.stdout
    metrics = json.loads((work / "metrics.json").read_text())
    assert {"mIoU", "aAcc", "mAcc"} <= set(metrics)
    checkpoint = torch.load(work / "iter_4.pth", map_location="cpu", weights_only=False)
    torch.testing.assert_close(checkpoint["state_dict"]["backbone.backbone.model.conv1.weight"],
                               source.conv1.weight)  # our weights were used, and stayed frozen

    # --resume finds the last checkpoint in the work dir (mmengine's own file: needs weights_only=False).
    more = [o for o in options if not o.startswith(("train_cfg.", "param_scheduler.", "default_hooks.checkpoint"))]
    resume = command[:5] + ["--resume", "auto", "--cfg-options", *more, "train_cfg.max_iters=6",
                            "train_cfg.val_interval=6", "param_scheduler.0.end=6", "default_hooks.checkpoint.interval=6"]
    result = subprocess.run(resume, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Iter(train) [6/6]" in result.stdout + result.stderr and (work / "iter_6.pth").is_file()

    # A full pickle from outside the work dir (load_from=downloaded.pth) is never unpickled: it could run code.
    outside = tmp_path / "downloaded.pth"
    outside.write_bytes((work / "iter_6.pth").read_bytes())
    other = [sys.executable, str(REPO / "tools" / "finetune_seg.py"), str(SYNTHETIC_LINEAR), "--work-dir",
             str(tmp_path / "work2"), "--cfg-options", *options, f"load_from={outside}"]
    result = subprocess.run(other, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "downloaded.pth is outside the work dir" in result.stderr and "Traceback" not in result.stderr


def test_finetune_seg_tool_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = _load_tool()
    assert tool.main([str(tmp_path / "nope.py")]) == 2
    assert "nope.py" in capsys.readouterr().err
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    config = CONFIG_DIR / "linear_densessl-r50_frozen_512x512_20k_folder.py"
    code = tool.main([str(config), "--work-dir", str(tmp_path / "work"),
                      "--cfg-options", f"train_dataloader.dataset.data_root={tmp_path}"])
    assert code == 2 and "model.decode_head.num_classes=3" in capsys.readouterr().err
    assert tool.main([str(SYNTHETIC_LINEAR), "--work-dir", str(tmp_path / "none"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def _load_tool() -> Any:
    return importlib.import_module("densessl.cli.finetune_seg")


def test_importing_densessl_does_not_import_mmseg() -> None:
    code = ("import sys, densessl, densessl.backbones, densessl.seg, densessl.det, densessl.data; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mmseg', 'mmcv', 'mmengine')); "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
