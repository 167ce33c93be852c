"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path):
    code = BLOCKS[index].replace("/tmp/", f"{tmp_path}/")
    assert "assert " in code  # every example checks its own result, so running it tests the README
    exec(compile(code, f"README.md[python block {index}]", "exec"), {"__name__": "readme_example"})
