from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graphopt.data.digits import DigitsTraining, load_digits_split, train_digits_cnn

#: Node ids of the long cases, measured (tests/slow.txt says when and where).
SLOW = {
    line.split("#")[0].strip()
    for line in (Path(__file__).with_name("slow.txt")).read_text().splitlines()
    if line.split("#")[0].strip()
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the measured long cases ``slow``: ``-m "not slow"`` is the quick loop (README)."""
    for item in items:
        if item.nodeid in SLOW:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits():
    return load_digits_split()


@pytest.fixture(scope="session")
def digits_model(digits):
    """A digits CNN trained briefly (8 epochs, ~4 s): enough for accuracy-preservation checks."""
    return train_digits_cnn(digits, DigitsTraining(epochs=8, seed=0), quiet=True)


def state_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor], training: bool) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} was mutated"
    assert model.training is training
