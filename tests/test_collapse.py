"""``benchmarks/collapse.py``: the collapse monitors, and a run directory measured end to end (tiny PixPro heads)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import collapse  # noqa: E402

from densessl.backbones import DenseBackbone  # noqa: E402
from densessl.config_io import save_config  # noqa: E402
from densessl.objectives.pixpro import PixPro  # noqa: E402
from densessl.train.config import load_config  # noqa: E402
from densessl.train.pretrain import Pretrainer  # noqa: E402


def test_monitors_tell_collapse_from_spread() -> None:
    collapsed = collapse.monitors(torch.ones(10, 4) + 1e-3 * torch.randn(10, 4))
    spread = collapse.monitors(torch.eye(4))
    assert collapsed["mean_cosine"] > 0.99 and collapsed["rankme"] < 1.5
    assert spread["mean_cosine"] == pytest.approx(0.25) and spread["rankme"] == pytest.approx(4.0, rel=1e-4)
    assert spread["dim"] == 4
    with pytest.raises(TypeError, match="cannot read dense cells"):
        collapse.cells(torch.zeros(2, 3))


def test_a_run_directory_and_its_random_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "scenes" / "images" / "val"
    data.mkdir(parents=True)
    for index in range(2):
        Image.new("RGB", (80, 60), (40 * index, 90, 200)).save(data / f"{index}.jpg")
    run = tmp_path / "work" / "pixpro_s0"
    (run / "checkpoints").mkdir(parents=True)
    cfg = load_config("pretrain/_tiny_test.yaml", ["method=pixpro", "pixpro.hidden_dim=16", "pixpro.out_dim=8"])
    save_config(cfg, run / "config.yaml")
    torch.manual_seed(1)
    backbone = DenseBackbone(cfg.model.arch, levels=cfg.model.levels)
    model = Pretrainer(backbone, PixPro.from_backbone(backbone, cfg.objective))
    torch.save({"model": model.state_dict()}, run / "checkpoints" / "last.pt")
    out = tmp_path / "collapse.json"
    assert collapse.main(["--data-root", str(tmp_path / "scenes"), "--runs", str(run), "--random", "--size", "64",
                          "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert set(rows) == {"random init", "work/pixpro_s0"}
    assert set(rows["work/pixpro_s0"]) == {"backbone", "projector", "teacher_projector"}
    assert rows["work/pixpro_s0"]["projector"]["dim"] == 8
    assert "| work/pixpro_s0 | projector |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        collapse.main(["--data-root", str(tmp_path / "scenes"), "--runs", str(tmp_path / "missing")])
