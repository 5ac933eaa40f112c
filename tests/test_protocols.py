"""Protocol cards (densessl/protocols.py, configs/protocols/) and densessl-reproduce: every shipped card loads and
runs with --smoke on the CPU (random weights, a small architecture), the report compares published and measured
values, and card mistakes are one error line naming the key."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import torch

from densessl.protocols import (
    DatasetName,
    ProtocolCard,
    apply_overrides,
    build_depth_config,
    build_det_config,
    build_eval_seg_config,
    load_card,
    protocol_settings,
    shipped_cards,
)
from densessl.schema import ConfigError

CARDS = shipped_cards()
REQUIRED = {"vicregl_r50_voc_linear", "vicregl_r50_cityscapes_linear", "densecl_r50_voc_det_c4",
            "densecl_r50_coco_maskrcnn_1x", "dino_vits16_voc_knn", "dinov2_vits14_voc_knn",
            "dinov3_vits16_ade20k_linear", "dinov3_vits16_nyuv2_depth_linear"}


def _small_arch(card: ProtocolCard) -> str:
    return "vit_tiny_patch16_224" if card.arch.startswith("vit") else "resnet18"


def _reproduce(argv: list[str]) -> int:
    from densessl.cli.reproduce import main

    return main(argv)


def test_the_required_cards_are_shipped() -> None:
    assert REQUIRED <= {path.stem for path in CARDS}


def test_dataset_names_are_the_readers_of_the_tools() -> None:
    from densessl.det.finetune import DetDataset
    from densessl.protocols import DEPTH_SCALE
    from densessl.seg.config import SegDataset

    assert set(typing.get_args(DatasetName)) == (set(typing.get_args(SegDataset)) | set(typing.get_args(DetDataset))
                                                 | set(DEPTH_SCALE))


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_shipped_card_loads_and_builds_its_protocol(path: Path) -> None:
    card = load_card(path)
    assert card.name == path.stem
    assert card.published.source.strip() and card.published.model.strip()
    assert card.published.verified or card.published.note.strip()
    assert card.dataset.train_split and card.dataset.val_split and card.differences
    assert load_card(f"protocols/{path.name}") == card == load_card(path.stem)  # shipped names resolve
    if card.is_seg:
        cfg = build_eval_seg_config(card, weights="random", data_root="/data")
        assert (cfg.arch, cfg.dataset, cfg.data_root) == (card.arch, card.dataset.name, "/data")
        assert cfg.protocol == {"seg_linear": "linear", "seg_knn": "knn"}[card.task]
        assert protocol_settings(card)["seg.features.input_size"] == card.seg.features.input_size
    elif card.section == "depth":
        cfg = build_depth_config(card, device="cpu")
        assert cfg.device == "cpu" and cfg.input_size == card.depth.input_size and card.dataset.name == "nyuv2"
        assert protocol_settings(card)["depth.n_bins"] == card.depth.n_bins
    else:
        cfg = build_det_config(card, weights="random", data_root="/data")
        assert (cfg.model.arch, cfg.data.dataset, cfg.data.root, cfg.model.weights) == (
            card.arch, card.dataset.name, "/data", None)
        assert protocol_settings(card)["detection.train.max_iters"] == card.detection.train.max_iters


def test_published_values_and_sources() -> None:
    cards = {path.stem: load_card(path) for path in CARDS}
    expected = {"vicregl_r50_voc_linear": 55.9, "vicregl_r50_a09_voc_linear": 54.0,
                "vicregl_convnext_s_voc_linear": 67.5, "densecl_r50_voc_det_c4": 58.7,
                "dino_vits16_voc_knn": 43.1, "dinov2_vits14_voc_knn": 74.9}
    for name, value in expected.items():
        assert cards[name].published.value == value and cards[name].published.verified, name
    for name in ("vicregl_r50_cityscapes_linear", "densecl_r50_coco_maskrcnn_1x", "dinov3_vits16_ade20k_linear",
                 "dinov3_vits16_nyuv2_depth_linear"):  # not confirmed: no value
        assert cards[name].published.value is None and not cards[name].published.verified
        assert "Not confirmed" in cards[name].published.note
    assert cards["densecl_r50_voc_det_c4"].detection.model.neck == "c4"
    assert cards["densecl_r50_coco_maskrcnn_1x"].detection.model.kind == "mask_rcnn"
    assert cards["dinov3_vits16_nyuv2_depth_linear"].published.metric == "rmse"
    assert cards["dinov3_vits16_ade20k_linear"].arch == cards["dinov3_vits16_nyuv2_depth_linear"].arch == (
        "vit_small_patch16_dinov3")


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_every_card_runs_as_a_smoke_run(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = load_card(path)
    out = tmp_path / "result.json"
    code = _reproduce([path.stem, "--weights", "random", "--arch", _small_arch(card), "--smoke", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "SMOKE RUN" in printed.out and "NOT comparable" in printed.out
    header = next(line for line in printed.out.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "published", "measured", "difference"]
    assert card.published.source.split()[0] in printed.out and "protocol settings:" in printed.out
    record = json.loads(out.read_text())
    assert record["smoke"] is True and record["comparable"] is False and record["card"] == card.name
    row = record["comparison"][0]
    assert row["metric"] == card.published.metric and row["published"] == card.published.value
    assert row["measured"] is not None and 0.0 <= row["measured"] <= 100.0
    if card.published.value is not None:
        assert row["difference"] == pytest.approx(row["measured"] - card.published.value, abs=1e-3)
    assert record["arch"] == _small_arch(card) and record["card_arch"] == card.arch
    assert all(key.startswith(f"{card.section}.") for key in record["settings"])
    if card.is_seg:
        assert record["settings"]["seg.dataset"] == "synthetic" and record["result"]["dataset"] == "synthetic"
    elif card.section == "depth":
        assert record["result"]["dataset"] == "synthetic" and record["result"]["settings"]["num_train"] == 8
        assert set(record["measured"]) == {"rmse", "abs_rel", "delta1"} and record["settings"]["depth.epochs"] == 1
    else:
        assert record["settings"]["detection.train.max_iters"] == 2 and record["result"]["iterations"] == 2
        assert record["settings"]["detection.data.min_size_test"] == 32


def test_typo_in_a_card_key_is_one_error_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = (Path(CARDS[0]).parent / "vicregl_r50_voc_linear.yaml").read_text()
    cases = {
        "    epochs: 60": ("    epoch: 60",
                          "error: densessl-reproduce: seg.linear.epoch: unknown key; did you mean 'epochs'?"),
        "task: seg_linear": ("task: seg_linaer", "error: densessl-reproduce: task: must be one of"),
        "published:": ("publshed:", "error: densessl-reproduce: publshed: unknown key; did you mean 'published'?"),
        "  metric: mIoU": ("  metric: box_AP", "error: densessl-reproduce: published.metric: seg_linear measures mIoU"),
    }
    for original, (typo, message) in cases.items():
        assert original in source
        card = tmp_path / "card.yaml"
        card.write_text(source.replace(original, typo, 1))
        assert _reproduce([str(card), "--weights", "random", "--smoke"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("card", "override", "message"),
    [
        ("vicregl_r50_voc_linear", "seg.linear.lrr=0.1", "seg.linear.lrr: unknown key; did you mean 'lr'?"),
        ("vicregl_r50_voc_linear", "seg.arch=resnet18", "seg.arch: set by the card's arch"),
        ("vicregl_r50_voc_linear", "seg.features.resize_mode=crop", "seg.features.resize_mode: must be one of"),
        ("dino_vits16_voc_knn", "seg.knn.k=0", "seg.knn.k: must be >= 1, got 0"),
        ("vicregl_r50_voc_linear", "detection.train.max_iters=5", "detection: a seg_linear card has no detection"),
        ("densecl_r50_voc_det_c4", "detection.model.kind=mask_rcnn", "detection.model.neck: c4 is implemented for"),
        ("densecl_r50_voc_det_c4", "detection.model.kind=mask_rcnn detection.model.neck=fpn",
         "detection.model: mask_rcnn needs instance masks"),
        ("densecl_r50_voc_det_c4", "detection.data.root=/data", "detection.data.root: set by --data-root"),
        ("densecl_r50_voc_det_c4", "detection.model.neckk=fpn", "detection.model.neckk: unknown key"),
        ("densecl_r50_voc_det_c4", "dataset.name=ade20k", "dataset.name: detection needs a detection dataset"),
        ("dinov3_vits16_nyuv2_depth_linear", "depth.n_bin=64", "depth.n_bin: unknown key; did you mean 'n_bins'?"),
        ("dinov3_vits16_nyuv2_depth_linear", "depth.min_depth=20", "depth.min_depth: must be below max_depth"),
        ("dinov3_vits16_nyuv2_depth_linear", "dataset.name=ade20k", "dataset.name: depth_linear needs an RGB-D"),
        ("dinov3_vits16_nyuv2_depth_linear", "published.metric=mIoU", "published.metric: depth_linear measures"),
        ("dinov3_vits16_nyuv2_depth_linear", "seg.features.input_size=64", "seg: a depth_linear card has no seg"),
        ("vicregl_r50_voc_linear", "depth.epochs=3", "depth: a seg_linear card has no depth section"),
    ],
)
def test_card_mistakes_name_the_key(card: str, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace("?", r"\?")):
        apply_overrides(load_card(card), override.split())


def test_usage_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["vicregl_r50_voc_linear", "--weights", "random"], "--data-root is required"),
        (["vicregl_r50_voc_linear", "--smoke"], "--weights is required"),
        (["no_such_card", "--weights", "random", "--smoke"], "card 'no_such_card' not found"),
        (["vicregl_r50_voc_linear", "--weights", str(tmp_path / "missing.pt"), "--smoke"], "weights file not found"),
        (["vicregl_r50_voc_linear", "--weights", "random", "--data-root", str(tmp_path / "nope")], "data root"),
        ([], "CARD is required"),
    ]
    for argv, message in cases:
        assert _reproduce(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_weights_for_another_architecture_need_arch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from densessl.backbones import DenseBackbone
    from densessl.weights import save_backbone

    exported = save_backbone(DenseBackbone("resnet18").model, tmp_path / "run", "resnet18")
    argv = ["vicregl_r50_voc_linear", "--weights", str(exported.safetensors), "--smoke"]
    assert _reproduce(argv) == 2
    err = capsys.readouterr().err
    assert "is for resnet18, but card vicregl_r50_voc_linear is for resnet50; pass --arch resnet18" in err
    assert _reproduce([*argv, "--arch", "resnet18", "seg.linear.epochs=2", "seg.features.device=cpu"]) == 0
    printed = capsys.readouterr().out
    assert "architecture resnet18, the card's is resnet50" in printed
    assert "overrides change the protocol: seg.linear.epochs" in printed  # the device is not part of the protocol
    assert "seg.features.device" not in printed.split("comparable: NO:")[1].splitlines()[0]


def test_overrides_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    from densessl.cli.reproduce import _protocol_changes, compare

    base = load_card("dino_vits16_voc_knn")
    assert _protocol_changes(base, apply_overrides(base, ["seg.knn.k=10"])) == {"seg.knn.k": [30, 10]}
    assert _protocol_changes(base, apply_overrides(base, ["seg.features.device=cpu", "seg.knn.use_faiss=true"])) == {}
    rows = compare({"box_AP": 40.0, "mask_AP": None}, {"box_AP": 41.5, "mask_AP": 30.0})
    assert rows == [{"metric": "box_AP", "published": 40.0, "measured": 41.5, "difference": 1.5},
                    {"metric": "mask_AP", "published": None, "measured": 30.0, "difference": None}]
    assert _reproduce(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(path.stem in listed for path in CARDS) and "NOT verified" in listed


def test_continue_a_published_global_model_with_vicregl_and_compare_with_a_card(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's workflow on the embedded data: a checkpoint in DINO's released layout (teacher/student dicts,
    heads, ``args``) -> ``model.weights=`` in VICRegL pretraining -> the same card before and after."""
    import argparse

    import timm

    from densessl.train.config import load_config
    from densessl.train.pretrain import train

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    backbone = {k: v.clone() for k, v in vit.state_dict().items()}
    dino = tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    teacher = {**{f"backbone.{k}": v for k, v in backbone.items()}, "head.last_layer.weight": torch.ones(8, 4)}
    torch.save({"teacher": teacher,
                "student": {f"module.backbone.{k}": v + 1 for k, v in backbone.items()},
                "epoch": 100, "args": argparse.Namespace(arch="vit_tiny", patch_size=16)}, dino)

    from densessl.backbones import DenseBackbone

    loaded = DenseBackbone("vit_tiny_patch16_224", weights=dino).model.state_dict()
    assert all(torch.equal(loaded[k], backbone[k]) for k in backbone)  # the teacher, as DINO's own evaluations use
    config = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "_tiny_test.yaml"
    cfg = load_config(config, ["model.arch=vit_tiny_patch16_224", f"model.weights={dino}", "train.max_iters=2"])
    result = train(cfg, tmp_path / "run")
    assert result.backbone_path is not None and result.backbone_path.name == "model.safetensors"

    measured = {}
    for label, weights in (("before", dino), ("after", result.backbone_path)):
        out = tmp_path / f"{label}.json"
        code = _reproduce(["dino_vits16_voc_knn", "--weights", str(weights), "--arch", "vit_tiny_patch16_224",
                           "--smoke", "--out", str(out)])
        assert code == 0, capsys.readouterr().err
        measured[label] = json.loads(out.read_text())["comparison"][0]["measured"]
    assert all(0.0 <= value <= 100.0 for value in measured.values())
