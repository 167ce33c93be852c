"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_its_three_examples():
    # A CNN for arm-int8, prune + distill + early exit on digits, a transformer in dynamic int8.
    assert len(BLOCKS) == 3


# Each example runs optimize end to end (training, export): seconds, so outside the quick loop.
@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path):
    code = BLOCKS[index].replace("/tmp/", f"{tmp_path}/")
    assert "assert " in code  # every example checks its own result, so running it tests the README
    # dont_inherit: the example runs as written, without this module's `from __future__` flags.
    exec(
        compile(code, f"README.md[python block {index}]", "exec", dont_inherit=True),
        {"__name__": "readme_example"},
    )
