"""docs/own_loop.md: the code of the page runs as written and trains."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "own_loop.md"


def test_the_page_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    code = re.search(r"```python\n(.*?)```", PAGE.read_text(), re.S).group(1)
    exec(compile(code, str(PAGE), "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2  # two batches of 4
    assert all("inv_local" in line and "cov_global" in line for line in lines)
