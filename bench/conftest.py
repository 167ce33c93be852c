"""Benchmarks run like an edge deployment: one pinned core, one thread, batch 1.

Run with ``python -m pytest bench --benchmark-enable`` (not part of the default test run).
"""

from __future__ import annotations

import pytest
import torch

from graphopt.backends import pin_to_one_core


@pytest.fixture(scope="session", autouse=True)
def one_pinned_core() -> None:
    pin_to_one_core()
    torch.set_num_threads(1)
