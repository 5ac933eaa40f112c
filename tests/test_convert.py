"""densessl.convert: published checkpoint layouts -> timm backbones, exactly; detection; clear errors; files; CLI.

Every official layout is built here from a timm model's state dict (random values, so that swapped tensors show),
renamed into the key names the official code saves -- the module names of its model classes, its DDP wrapping, its
heads, momentum encoders and queues -- and converted back: every tensor must come back bit for bit.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor

from densessl.backbones import DenseBackbone
from densessl.cli.convert import main as convert_main
from densessl.convert import (
    FORMATS,
    convert_state_dict,
    detect_format,
    infer_arch,
)
from densessl.weights import convert_file, read_backbone_weights

State = dict[str, Tensor]


def _timm_state(arch: str, **kwargs: object) -> State:
    """A timm backbone's state dict with random values (BatchNorm/LayerNorm weights are all ones at init)."""
    state = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs).state_dict()
    return {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in state.items()}


def _perturbed(state: State) -> State:
    """A different copy (momentum encoders, students): converting the wrong branch must show."""
    return {k: v + 1 if v.is_floating_point() else v.clone() for k, v in state.items()}


def _prefixed(prefix: str, state: State) -> State:
    return {f"{prefix}{k}": v for k, v in state.items()}


def _assert_exact(converted: State, expected: State, skip: tuple[str, ...] = ()) -> None:
    assert sorted(k for k in converted if k not in skip) == sorted(k for k in expected if k not in skip)
    for key, value in expected.items():
        if key not in skip:
            assert value.dtype == converted[key].dtype and torch.equal(converted[key], value), key


@pytest.fixture(scope="module")
def resnet18() -> State:
    return _timm_state("resnet18")


@pytest.fixture(scope="module")
def convnext_atto() -> State:
    return _timm_state("convnext_atto")


@pytest.fixture(scope="module")
def vit_tiny() -> State:
    return _timm_state("vit_tiny_patch16_224")


@pytest.fixture(scope="module")
def dinov2_small() -> State:
    return _timm_state("vit_small_patch14_dinov2")


# --------------------------------------------------------------------------- #
# ResNet layouts
# --------------------------------------------------------------------------- #


def _optimizer() -> dict:
    return {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}


def _vicregl_resnet(backbone: State) -> tuple[dict, State]:
    """VICRegL main_vicregl.py: utils.checkpoint saves {epoch, model: DDP(VICRegL).state_dict(), optimizer};
    VICRegL holds backbone (resnet.py), maps_projector and projector (utils.MLP: Linear, BatchNorm1d, ReLU, ...,
    Linear without bias) and classifier (Linear)."""
    heads = {
        "module.maps_projector.0.weight": torch.randn(16, 512), "module.maps_projector.0.bias": torch.randn(16),
        "module.maps_projector.1.weight": torch.randn(16), "module.maps_projector.1.bias": torch.randn(16),
        "module.maps_projector.1.running_mean": torch.randn(16), "module.maps_projector.1.running_var": torch.rand(16),
        "module.maps_projector.1.num_batches_tracked": torch.tensor(5),
        "module.maps_projector.3.weight": torch.randn(16, 16),
        "module.projector.0.weight": torch.randn(32, 512), "module.projector.0.bias": torch.randn(32),
        "module.projector.3.weight": torch.randn(32, 32),
        "module.classifier.weight": torch.randn(1000, 512), "module.classifier.bias": torch.randn(1000),
    }
    return {"epoch": 100, "model": {**_prefixed("module.backbone.", backbone), **heads},
            "optimizer": _optimizer()}, heads


def _vicreg_resnet(backbone: State) -> tuple[dict, State]:
    """vicreg main_vicreg.py: {epoch, model: DDP(VICReg).state_dict(), optimizer}; VICReg = backbone + projector
    (Projector: Linear, BatchNorm1d, ReLU, ..., Linear without bias)."""
    heads = {"module.projector.0.weight": torch.randn(32, 512), "module.projector.0.bias": torch.randn(32),
             "module.projector.1.weight": torch.randn(32), "module.projector.1.bias": torch.randn(32),
             "module.projector.1.running_mean": torch.randn(32), "module.projector.1.running_var": torch.rand(32),
             "module.projector.1.num_batches_tracked": torch.tensor(7), "module.projector.3.weight": torch.randn(32, 32)}
    return {"epoch": 100, "model": {**_prefixed("module.backbone.", backbone), **heads},
            "optimizer": _optimizer()}, heads


def _densecl_full(backbone: State) -> tuple[dict, State]:
    """DenseCL (openselfsup/models/densecl.py) as mmcv's save_checkpoint writes it: {meta, state_dict, optimizer};
    encoder_q = Sequential(backbone, DenseCLNeck(mlp, mlp2)), encoder_k its momentum copy, self.backbone = encoder_q[0]
    (so its tensors appear twice), queue/queue2 buffers with their pointers."""
    neck = {"mlp.0.weight": torch.randn(16, 512), "mlp.0.bias": torch.randn(16), "mlp.2.weight": torch.randn(8, 16),
            "mlp.2.bias": torch.randn(8), "mlp2.0.weight": torch.randn(16, 512, 1, 1),
            "mlp2.0.bias": torch.randn(16), "mlp2.2.weight": torch.randn(8, 16, 1, 1), "mlp2.2.bias": torch.randn(8)}
    heads = {**_prefixed("encoder_q.0.", backbone), **_prefixed("encoder_q.1.", neck),
             **_prefixed("encoder_k.0.", _perturbed(backbone)), **_prefixed("encoder_k.1.", _perturbed(neck)),
             "queue": torch.randn(8, 64), "queue_ptr": torch.zeros(1, dtype=torch.long),
             "queue2": torch.randn(8, 64), "queue2_ptr": torch.zeros(1, dtype=torch.long)}
    state = {**heads, **_prefixed("backbone.", backbone)}
    return {"meta": {"epoch": 200, "iter": 1000, "mmcv_version": "0.3.0"}, "state_dict": state,
            "optimizer": _optimizer()}, heads


def _densecl_backbone(backbone: State) -> tuple[dict, State]:
    """DenseCL tools/extract_backbone_weights.py: {state_dict: backbone.* with the prefix cut, author: DenseCL}."""
    return {"state_dict": dict(backbone), "author": "DenseCL"}, {}


def _pixpro(backbone: State) -> tuple[dict, State]:
    """PixPro contrast/models/PixPro.py (encoder, projector = MLP2d(linear1, bn1, linear2), encoder_k, projector_k,
    value_transform = conv1x1) under DDP, saved by main_pretrain.py and stripped by publish_model.py to {model}."""
    projector = {"linear1.weight": torch.randn(16, 512, 1, 1), "linear1.bias": torch.randn(16),
                 "bn1.weight": torch.randn(16), "bn1.bias": torch.randn(16), "bn1.running_mean": torch.randn(16),
                 "bn1.running_var": torch.rand(16), "bn1.num_batches_tracked": torch.tensor(3),
                 "linear2.weight": torch.randn(8, 16, 1, 1), "linear2.bias": torch.randn(8)}
    heads = {**_prefixed("module.projector.", projector), **_prefixed("module.projector_k.", _perturbed(projector)),
             **_prefixed("module.encoder_k.", _perturbed(backbone)),
             "module.value_transform.weight": torch.randn(8, 8, 1, 1), "module.value_transform.bias": torch.randn(8)}
    return {"model": {**_prefixed("module.encoder.", backbone), **heads}}, heads


def _dino_head(prefix: str) -> State:
    """DINOHead: mlp (Linear, GELU, Linear, GELU, Linear) and a weight-normed last_layer."""
    return {f"{prefix}mlp.0.weight": torch.randn(16, 4), f"{prefix}mlp.0.bias": torch.randn(16),
            f"{prefix}mlp.2.weight": torch.randn(16, 16), f"{prefix}mlp.2.bias": torch.randn(16),
            f"{prefix}mlp.4.weight": torch.randn(8, 16), f"{prefix}mlp.4.bias": torch.randn(8),
            f"{prefix}last_layer.weight_g": torch.ones(32, 1), f"{prefix}last_layer.weight_v": torch.randn(32, 8)}


def _dino_resnet(backbone: State) -> tuple[dict, State]:
    """DINO main_dino.py with a ResNet: the teacher has BatchNorm, so it is DDP-wrapped like the student."""
    heads = _dino_head("module.head.")
    checkpoint = {"student": {**_prefixed("module.backbone.", _perturbed(backbone)), **_dino_head("module.head.")},
                  "teacher": {**_prefixed("module.backbone.", backbone), **heads},
                  "optimizer": _optimizer(), "epoch": 100, "args": argparse.Namespace(arch="resnet50", lr=0.3),
                  "dino_loss": {"center": torch.randn(1, 32)}}
    return checkpoint, heads


RESNET_LAYOUTS = {"vicregl": _vicregl_resnet, "vicreg": _vicreg_resnet, "densecl": _densecl_full,
                  "densecl_backbone": _densecl_backbone, "pixpro": _pixpro, "dino": _dino_resnet}


@pytest.mark.parametrize("layout", list(RESNET_LAYOUTS))
def test_resnet_layouts_round_trip(resnet18: State, layout: str) -> None:
    checkpoint, heads = RESNET_LAYOUTS[layout](resnet18)
    fmt = layout.split("_")[0]
    assert detect_format(checkpoint) == fmt
    assert infer_arch(checkpoint) == "resnet18"
    converted, report = convert_state_dict(checkpoint, "resnet18")
    _assert_exact(converted, resnet18)
    assert report.source_format == fmt and report.arch == "resnet18"
    assert report.missing == [] and report.unexpected == [] and report.filled == []
    assert report.loaded == len(resnet18)
    assert sorted(report.dropped) == sorted(heads)  # every head, momentum copy and queue, named as in the file
    assert FORMATS[fmt] in report.summary()


def test_backbone_only_resnet_files_are_timm_names(resnet18: State) -> None:
    """VICRegL's resnet50_alpha0.9.pth, VICReg's resnet50.pth, DINO's resnet50 backbone: torchvision's names."""
    assert detect_format(resnet18) == "timm"
    converted, report = convert_state_dict(resnet18, "resnet18", "vicregl")
    _assert_exact(converted, resnet18)
    assert report.source_format == "vicregl" and report.complete and report.dropped == []
    classifier = {**resnet18, "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}  # torchvision's
    converted, report = convert_state_dict(classifier, "resnet18")
    _assert_exact(converted, resnet18)
    assert report.source_format == "timm" and sorted(report.dropped) == ["fc.bias", "fc.weight"]


def test_resnet50_is_inferred_and_converted() -> None:
    backbone = _timm_state("resnet50")
    checkpoint, heads = _vicregl_resnet(backbone)  # head shapes do not matter: they are dropped
    assert infer_arch(backbone) == "resnet50" and infer_arch(checkpoint) == "resnet50"
    converted, report = convert_state_dict(checkpoint, "resnet50")
    _assert_exact(converted, backbone)
    assert report.complete and sorted(report.dropped) == sorted(heads)


def test_old_checkpoints_without_num_batches_tracked_are_filled(resnet18: State) -> None:
    old = {k: v for k, v in resnet18.items() if not k.endswith("num_batches_tracked")}
    converted, report = convert_state_dict(old, "resnet18")
    assert report.complete and report.filled and all(k.endswith("num_batches_tracked") for k in report.filled)
    _assert_exact(converted, resnet18, skip=tuple(report.filled))


# --------------------------------------------------------------------------- #
# ConvNeXt layouts
# --------------------------------------------------------------------------- #


def _official_convnext(state: State, layer_scale: bool) -> State:
    """timm names -> the official ConvNeXt names (VICRegL convnext.py, facebookresearch/ConvNeXt): stem and
    downsampling layers in downsample_layers.S (Sequential: conv+LayerNorm / LayerNorm+conv), blocks in stages.S.B
    with dwconv, norm, pwconv1/pwconv2 (nn.Linear, 2-D weights), gamma (only with layer scale), final norm."""
    official = {}
    for key, value in state.items():
        if key.endswith(".gamma") and not layer_scale:
            continue
        name = key.replace("stem.", "downsample_layers.0.")
        name = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", name)
        name = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", name)
        name = name.replace("conv_dw", "dwconv").replace("mlp.fc1", "pwconv1").replace("mlp.fc2", "pwconv2")
        name = name.replace("head.norm.", "norm.")
        if "pwconv" in name and value.dim() == 4:  # convnext_atto uses 1x1 convs where the official uses Linear
            value = value.flatten(1)
        official[name] = value
    return official


def test_vicregl_convnext_round_trip(convnext_atto: State) -> None:
    official = _official_convnext(convnext_atto, layer_scale=False)
    assert "downsample_layers.0.0.weight" in official and "stages.1.0.pwconv1.weight" in official
    heads = {"module.projector.0.weight": torch.randn(8, 320), "module.maps_projector.0.weight": torch.randn(8, 320),
             "module.classifier.weight": torch.randn(10, 320), "module.classifier.bias": torch.randn(10)}
    checkpoint = {"epoch": 300, "model": {**_prefixed("module.backbone.", official), **heads}, "optimizer": {}}
    for layout in (checkpoint, official):  # full checkpoint, and the hub file (convnext_small_alpha0.9.pth style)
        assert detect_format(layout) == "vicregl" and infer_arch(layout) == "convnext_atto"
        converted, report = convert_state_dict(layout, "convnext_atto")
        gammas = [k for k in convnext_atto if k.endswith(".gamma")]
        _assert_exact(converted, convnext_atto, skip=tuple(gammas))
        assert gammas and sorted(report.filled) == sorted(gammas)  # no layer scale in VICRegL: gamma 1 is identity
        assert all(torch.equal(converted[k], torch.ones_like(convnext_atto[k])) for k in gammas)
        assert report.complete and report.loaded == len(convnext_atto) - len(gammas)
        assert sorted(report.dropped) == (sorted(heads) if layout is checkpoint else [])
        assert "no layer scale" in report.summary()


def test_official_convnext_round_trip(convnext_atto: State) -> None:
    official = {**_official_convnext(convnext_atto, layer_scale=True), "head.weight": torch.randn(1000, 320),
                "head.bias": torch.randn(1000)}
    checkpoint = {"model": official}
    assert detect_format(checkpoint) == "convnext"
    converted, report = convert_state_dict(checkpoint, "convnext_atto")
    _assert_exact(converted, convnext_atto)
    assert report.complete and report.filled == [] and sorted(report.dropped) == ["head.bias", "head.weight"]


def test_timm_convnext_passes_through(convnext_atto: State) -> None:
    assert detect_format(convnext_atto) == "timm" and infer_arch(convnext_atto) == "convnext_atto"
    converted, report = convert_state_dict(_prefixed("module.", convnext_atto), "convnext_atto")
    _assert_exact(converted, convnext_atto)
    assert report.complete


# --------------------------------------------------------------------------- #
# ViT layouts: DINO, iBOT, DINOv2
# --------------------------------------------------------------------------- #


def _dino_vit(backbone: State) -> tuple[dict, State]:
    """DINO main_dino.py with a ViT: student = DDP(MultiCropWrapper(backbone, DINOHead)), teacher not wrapped."""
    heads = _dino_head("head.")
    return {"student": {**_prefixed("module.backbone.", _perturbed(backbone)), **_dino_head("module.head.")},
            "teacher": {**_prefixed("backbone.", backbone), **heads}, "optimizer": _optimizer(), "epoch": 800,
            "args": argparse.Namespace(arch="vit_tiny", patch_size=16, out_dim=32), "dino_loss": {
                "center": torch.randn(1, 32)}}, heads


def _ibot_vit(backbone: State) -> tuple[dict, State, State]:
    """iBOT main_ibot.py: as DINO with an iBOTHead (last_layer2 for patch tokens), ibot_loss (center, center2); the
    student's ViT has masked_embed (masked_im_modeling), the teacher's has not."""
    dim = backbone["cls_token"].shape[-1]
    heads = {**_dino_head("head."), "head.last_layer2.weight_g": torch.ones(32, 1),
             "head.last_layer2.weight_v": torch.randn(32, 8)}
    student_backbone = {**_perturbed(backbone), "masked_embed": torch.randn(1, dim)}
    student_heads = {f"module.{k}": v for k, v in heads.items()}
    checkpoint = {"student": {**_prefixed("module.backbone.", student_backbone), **student_heads},
                  "teacher": {**_prefixed("backbone.", backbone), **heads}, "optimizer": _optimizer(), "epoch": 800,
                  "args": argparse.Namespace(arch="vit_tiny", patch_size=16),
                  "ibot_loss": {"center": torch.randn(1, 32), "center2": torch.randn(1, 1, 32)}}
    return checkpoint, heads, student_heads


def test_dino_vit_round_trip(vit_tiny: State) -> None:
    checkpoint, heads = _dino_vit(vit_tiny)
    assert detect_format(checkpoint) == "dino" and infer_arch(checkpoint) == "vit_tiny_patch16_224"
    converted, report = convert_state_dict(checkpoint, "vit_tiny_patch16_224")
    _assert_exact(converted, vit_tiny)  # the teacher
    assert report.complete and sorted(report.dropped) == sorted(heads) and "'teacher' entry" in report.summary()
    converted, report = convert_state_dict(checkpoint, "vit_tiny_patch16_224", branch="student")
    _assert_exact(converted, _perturbed(vit_tiny))
    assert sorted(report.dropped) == sorted(f"module.{k}" for k in heads)
    assert detect_format(vit_tiny) == "timm"  # the hub backbone files (dino_deitsmall16_pretrain.pth) are timm's
    teacher_only = {"teacher": _prefixed("backbone.", vit_tiny)}  # a teacher without its head is still DINO's
    assert detect_format(teacher_only) == "dino"
    _assert_exact(convert_state_dict(teacher_only, "vit_tiny_patch16_224")[0], vit_tiny)


def test_ibot_vit_round_trip(vit_tiny: State) -> None:
    checkpoint, heads, student_heads = _ibot_vit(vit_tiny)
    assert detect_format(checkpoint) == "ibot"
    converted, report = convert_state_dict(checkpoint, "vit_tiny_patch16_224")
    _assert_exact(converted, vit_tiny)
    assert report.complete and sorted(report.dropped) == sorted(heads)
    converted, report = convert_state_dict(checkpoint, "vit_tiny_patch16_224", branch="student")
    _assert_exact(converted, _perturbed(vit_tiny))
    assert report.complete and sorted(report.dropped) == sorted([*student_heads, "masked_embed"])
    # extract_backbone_weights.py --checkpoint_key student: {state_dict: backbone without 'backbone.'}
    extracted = {"state_dict": {k[len("module.backbone."):]: v for k, v in checkpoint["student"].items()
                                if k.startswith("module.backbone.")}}
    assert detect_format(extracted) == "ibot"
    converted, report = convert_state_dict(extracted, "vit_tiny_patch16_224")
    _assert_exact(converted, _perturbed(vit_tiny))
    assert report.dropped == ["masked_embed"]


def _dinov2_official(state: State, chunks: int = 0) -> State:
    """DINOv2 dinov2/models/vision_transformer.py names: timm's ViT names plus mask_token; with block_chunks the
    blocks sit in BlockChunk lists, 'blocks.C.I.*' with I the block's index in the whole model."""
    official = {**state, "mask_token": torch.randn(1, state["cls_token"].shape[-1])}
    if chunks:
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        size = depth // chunks
        official = {(re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m.group(1)) // size}.{m.group(1)}.", k)
                     if k.startswith("blocks.") else k): v for k, v in official.items()}
    return official


def test_dinov2_hub_backbone_round_trip(dinov2_small: State) -> None:
    """dinov2_vits14_pretrain.pth: the bare backbone with mask_token, layer scale ls1/ls2.gamma, 37x37 grid."""
    official = _dinov2_official(dinov2_small)
    assert official["pos_embed"].shape[1] == 1 + 37 * 37 and "blocks.0.ls1.gamma" in official
    assert detect_format(official) == "dinov2" and infer_arch(official) == "vit_small_patch14_dinov2"
    converted, report = convert_state_dict(official, "vit_small_patch14_dinov2")
    _assert_exact(converted, dinov2_small)
    assert report.complete and report.dropped == ["mask_token"]


def test_dinov2_teacher_checkpoint_with_block_chunks(dinov2_small: State) -> None:
    """train.py do_test: {teacher: SSLMetaArch.teacher.state_dict()} = backbone (block_chunks=4), dino_head,
    ibot_head; and the FSDP training checkpoint {model: student.* + teacher.*, iteration}."""
    backbone = _dinov2_official(dinov2_small, chunks=4)
    assert "blocks.1.3.norm1.weight" in backbone and "blocks.3.norm1.weight" not in backbone
    heads = {**_dino_head("dino_head."), **_dino_head("ibot_head.")}
    checkpoint = {"teacher": {**_prefixed("backbone.", backbone), **heads}}
    assert detect_format(checkpoint) == "dinov2" and infer_arch(checkpoint) == "vit_small_patch14_dinov2"
    converted, report = convert_state_dict(checkpoint, "vit_small_patch14_dinov2")
    _assert_exact(converted, dinov2_small)
    assert report.complete and sorted(report.dropped) == sorted([*heads, "mask_token"])
    training = {"model": {**_prefixed("student.backbone.", _perturbed(backbone)), **_prefixed("student.", heads),
                          **_prefixed("teacher.backbone.", backbone), **_prefixed("teacher.", heads)},
                "optimizer": _optimizer(), "iteration": 12499}
    assert detect_format(training) == "dinov2"
    converted, report = convert_state_dict(training, "vit_small_patch14_dinov2")
    _assert_exact(converted, dinov2_small)
    assert report.complete and len(report.dropped) == len(backbone) + 2 * len(heads) + 1  # student, heads, mask


def test_dinov2_registers_round_trip() -> None:
    """dinov2_vits14_reg4_pretrain.pth: register_tokens, and pos_embed covering the class token and the patches
    (timm's reg4 model keeps no position for the class token: timm folds it into cls_token)."""
    timm_state = _timm_state("vit_small_patch14_reg4_dinov2")
    class_pos = torch.randn(1, 1, 384)
    official = {k: v for k, v in timm_state.items() if k not in ("reg_token", "pos_embed")}
    official.update(register_tokens=timm_state["reg_token"], mask_token=torch.randn(1, 384),
                    pos_embed=torch.cat([class_pos, timm_state["pos_embed"]], dim=1))
    assert detect_format(official) == "dinov2" and infer_arch(official) == "vit_small_patch14_reg4_dinov2"
    converted, report = convert_state_dict(official, "vit_small_patch14_reg4_dinov2")
    expected = {**timm_state, "cls_token": timm_state["cls_token"] + class_pos}
    _assert_exact(converted, expected)
    assert report.complete and report.dropped == ["mask_token"] and "register tokens" in report.summary()


def test_dinov2_pos_embed_is_resampled_to_the_arch_grid() -> None:
    """A DINOv2 ViT trained at 224 px (16x16 grid) into timm's 518 px model (37x37): timm's resampling."""
    small = _timm_state("vit_small_patch14_dinov2", img_size=224)
    official = _dinov2_official(small)
    assert official["pos_embed"].shape == (1, 1 + 16 * 16, 384)
    converted, report = convert_state_dict(official, "vit_small_patch14_dinov2")
    expected = resample_abs_pos_embed(small["pos_embed"], new_size=[37, 37], old_size=[16, 16], num_prefix_tokens=1)
    assert converted["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    assert torch.allclose(converted["pos_embed"], expected)
    _assert_exact(converted, small, skip=("pos_embed",))
    assert report.complete and "pos_embed resampled" in report.summary()


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def test_unknown_layout_is_a_clear_error() -> None:
    strange = {"encoder.layers.0.weight": torch.randn(4, 4), "decoder.out.bias": torch.randn(4)}
    assert detect_format(strange) == "unknown"
    assert detect_format([1, 2]) == "unknown" and detect_format({}) == "unknown"
    assert detect_format({"lr": 0.1, "epochs": 3}) == "unknown"
    with pytest.raises(ValueError, match=r"unknown checkpoint layout: not one of vicregl, .*keys \['encoder.layers"):
        convert_state_dict(strange, "resnet18")
    with pytest.raises(ValueError, match=r"unknown source format 'mocov3'; choose one of vicregl"):
        convert_state_dict(strange, "resnet18", "mocov3")
    with pytest.raises(ValueError, match=r"DINO checkpoint .*: the backbone keys are not a ResNet, ConvNeXt or ViT.*"
                                         r"first keys \['encoder.layers"):
        convert_state_dict(strange, "resnet18", "dino")
    with pytest.raises(ValueError, match=r"unknown timm architecture 'resnt18'; did you mean"):
        convert_state_dict(strange, "resnt18", "timm")


def test_weights_that_do_not_fit_the_arch_are_refused(resnet18: State, vit_tiny: State) -> None:
    checkpoint, _ = _vicregl_resnet(resnet18)
    with pytest.raises(ValueError, match=r"VICRegL checkpoint .* holds a ResNet backbone but vit_tiny_patch16_224 is "
                                         r"a ViT; pass a ResNet arch \(the checkpoint fits resnet18\)"):
        convert_state_dict(checkpoint, "vit_tiny_patch16_224")
    with pytest.raises(ValueError, match=r"does not fit resnet50 \(the checkpoint fits resnet18\): .* other shapes "
                                         r"\(layer1.0.conv1.weight: checkpoint \(64, 64, 3, 3\) vs resnet50"):
        convert_state_dict(checkpoint, "resnet50")
    with pytest.raises(ValueError, match=r"does not fit vit_small_patch14_dinov2: its patch size is \(16, 16\), the "
                                         r"arch's is \(14, 14\) \(the checkpoint fits vit_tiny_patch16_224\)"):
        convert_state_dict(_dino_vit(vit_tiny)[0], "vit_small_patch14_dinov2")
    with pytest.raises(ValueError, match="branch must be 'teacher' or 'student'"):
        convert_state_dict(checkpoint, "resnet18", branch="momentum")


def test_too_little_matched_is_refused(resnet18: State) -> None:
    partial = {k: v for k, v in resnet18.items() if k.startswith(("conv1.", "bn1.", "layer1."))}
    with pytest.raises(ValueError, match=r"only 30 of its 120 tensors matched; the checkpoint lacks \['layer2.0"):
        convert_state_dict(partial, "resnet18")


# --------------------------------------------------------------------------- #
# Files: convert_file, read_backbone_weights, DenseBackbone, the CLI
# --------------------------------------------------------------------------- #


def test_convert_file_round_trip(tmp_path: Path, resnet18: State) -> None:
    checkpoint, heads = _vicregl_resnet(resnet18)
    source = tmp_path / "model.pth"
    torch.save(checkpoint, source)
    report = convert_file(source, "resnet18", out=tmp_path / "out")
    assert report.complete and report.source_format == "vicregl" and sorted(report.dropped) == sorted(heads)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    read = read_backbone_weights(tmp_path / "out")
    assert read.arch == "resnet18"
    _assert_exact(read.state_dict, resnet18)
    _assert_exact(timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).state_dict(), resnet18)
    provenance = read.config["converted_from"]
    assert provenance["file"] == "model.pth" and provenance["format"] == "vicregl" and len(provenance["sha256"]) == 64
    assert convert_file(source).arch == "resnet18"  # inferred, nothing written


def test_convert_file_reads_dino_checkpoints_with_their_args(tmp_path: Path, vit_tiny: State) -> None:
    checkpoint, _ = _dino_vit(vit_tiny)
    source = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, source)  # holds an argparse.Namespace, like DINO's and iBOT's
    report = convert_file(source, out=tmp_path / "out")
    assert report.arch == "vit_tiny_patch16_224" and report.source_format == "dino" and report.complete
    _assert_exact(read_backbone_weights(tmp_path / "out").state_dict, vit_tiny)


def test_convert_file_refuses_partial_conversions(tmp_path: Path, resnet18: State) -> None:
    source = tmp_path / "partial.pth"
    torch.save({k: v for k, v in resnet18.items() if not k.startswith("layer4.1.")}, source)
    with pytest.raises(ValueError, match=r"converts only partly to resnet18: \d+ missing \['layer4.1"):
        convert_file(source, "resnet18", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    report = convert_file(source, "resnet18", out=tmp_path / "out", allow_partial=True)
    assert report.missing and not report.complete and (tmp_path / "out" / "model.safetensors").is_file()


def test_published_checkpoints_load_where_weights_files_do(tmp_path: Path, resnet18: State,
                                                           vit_tiny: State) -> None:
    """read_backbone_weights (so model.weights=, --weights, DenseBackbone) converts a raw published checkpoint."""
    for name, checkpoint, arch, expected in [
        ("vicregl.pth", _vicregl_resnet(resnet18)[0], "resnet18", resnet18),
        ("pixpro.pth", _pixpro(resnet18)[0], "resnet18", resnet18),
        ("densecl.pth", _densecl_backbone(resnet18)[0], "resnet18", resnet18),
        ("ibot.pth", _ibot_vit(vit_tiny)[0], "vit_tiny_patch16_224", vit_tiny),
    ]:
        torch.save(checkpoint, tmp_path / name)
        read = read_backbone_weights(tmp_path / name)
        assert read.arch == arch and read.arch_origin == "inferred from the checkpoint's tensor shapes", name
        assert read.source.startswith(FORMATS[detect_format(checkpoint)]) and "converted" in read.source
        _assert_exact(read.state_dict, expected)
    backbone = DenseBackbone(weights=tmp_path / "vicregl.pth")  # the architecture comes from the shapes
    assert backbone.arch == "resnet18"
    _assert_exact(backbone.model.state_dict(), resnet18)
    DenseBackbone("resnet18", weights=tmp_path / "pixpro.pth")
    # timm-named files still read as before
    torch.save(resnet18, tmp_path / "plain.pth")
    assert read_backbone_weights(tmp_path / "plain.pth").source == "timm state dict"


def test_published_checkpoint_of_an_unknown_arch_says_how_to_convert(tmp_path: Path) -> None:
    odd = {"backbone.conv1.weight": torch.randn(64, 3, 7, 7), "backbone.layer1.0.conv1.weight": torch.randn(64, 64, 1, 1),
           "backbone.layer1.0.conv3.weight": torch.randn(256, 64, 1, 1), "encoder_q.1.mlp.0.weight": torch.randn(4, 4)}
    torch.save({"state_dict": odd}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"DenseCL checkpoint .*cannot infer the architecture from its tensor shapes; "
                                         r"convert it with densessl-convert"):
        read_backbone_weights(tmp_path / "odd.pth")


def test_cli(tmp_path: Path, resnet18: State, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "pixpro.pth"
    torch.save(_pixpro(resnet18)[0], source)
    assert convert_main([str(source), "--arch", "resnet18", "--out", str(tmp_path / "out")]) == 0
    output = capsys.readouterr().out
    assert f"PixPro checkpoint (zdaxie/PixPro) -> resnet18: {len(resnet18)} tensors loaded, 0 missing" in output
    assert f"module.encoder_k.* ({len(resnet18)})" in output and "local-dir:" in output
    _assert_exact(read_backbone_weights(tmp_path / "out").state_dict, resnet18)
    assert convert_main([str(source)]) == 0 and "checked only" in capsys.readouterr().out  # arch inferred
    assert convert_main([str(source), "--arch", "vit_tiny_patch16_224", "--out", str(tmp_path / "bad")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and "holds a ResNet backbone" in errors[0]
    assert convert_main([str(tmp_path / "nope.pth")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    (tmp_path / "text.pth").write_text("hello")
    assert convert_main([str(tmp_path / "text.pth")]) == 2
    assert "is not a torch or safetensors file" in capsys.readouterr().err


def _dinov3_official(state: State) -> State:
    """timm's ``vit_*_patch16_dinov3[_qkvb]`` names -> the released DINOv3 layout: storage_tokens, ls1/ls2.gamma,
    SwiGLU w1/w2/w3, one qkv.bias (key part 0) with its bias_mask, plus mask_token and the RoPE periods buffer."""
    official: State = {}
    dim = state["cls_token"].shape[-1]
    for key, value in state.items():
        name = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        name = name.replace("mlp.fc1_g", "mlp.w1").replace("mlp.fc1_x", "mlp.w2")
        if "mlp.w1" in name or "mlp.w2" in name or ("fc2" in name and "blocks.0.mlp.fc1_g.weight" in state):
            name = name.replace("mlp.fc2", "mlp.w3")
        if name.endswith("attn.q_bias"):
            official[name.replace("q_bias", "qkv.bias")] = torch.cat(
                [value, torch.zeros(dim), state[key.replace("q_bias", "v_bias")]])
            continue
        if name.endswith("attn.v_bias"):
            continue
        official[name] = value
    for block in {k.split(".")[1] for k in state if k.startswith("blocks.")}:
        if f"blocks.{block}.attn.qkv.bias" not in official:  # timm's non-qkvb models: the release's zero biases
            official[f"blocks.{block}.attn.qkv.bias"] = torch.zeros(3 * dim)
        official[f"blocks.{block}.attn.qkv.bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    official["mask_token"] = torch.zeros(1, dim)
    official["rope_embed.periods"] = torch.rand(16)
    return official


@pytest.mark.parametrize("arch", ["vit_small_patch16_dinov3", "vit_small_patch16_dinov3_qkvb",
                                  "vit_small_plus_patch16_dinov3"])
def test_dinov3_vit_round_trip(arch: str) -> None:
    expected = _perturbed(_timm_state(arch))
    official = _dinov3_official(expected)
    assert "storage_tokens" in official and "blocks.0.ls1.gamma" in official and "rope_embed.periods" in official
    teacher = {"teacher": {**_prefixed("backbone.", official), "dino_head.mlp.0.weight": torch.randn(8, 384)},
               "student": _prefixed("backbone.", official)}
    for layout in (official, teacher):  # the hub backbone file, and a training checkpoint
        assert detect_format(layout) == "dinov3" and infer_arch(layout) == arch
        converted, report = convert_state_dict(layout, arch)
        _assert_exact(converted, expected)
        assert not report.missing and not report.unexpected
        assert "mask_token" in report.dropped and "rope_embed.periods" in report.dropped
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    model.load_state_dict(convert_state_dict(official, arch)[0])  # strict


def test_dinov3_vit_with_biases_refuses_an_arch_without_them() -> None:
    official = _dinov3_official(_perturbed(_timm_state("vit_small_patch16_dinov3_qkvb")))
    with pytest.raises(ValueError, match="q/v biases are not zero but the arch has none; use the arch's _qkvb"):
        convert_state_dict(official, "vit_small_patch16_dinov3")


def test_dinov3_convnext_round_trip() -> None:
    expected = _perturbed(_timm_state("convnext_tiny"))
    official = _official_convnext(expected, layer_scale=True)
    official.pop("head.fc.weight", None), official.pop("head.fc.bias", None)
    norms = {f"norms.{i}.weight": torch.ones(c) for i, c in enumerate((96, 192, 384, 768))}
    for layout in (official, {**official, **norms}):  # with and without the per-stage output norms
        assert detect_format(layout) == "dinov3" and infer_arch(layout) == "convnext_tiny"
        converted, report = convert_state_dict(layout, "convnext_tiny")
        _assert_exact(converted, expected)
        assert not report.missing and all(k.startswith("norms.") for k in report.dropped)


def test_convert_cli_round_trips_a_dinov3_file_into_a_timm_loadable_folder(tmp_path: Path) -> None:
    expected = _perturbed(_timm_state("vit_small_patch16_dinov3"))
    torch.save(_dinov3_official(expected), tmp_path / "dinov3_vits16_pretrain.pth")
    assert convert_main([str(tmp_path / "dinov3_vits16_pretrain.pth"), "--out", str(tmp_path / "out")]) == 0
    _assert_exact(read_backbone_weights(tmp_path / "out").state_dict, expected)
    model = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True)
    assert type(model).__name__ == "Eva" and model.num_prefix_tokens == 5  # class token + 4 registers
