"""The guides' Python examples (every ```python block of docs/**/*.md) run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", flags=re.S)
BLOCKS = [
    (f"{path.relative_to(DOCS)}[{index}]", code)
    for path in sorted(DOCS.rglob("*.md"))
    for index, code in enumerate(PYTHON_BLOCK.findall(path.read_text()))
]


def test_the_guides_have_examples():
    assert len(BLOCKS) >= 8


def test_links_between_docs_point_at_files():
    # A moved or renamed guide must not leave a dead relative link behind.
    root = DOCS.parent
    pages = [root / "README.md", *sorted(DOCS.rglob("*.md"))]
    dead = [
        f"{page.relative_to(root)} -> {target}"
        for page in pages
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", page.read_text())
        if not (page.parent / target).exists()
    ]
    assert not dead


# Each example runs optimize end to end (calibration, training, export): seconds, so outside the quick loop.
@pytest.mark.slow
@pytest.mark.parametrize("name, code", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_docs_example_runs(name, code, tmp_path):
    code = code.replace("/tmp/", f"{tmp_path}/")
    assert "assert " in code  # every example checks its own result, so running it tests the guide
    # dont_inherit: the example runs as written, without this module's `from __future__` flags.
    exec(compile(code, f"docs/{name}", "exec", dont_inherit=True), {"__name__": "docs_example"})
