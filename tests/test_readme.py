"""The README's pipeline snippet runs exactly as written, for a ResNet and a ViT."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
    text = README.read_text()
    section = text.split("## The pipeline in 15 lines", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_snippet_is_at_most_15_lines() -> None:
    assert len(_snippet().strip().splitlines()) <= 15


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_snippet_runs(arch: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = _snippet().replace('ARCH = "resnet18"', f'ARCH = "{arch}"')
    assert f'ARCH = "{arch}"' in code
    exec(compile(code, str(README), "exec"), {})
    assert "inv_local" in capsys.readouterr().out


RESULTS = README.parent / "benchmarks" / "results"
# README main table: set -> the result file it cites; backbone label -> variant key.
TABLE_FILES = {"Stanford Background": "sb_408_s012.json",
               "LabelMeFacade": "quality_labelmefacade_s012.json"}
TABLE_VARIANTS = {"random init": "random", "VICReg (α = 1)": "vicreg", "VICRegL (α = 0.75)": "vicregl_a0.75"}
TABLE_METRICS = ["linear_last", "knn_last", "linear_l34", "knn_l34"]


def _scene_section() -> str:
    """The README's real-scene section: its table and reading."""
    return README.read_text().split("## What the local criterion buys, on real scenes", 1)[1].split("\n## ", 1)[0]


def _main_table() -> list[list[str]]:
    rows = [line for line in _scene_section().splitlines() if line.startswith("| ")]
    return [[cell.strip().strip("*") for cell in row.strip("|").split("|")] for row in rows[1:]]


def test_main_table_is_the_result_files() -> None:
    """Every number of the README's real-scene table is the mean ± std (or same-seed difference) of the result
    file it cites, and the DAVIS J&F of its reading the seed-1 408-step file's."""
    import json
    from statistics import mean, stdev

    current = None
    davis = json.loads((RESULTS / "sb_408_davis_s1.json").read_text())["results"]
    checked = 0
    for cells in _main_table():
        if cells[0]:
            current = next(name for name in TABLE_FILES if cells[0].startswith(name))
        data = json.loads((RESULTS / TABLE_FILES[current]).read_text())
        for metric, cell in zip(TABLE_METRICS, cells[2:6]):
            if cells[1] == "VICRegL − VICReg, same seed":
                diff = data["paired"]["differences"]["vicregl_a0.75"][metric]
                expected = f"{diff['mean']:+.2f} ± {diff['std']:.2f}"
            else:
                values = data["results"][TABLE_VARIANTS[cells[1]]][metric]
                assert len(values) == 3
                expected = f"{mean(values):.2f} ± {stdev(values):.2f}"
            assert cell == expected, (current, cells[1], metric)
            checked += 1
    assert checked == 32
    quoted = re.search(r"J&F: random init ([\d.]+), VICReg ([\d.]+), VICRegL ([\d.]+)",
                       " ".join(_scene_section().split()))
    assert quoted, "the reading quotes the DAVIS J&F of the three backbones"
    for variant, cell in zip(["random", "vicreg", "vicregl_a0.75"], quoted.groups()):
        assert cell == f"{davis[variant]['davis_JF_last'][0]:.1f}", variant
