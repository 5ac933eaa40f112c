"""Detection transfer: backbone adapter, freezing, Faster/Mask R-CNN forward, COCO AP, tools/finetune_det.py."""

from __future__ import annotations

import importlib
import json
import os
import signal
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from densessl.det.coco import coco_evaluate, evaluate_detector, predictions_to_coco
from densessl.det.datasets import SyntheticDetection, detection_collate
from densessl.det.model import DetectionBackbone, ModelConfig, build_detector, freeze_batch_norm

pytest.importorskip("pycocotools")

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = ROOT / "configs" / "detection" / "faster_rcnn_fpn_r18_synthetic.yaml"
# A small, fast detector for CPU tests.
SMALL = dict(anchor_sizes=[8, 16, 32, 64, 128], out_channels=32, representation_size=64, roi_batch_size=32,
             rpn_proposals_train=64, rpn_proposals_test=64)
SIZES = dict(min_size=64, max_size=64)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine, 2 threads competing with other jobs are several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return importlib.import_module("densessl.cli.finetune_det")


@pytest.mark.parametrize("arch, size", [("resnet18", (64, 96)), ("vit_tiny_patch16_224", (64, 64))])
def test_adapter_pyramid_shapes_and_strides(arch: str, size: tuple[int, int]) -> None:
    backbone = DetectionBackbone(arch, out_channels=32)
    out = backbone(torch.randn(2, 3, *size))
    assert list(out) == ["0", "1", "2", "3", "pool"] and backbone.out_channels == 32
    assert backbone.strides == [4, 8, 16, 32, 64] and backbone.featmap_names == ["0", "1", "2", "3"]
    for stride, feature in zip(backbone.strides, out.values()):
        assert feature.shape == (2, 32, -(-size[0] // stride), -(-size[1] // stride))
    assert backbone.is_vit == arch.startswith("vit")


def test_adapter_loads_timm_weights_files(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", pretrained=False)  # with its classifier, as timm saves it
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    save_file(source.state_dict(), str(tmp_path / "r18.safetensors"))
    torch.save({"backbone": {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}},
               tmp_path / "backbone.pt")
    for name in ("r18.pth", "r18.safetensors", "backbone.pt"):
        loaded = DetectionBackbone("resnet18", weights=tmp_path / name)
        torch.testing.assert_close(loaded.body.model.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
        torch.testing.assert_close(loaded.body.model.bn1.running_var, source.bn1.running_var)
    with pytest.raises(ValueError, match="r18.safetensors"):
        DetectionBackbone("resnet34", weights=tmp_path / "r18.safetensors")


def test_c4_adapter_and_custom_levels() -> None:
    c4 = DetectionBackbone("resnet18", neck="c4")
    assert c4.levels == [3] and c4.out_channels == 256 and c4(torch.randn(1, 3, 64, 64))["0"].shape == (1, 256, 4, 4)
    three = DetectionBackbone("resnet18", levels=[2, 3, 4], out_channels=16)
    assert three.strides == [8, 16, 32, 64] and len(three(torch.randn(1, 3, 64, 64))) == 4
    with pytest.raises(ValueError, match="c4"):
        DetectionBackbone("vit_tiny_patch16_224", neck="c4")


def test_frozen_options_freeze_and_frozen_bn_replaces_bn() -> None:
    x = torch.randn(2, 3, 32, 32)
    full = DetectionBackbone("resnet18", frozen=True, norm="bn", out_channels=16)
    sum(v.sum() for v in full(x).values()).backward()
    assert all(not p.requires_grad and p.grad is None for p in full.body.parameters())
    assert all(p.grad is not None for p in full.neck.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in full.body.modules())  # frozen parts: FrozenBN

    staged = DetectionBackbone("resnet18", frozen_stages=1, norm="bn", out_channels=16)
    sum(v.sum() for v in staged(x).values()).backward()
    model = staged.body.model
    assert all(p.grad is None for p in [*model.conv1.parameters(), *model.layer1.parameters()])
    assert all(p.requires_grad and p.grad is not None for p in model.layer2.parameters())
    assert isinstance(model.bn1, FrozenBatchNorm2d) and isinstance(model.layer1[0].bn1, FrozenBatchNorm2d)
    assert type(model.layer2[0].bn1) is nn.BatchNorm2d

    frozen_bn = DetectionBackbone("resnet18", frozen_stages=-1, norm="frozen_bn", out_channels=16)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen_bn.modules())
    assert all(p.requires_grad for p in frozen_bn.body.parameters())

    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    nn.init.normal_(bn.weight)
    frozen = freeze_batch_norm(nn.Sequential(bn))[0]
    assert isinstance(frozen, FrozenBatchNorm2d)
    y = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(frozen(y), bn.eval()(y), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def synthetic_val() -> SyntheticDetection:
    return SyntheticDetection(4, (64, 64), seed=0, split="val", with_masks=True)


def test_faster_rcnn_train_losses_and_eval_predictions(synthetic_val: SyntheticDetection) -> None:
    model = build_detector(ModelConfig("faster_rcnn", "resnet18", norm="bn", frozen_stages=-1, **SMALL),
                           synthetic_val.num_classes, **SIZES)
    batch = detection_collate([synthetic_val[0], synthetic_val[1]])
    model.train()
    losses = model(batch.images, batch.targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert model.backbone.body.model.conv1.weight.grad is not None
    model.eval()
    with torch.no_grad():
        outputs = model(batch.images)
    assert len(outputs) == 2 and outputs[0]["boxes"].shape[1] == 4
    assert outputs[0]["boxes"].shape[0] == outputs[0]["scores"].shape[0] == outputs[0]["labels"].shape[0]
    if len(outputs[0]["boxes"]):
        assert float(outputs[0]["boxes"].max()) <= 64 and int(outputs[0]["labels"].min()) >= 1


def test_mask_rcnn_forward_with_masks(synthetic_val: SyntheticDetection) -> None:
    model = build_detector(ModelConfig("mask_rcnn", "resnet18", **SMALL), synthetic_val.num_classes, **SIZES)
    batch = detection_collate([synthetic_val[0], synthetic_val[1]])
    model.train()
    losses = model(batch.images, batch.targets)
    assert "loss_mask" in losses and torch.isfinite(sum(losses.values()))
    result = evaluate_detector(model, synthetic_val, batch_size=2, progress=False)
    assert result.mask_AP is not None and 0.0 <= result.mask_AP <= 100.0 and result.num_images == 4


def _perfect(dataset: SyntheticDetection, shift: float = 0.0) -> dict[int, dict[str, torch.Tensor]]:
    outputs = {}
    for index in range(len(dataset)):
        _, target = dataset[index]
        boxes = target["boxes"].clone()
        widths = boxes[:, 2] - boxes[:, 0]
        boxes[:, [0, 2]] += shift * widths[:, None]
        outputs[target["image_id"]] = {"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": target["labels"],
                                       "masks": target["masks"][:, None].float()}
    return outputs


def test_coco_ap_on_hand_built_predictions(synthetic_val: SyntheticDetection) -> None:
    gt = synthetic_val.coco_ground_truth()
    perfect = coco_evaluate(gt, predictions_to_coco(_perfect(synthetic_val), with_masks=True), with_masks=True)
    assert perfect.box_AP == pytest.approx(100.0) and perfect.box_AP50 == pytest.approx(100.0)
    assert perfect.mask_AP == pytest.approx(100.0) and perfect.box_AP75 == pytest.approx(100.0)
    assert all(v is None or v == pytest.approx(100.0) for v in perfect.per_class_AP50.values())
    shifted = coco_evaluate(gt, predictions_to_coco(_perfect(synthetic_val, shift=0.3)))
    assert shifted.box_AP < 60.0 and shifted.box_AP75 < perfect.box_AP75 and shifted.mask_AP is None
    empty = coco_evaluate(gt, [], with_masks=True)
    assert empty.box_AP == empty.box_AP50 == empty.mask_AP == 0.0
    assert set(perfect.metrics()) >= {"box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75"}
    assert "box" in perfect.format_table() and "mask" in perfect.format_table()


@pytest.mark.slow
def test_finetune_tool_writes_results_and_resumes(tool: ModuleType, tmp_path: Path) -> None:
    tiny = ["data.synthetic_size=64", "data.min_size_train=[64]", "data.min_size_test=64", "data.max_size=64",
            "data.synthetic_train_images=8", "data.synthetic_val_images=4", "data.num_workers=0",
            "train.batch_size=2", "train.progress=false", "train.log_every=1", "optim.warmup_iters=2",
            "optim.steps=[]", "model.out_channels=32", "model.representation_size=64",
            "model.anchor_sizes=[8,16,32,64,128]", "model.rpn_proposals_train=64", "model.rpn_proposals_test=64"]
    out = tmp_path / "run"
    assert tool.main([str(SYNTHETIC), *tiny, "train.max_iters=2", "--output-dir", str(out)]) == 0
    assert tool.main([str(SYNTHETIC), *tiny, "train.max_iters=3", "--output-dir", str(out)]) == 2  # exists
    assert tool.main([str(SYNTHETIC), *tiny, "train.max_iters=3", "--output-dir", str(out), "--resume"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"box_AP", "box_AP50", "box_AP75", "per_class_AP50", "settings"} <= set(results)
    assert results["iterations"] == 3 and results["settings"]["model"]["arch"] == "resnet18"
    assert results["num_val_images"] == 4 and "mask_AP" not in results
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 3 and {"model", "optimizer", "scaler", "rng"} <= set(state)
    assert state["recipe"] == "detection"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "loss" in r] == [1, 2, 3]

    nan = tool.main([str(SYNTHETIC), *tiny, "train.max_iters=3", "optim.lr=1e30", "optim.warmup_iters=0",
                     "data.synthetic_size=32", "data.min_size_train=[32]", "data.min_size_test=32",
                     "data.max_size=32", "--output-dir", str(tmp_path / "nan")])
    assert nan == 3
    assert tool.main([str(SYNTHETIC), "model.norm=nope"]) == 2


TINY_DET = ["data.synthetic_size=32", "data.min_size_train=[32]", "data.min_size_test=32", "data.max_size=32",
            "data.synthetic_train_images=8", "data.synthetic_val_images=2", "data.num_workers=0",
            "train.batch_size=2", "train.progress=false", "train.log_every=1", "optim.warmup_iters=2",
            "optim.steps=[]", "model.out_channels=16", "model.representation_size=32",
            "model.anchor_sizes=[8,16,32,64,128]", "model.rpn_proposals_train=32", "model.rpn_proposals_test=32",
            "model.roi_batch_size=32", "train.checkpoint_every=1"]

def test_finetune_sigterm_saves_and_gradient_accumulation_runs(tmp_path: Path) -> None:
    from densessl.config_io import load_config
    from densessl.det.finetune import DetConfig, finetune

    cfg = load_config(DetConfig, SYNTHETIC, [*TINY_DET, "train.max_iters=3", "optim.accumulate=2", "train.batch_size=4"])

    def terminate(step: int) -> None:
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = finetune(cfg, tmp_path / "run", on_step=terminate)
    assert stopped.interrupted and stopped.iteration == 1 and stopped.results_path is None
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    finished = finetune(cfg, tmp_path / "run", resume="yes")
    assert finished.iteration == 3 and finished.results_path is not None


def test_ap_on_coco_and_voc_fixtures_ignores_crowd_and_difficult(tmp_path: Path) -> None:
    from densessl.det.datasets import CocoDetection, VOCDetection
    from tests.det.test_datasets import _coco_fixture, _voc_fixture, _voc_xml

    coco = CocoDetection(*_coco_fixture(tmp_path / "coco"), with_masks=True)
    _, target = coco[0]
    keep = target["iscrowd"] == 0  # predict only the non-crowd objects: crowd regions are ignored, not missed
    outputs = {target["image_id"]: {"boxes": target["boxes"][keep], "scores": torch.ones(int(keep.sum())),
                                    "labels": target["labels"][keep], "masks": target["masks"][keep].float()}}
    result = coco_evaluate(coco.coco_ground_truth(), predictions_to_coco(outputs, with_masks=True), with_masks=True)
    assert result.box_AP == pytest.approx(100.0) and result.mask_AP == pytest.approx(100.0)
    assert set(result.per_class_AP50) == {"cat", "dog"}

    root = _voc_fixture(tmp_path / "voc", {"000001": _voc_xml([("dog", 0, (1, 1, 10, 20)), ("cat", 1, (20, 5, 60, 40))])})
    voc = VOCDetection(root, ["VOC2007/trainval"])
    _, target = voc[0]
    outputs = {0: {"boxes": target["boxes"][:1], "scores": torch.ones(1), "labels": target["labels"][:1]}}
    result = coco_evaluate(voc.coco_ground_truth(), predictions_to_coco(outputs))
    assert result.box_AP == pytest.approx(100.0) and result.per_class_AP50["cat"] is None
