"""benchmarks/hummingbird_fractions.py: the label-fraction table runs end to end on a folder dataset, every cell from
a memory of the stated number of train images, cached."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import hummingbird_fractions  # noqa: E402


def _folder_set(root: Path, train: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.jpg")
            Image.fromarray(rng.integers(0, 2, (40, 48), dtype=np.uint8)).save(root / "masks" / split / f"{i}.png")
    (root / "classes.txt").write_text("background\nthing\n")
    return root


def test_the_fraction_table_runs_and_reuses_its_cache(tmp_path: Path, capsys) -> None:
    data = _folder_set(tmp_path / "scenes")
    args = ["--data-root", str(data), "--weights", "random", "--arch", "resnet18", "--fractions", "1", "8",
            "--seeds", "0", "1", "--preset", "default", "--set", "features.input_size=64", "features.batch_size=8",
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "table.json")]
    assert hummingbird_fractions.main(args) == 0
    result = json.loads((tmp_path / "table.json").read_text())
    cells = {(run["fraction"], run["seed"]): run for run in result["runs"]}
    assert set(cells) == {("1/1", 0), ("1/8", 0), ("1/8", 1)}
    assert cells[("1/1", 0)]["memory_train_images"] == 16 and cells[("1/8", 0)]["memory_train_images"] == 2
    assert result["table"][0].split() == ["backbone", "1/1", "1/8"] and result["table"][1].startswith("random")
    cached = sorted(p.name for p in (tmp_path / "work" / "random").iterdir())
    assert cached == ["f1_s0.json", "f8_s0.json", "f8_s1.json"]
    capsys.readouterr()
    assert hummingbird_fractions.main(args) == 0  # from the cache: the same numbers
    assert json.loads((tmp_path / "table.json").read_text())["runs"] == result["runs"]
