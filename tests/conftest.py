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


def pytest_configure(config: pytest.Config) -> None:
    _build_the_torchlib_registry_once()


def _build_the_torchlib_registry_once() -> None:
    """Every ``torch.onnx.export(dynamo=True)`` rebuilds the same ONNX function registry from torchlib,
    parsing the source of ~500 onnxscript functions (about half the fixed cost of exporting a small model,
    and the suite exports eager models a few hundred times). The suite builds it once per opset and hands
    each export its own copy (the exporter adds graphopt's custom translations to it), so every file
    exports byte-for-byte as before. A torch without this private class keeps the per-export build."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return
    registry_type = getattr(_registration, "ONNXRegistry", None)
    if registry_type is None or not hasattr(registry_type, "from_torchlib"):
        return
    build = registry_type.from_torchlib.__func__
    built: dict[tuple[type, int], object] = {}

    def from_torchlib(cls, opset_version=_registration._constants.TORCHLIB_OPSET):
        if (cls, opset_version) not in built:
            built[cls, opset_version] = build(cls, opset_version)
        template = built[cls, opset_version]
        registry = cls.__new__(cls)
        registry.__dict__.update(template.__dict__)
        registry.functions = {target: list(metas) for target, metas in template.functions.items()}
        return registry

    registry_type.from_torchlib = classmethod(from_torchlib)


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
