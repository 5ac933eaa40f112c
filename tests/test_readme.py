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
