"""The one data module: every dataset of a call read and checked once into RunData; the one validation split;
the one shared-dim check (example inputs, calibration, train and validation batches alike)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt.data.dims import DynamicDims
from graphopt.data.labelled import LabelledTensors, read_labelled, split_validation
from graphopt.data.run_data import RunData, read_run_data
from graphopt.pipeline.driver import DATA_UNUSED, OptimizeCall, run_call
from graphopt.pipeline.pass_base import Pass, PassResult
from graphopt.reporting.notes import notes_with

FEATURES = 4


class Counting:
    """An iterable that counts how often it is iterated (a generator could be iterated once only)."""

    def __init__(self, items: list):
        self.items, self.iterations = items, 0

    def __iter__(self):
        self.iterations += 1
        return iter(self.items)


class ReadsEverything(Pass):
    """A pass that reads every dataset through its context, twice."""

    name, description, exact = "reads_everything", "Reads the call's data.", False

    def call(self, gm):
        for _ in range(2):
            seen = (self.context.calibration_data, self.context.train_data, self.context.validation_data)
            assert all(x is not None for x in seen) and self.context.eval_data is not None
        return PassResult(gm, modified=False)


def _labelled(n: int = 8) -> list:
    return [(torch.randn(n, FEATURES), torch.randint(0, 3, (n,)))]


def test_every_dataset_is_iterated_once_per_call_and_reaches_passes_typed():
    calibration = Counting([torch.randn(2, FEATURES)])
    train, validation, evaluation = Counting(_labelled()), Counting(_labelled()), Counting(_labelled())
    result = run_call(OptimizeCall(
        nn.Linear(FEATURES, 3).eval(), "generic-fp32", (torch.randn(1, FEATURES),),
        calibration_data=calibration, train_data=train, validation_data=validation, eval_data=evaluation,
        passes=[ReadsEverything()],
    ))  # fmt: skip
    assert [d.iterations for d in (calibration, train, validation, evaluation)] == [1, 1, 1, 1]
    assert not notes_with(result.report, DATA_UNUSED)


def test_run_data_holds_one_typed_form_of_each_kind():
    x = (torch.randn(1, FEATURES),)
    data = read_run_data(
        x, calibration_data=[torch.randn(2, FEATURES)], train_data=_labelled(), eval_data=_labelled(),
        num_classes=3,
    )  # fmt: skip
    assert isinstance(data, RunData) and isinstance(data.train, LabelledTensors)
    assert data.calibration is not None and isinstance(data.calibration[0], tuple)
    assert data.eval is not None and isinstance(data.eval[0][0], tuple)  # inputs as a tuple of tensors
    assert data.validation is None and data.given() == ["calibration_data", "train_data", "eval_data"]
    with pytest.raises(graphopt.InvalidInputError, match=r"train_data has labels in \[0, 5\]"):
        read_run_data(x, train_data=[(torch.randn(2, FEATURES), torch.tensor([0, 5]))], num_classes=3)
    with pytest.raises(graphopt.InvalidInputError, match="eval_data labels must be integer"):
        read_run_data(x, eval_data=[(torch.randn(2, FEATURES), torch.tensor([0.0, 1.0]))])


# -- the one split ----------------------------------------------------------------------------------------
def _samples(n: int) -> LabelledTensors:
    return LabelledTensors((torch.arange(n, dtype=torch.float32).view(-1, 1),), torch.arange(n))


def test_the_split_is_seeded_disjoint_and_holds_out_the_share():
    data = _samples(100)
    kept, held = split_validation(data, 0.2, seed=3)
    assert held is not None and (len(kept), len(held)) == (80, 20)
    assert not set(kept.labels.tolist()) & set(held.labels.tolist())
    assert torch.equal(kept.inputs[0].view(-1), kept.labels.float())  # inputs stay with their labels
    again, _ = split_validation(data, 0.2, seed=3)
    other, _ = split_validation(data, 0.2, seed=4)
    assert torch.equal(again.labels, kept.labels) and not torch.equal(other.labels, kept.labels)
    ordered, held_ordered = split_validation(data, 0.2, seed=3, in_order=True)
    assert ordered.labels.tolist() == sorted(kept.labels.tolist())
    assert held_ordered is not None and held_ordered.labels.tolist() == sorted(held.labels.tolist())


def test_the_split_keeps_everything_when_there_is_nothing_to_hold_out_or_too_little_to_split():
    data = _samples(10)
    assert split_validation(data, 0.0, seed=0) == (data, None)
    assert split_validation(data, 0.01, seed=0) == (data, None)  # rounds to no sample
    assert split_validation(data, 0.5, seed=0, min_samples=11) == (data, data)  # both share all of it
    kept, held = split_validation(data, 0.5, seed=0, min_samples=10)
    assert held is not None and len(kept) == len(held) == 5


# -- the one shared-dim check -----------------------------------------------------------------------------
SEQ = DynamicDims(({1: "seq"}, {1: "seq"}), ("x", "mask"))


def _pair(x_len: int, mask_len: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, x_len, FEATURES), torch.ones(batch, mask_len)


@pytest.mark.parametrize(
    "kind", ["example_inputs", "calibration_data", "train_data", "validation_data", "eval_data"]
)
def test_inputs_sharing_a_dynamic_dim_must_share_its_size_in_every_kind_of_data(kind):
    example = _pair(8, 8)
    bad = _pair(12, 16, batch=2)
    given = {
        "calibration_data": [bad],
        "train_data": [(bad, torch.tensor([0, 1]))],
        "validation_data": [(bad, torch.tensor([0, 1]))],
        "eval_data": [(bad, torch.tensor([0, 1]))],
    }
    expected = r"'seq' is 12 long at dim 1 of input 'x' but 16 at dim 1 of input 'mask' in " + kind
    with pytest.raises(graphopt.InvalidInputError, match=expected):
        if kind == "example_inputs":
            SEQ.check_example(bad)
        else:
            read_run_data(example, SEQ, **{kind: given[kind]})


def test_train_data_at_another_length_along_a_declared_dynamic_dim_is_accepted():
    example = _pair(8, 8)
    data = read_run_data(example, SEQ, train_data=[(_pair(12, 12, batch=2), torch.tensor([0, 1]))])
    assert data.train is not None and data.train.inputs[0].shape == (2, 12, FEATURES)
    with pytest.raises(graphopt.InvalidInputError, match=r"per-sample shapes \[\(12, 4\), \(12,\)\]"):
        fixed = DynamicDims(({}, {}), ("x", "mask"))
        read_run_data(example, fixed, train_data=[(_pair(12, 12), torch.tensor([0]))])


def test_train_batches_of_different_lengths_are_refused_naming_the_dim_and_the_fix():
    batches = [(_pair(12, 12), torch.tensor([0])), (_pair(10, 10), torch.tensor([1]))]
    message = r"item 1 .*declares \(seq\).*pad them to one length"
    with pytest.raises(graphopt.InvalidInputError, match=message):
        read_labelled(batches, "train_data", _pair(8, 8), SEQ)
