"""The documented dense post-training of a converted DINOv3 backbone (configs/pretrain/posttrain_dinov3_vits16.yaml):
it starts from the release's weights, anchors to them with Gram anchoring, and exports a timm-loadable model."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch

from densessl.train.config import load_config
from densessl.train.pretrain import train
from tests.test_convert import _dinov3_official


def test_post_training_a_converted_dinov3_vit(tmp_path: Path) -> None:
    from densessl.weights import convert_file

    released = timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0)
    torch.save(_dinov3_official(released.state_dict()), tmp_path / "dinov3_vits16_pretrain.pth")
    convert_file(tmp_path / "dinov3_vits16_pretrain.pth", out=tmp_path / "weights")  # the arch is inferred
    weights = str(tmp_path / "weights")
    cfg = load_config("posttrain_dinov3_vits16", [
        f"model.weights={weights}", f"gram.weights={weights}", "data.source=synthetic", "data.synthetic_images=4",
        "data.synthetic_size=64", "data.batch_size=2", "data.num_workers=0", "data.multicrop.global_size=64",
        "data.multicrop.local_size=32", "data.multicrop.n_local=2", "train.max_iters=3", "train.progress=false",
        "train.log_every=1", "optim.warmup_epochs=0",
        "vicregl.projector=64-64", "vicregl.local_projector=32-32"])
    result = train(cfg, tmp_path / "run")
    assert result.iteration == 3 and not result.interrupted
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("gram" in r for r in records) and records[0]["gram"] == 0.0  # step 1: the student is the anchor
    assert records[-1]["gram"] > 0.0  # the student has moved away from its anchor
    model = timm.create_model(f"local-dir:{tmp_path / 'run' / 'export'}", pretrained=True)
    assert type(model).__name__ == "Eva"
    moved = model.state_dict()["blocks.0.attn.qkv.weight"]
    assert not torch.equal(moved, released.state_dict()["blocks.0.attn.qkv.weight"])  # post-trained
