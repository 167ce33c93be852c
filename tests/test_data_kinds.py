"""Data that has a shape but no usable values (meta, sparse, quantized tensors) is refused by name in every
data argument, not only ``example_inputs``; and training does not re-seed the caller's random generator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt import InvalidInputError
from graphopt.recovery import RecoveryConfig


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


X = torch.randn(1, 1, 8, 8)
LABELS = torch.tensor([0, 1])
KINDS = {
    "meta": lambda: torch.empty(2, 1, 8, 8, device="meta"),
    "sparse": lambda: torch.randn(2, 1, 8, 8).to_sparse(),
    "quantized": lambda: torch.quantize_per_tensor(  # deprecated, but what a torch.ao user may hold
        torch.randn(2, 1, 8, 8), 0.1, 0, torch.quint8
    ),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("argument", ["calibration_data", "train_data", "eval_data", "validation_data"])
def test_tensors_without_dense_values_are_refused_in_every_data_argument(kind, argument):
    batch = KINDS[kind]()
    data = {
        "calibration_data": {"target": "x86-int8", "calibration_data": [batch]},
        "train_data": {"train_data": [(batch, LABELS)], "prune": 0.5},
        "eval_data": {"eval_data": [(batch, LABELS)]},
        "validation_data": {"train_data": [(torch.randn(2, 1, 8, 8), LABELS)], "prune": 0.5,
                            "validation_data": [(batch, LABELS)]},
    }[argument]  # fmt: skip
    with pytest.raises(InvalidInputError, match=kind if kind != "quantized" else "dequantize"):
        graphopt.optimize(_model(), example_inputs=(X,), **data)


def _draw_after_optimize(caller_seed: int) -> torch.Tensor:
    model = _model()
    torch.manual_seed(caller_seed)
    graphopt.optimize(
        model, example_inputs=(X,), train_data=[(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))],
        prune=0.5, recovery=RecoveryConfig(epochs=1, quiet=True, val_fraction=0.0, seed=7),
    )  # fmt: skip
    return torch.rand(3)


def test_training_does_not_reseed_the_callers_generator():
    """Recovery trains from its own seed (7 here); re-seeding the global generator with it made every draw
    the caller made afterwards the same whatever the caller had seeded."""
    assert not torch.equal(_draw_after_optimize(123), _draw_after_optimize(456))
