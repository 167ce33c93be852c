"""Bad data, round 3 (security review): eval data checked like train data, empty and 0-d batches, dtypes
against the example's, non-iterable and endless data, unreadable bench.json files, a factory returning a
non-module, and the message asking for train_data. Each case is refused with a GraphoptError naming it."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

import graphopt
from graphopt.benchmark.models import load_bench_model
from graphopt.benchmark.schema import SCHEMA, BenchResult
from graphopt.data import batches as batches_module
from graphopt.data.run_data import read_run_data
from graphopt.errors import ConfigError, InvalidInputError, InvalidModelError, SerializationError

EXAMPLE = (torch.randn(2, 4),)


def _x(n: int = 4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 4).to(dtype)


def _y(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 3, (n,))


def _read(**data: object) -> None:
    read_run_data(EXAMPLE, **data, num_classes=3)


# 1. eval_data: checked as train data is -------------------------------------------------------------------


def test_eval_labels_shaped_n_by_1_are_refused_end_to_end():
    """(N, 1) labels broadcast against (N,) predictions into an N x N comparison: 600 % accuracy before."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(6, 4)
    y = model(x).argmax(-1)
    with pytest.raises(InvalidInputError, match=r"one label per sample.*reshape\(-1\)"):
        graphopt.optimize(model, example_inputs=(x[:2],), eval_data=[(x, y[:, None])])


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ((_x(4), _y(3)), "3 labels for inputs of batch"),
        ((torch.randn(4, 5), _y()), "per-sample shapes"),
        ((_x(4, torch.float64), _y()), r"dtype torch.float64 but .*x.float\(\)"),
        ((_x(), _y() > 1), "labels must be integer"),
        ((_x().fill_(float("nan")), _y()), "NaN or inf"),
        ((_x(1), torch.tensor(2)), "one label per sample"),
    ],
    ids=["count", "shape", "float64", "bool-labels", "nan", "0-d-labels"],
)
def test_eval_data_gets_the_checks_train_data_gets(batch, match):
    with pytest.raises(InvalidInputError, match=match):
        _read(eval_data=[batch])


# 2. empty batches -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["train_data", "validation_data", "eval_data"])
def test_a_batch_of_zero_samples_is_refused(what):
    with pytest.raises(InvalidInputError, match="0 samples"):
        _read(**{what: [(_x(0), _y(0))]})


def test_a_calibration_batch_of_zero_samples_is_refused_before_any_pass():
    with pytest.raises(InvalidInputError, match="calibration_data item 0 has 0 samples"):
        _read(calibration_data=[_x(0)])


# 3. 0-d tensors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "match"),
    [((torch.tensor(1.0), _y(1)), "0-d tensor"), ((_x(1), torch.tensor(1)), "shape-\\(\\) labels")],
    ids=["inputs", "labels"],
)
def test_0d_tensors_in_train_data_are_refused(batch, match):
    with pytest.raises(InvalidInputError, match=match):
        _read(train_data=[batch])


# 4. dtypes against the example's --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64, torch.complex64])
@pytest.mark.parametrize("what", ["calibration_data", "train_data", "validation_data", "eval_data"])
def test_data_of_another_dtype_than_the_example_is_refused(what, dtype):
    x = _x(4, dtype)
    data = [x] if what == "calibration_data" else [(x, _y())]
    with pytest.raises(
        InvalidInputError, match=rf"dtype {dtype} but example_inputs has torch.float32.*x.float"
    ):
        _read(**{what: data})


def test_integer_data_may_feed_an_integer_example_of_another_width():
    """Token ids: int32 data for an int64 example is the same kind; the model's embedding takes both."""
    ids = torch.randint(0, 9, (4, 4), dtype=torch.int32)
    data = read_run_data((torch.zeros(2, 4, dtype=torch.long),), train_data=[(ids, _y())], num_classes=3)
    (inputs,) = data.train.inputs
    assert inputs.dtype == torch.int32 and torch.equal(inputs, ids)  # accepted as given, not converted


# 5. non-iterables and endless data ------------------------------------------------------------------------


def test_a_non_iterable_calibration_data_is_refused():
    with pytest.raises(InvalidInputError, match=r"calibration_data must be an iterable .*got int"):
        _read(calibration_data=5)


@pytest.mark.parametrize("what", ["calibration_data", "train_data", "validation_data", "eval_data"])
def test_endless_data_is_cut_at_the_batch_cap(what, monkeypatch):
    monkeypatch.setattr(batches_module, "MAX_BATCHES", 5)  # the cap is read when iterating: keeps this fast
    one = _x(1) if what == "calibration_data" else (_x(1), _y(1))
    with pytest.raises(InvalidInputError, match="more than MAX_BATCHES = 5 batches"):
        _read(**{what: itertools.repeat(one)})


# 6. bench.json files that are not results -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"[1, 2]", "a JSON list, not an object"),
        (b"\x00\xd0\xff binary", "UnicodeDecodeError"),
        (b"[" * 100_000, "RecursionError"),
        (
            json.dumps({"schema": SCHEMA, "rows": [1], "model": "m"}).encode(),
            "'rows' must be a list of objects",
        ),
        (json.dumps({"schema": SCHEMA, "model": "m"}).encode(), "no 'rows'"),
    ],
    ids=["list", "binary", "deep", "rows-of-ints", "no-rows"],
)
def test_a_file_that_is_no_bench_result_is_refused_naming_it(tmp_path, content, match):
    path = tmp_path / "bench.json"
    path.write_bytes(content)
    with pytest.raises(SerializationError, match=rf"bench.json: .*{match}"):
        BenchResult.load(path)


def test_from_dict_refuses_a_non_object():
    with pytest.raises(ConfigError, match="not an object"):
        BenchResult.from_dict([1, 2])  # type: ignore[arg-type]


# 7. a factory returning a non-module ----------------------------------------------------------------------


def test_a_factory_returning_a_non_module_is_refused_naming_it():
    with pytest.raises(
        InvalidModelError, match=r"the factory os:getcwd returned a str, not a torch\.nn\.Module"
    ):
        load_bench_model("os:getcwd", input_shape=(1,))


# 8. what train_data is ------------------------------------------------------------------------------------


def test_the_message_asking_for_train_data_asks_for_labelled_pairs():
    from graphopt.pipeline.driver import _check_needs
    from graphopt.pipeline.registry import make_pass
    from graphopt.targets import TARGETS

    qat = make_pass("qat")
    with pytest.raises(
        InvalidInputError, match=r"needs train_data=\.\.\.: an iterable of \(inputs, labels\)"
    ):
        _check_needs([qat], TARGETS["x86-int8"], train_data=None)
