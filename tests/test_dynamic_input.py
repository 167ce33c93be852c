"""Bad ``dynamic_shapes`` refused up front or at capture, export failures that name their real cause, and
dict / ``ModelOutput`` keys as ONNX output names on both capture paths.

Each model here is tiny. A model "fx cannot trace" checks its input's batch in Python
(``if x.shape[0] > 9: raise``), which sends capture through torch.export, as Hugging Face models go.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

import graphopt
from graphopt.backends.onnx_backend import OnnxRunner, exporter_failure, mark_written

FEATURES = 16


class SeqMean(nn.Module):
    """(batch, seq, features) -> (batch, 4): any sequence length."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(FEATURES, 4)

    def forward(self, x):
        return self.fc(x).mean(1)


class FixesSeqByView(SeqMean):
    """Reshapes to a constant sequence length: dim 1 cannot vary."""

    def forward(self, x):
        return self.fc(x.view(1, 8, -1)).mean(1)


class FixesSeqByLinear(nn.Module):
    """A Linear over the sequence dim: dim 1 cannot vary. fx cannot trace it (the batch check)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if x.shape[0] > 9:
            raise ValueError("at most 9 per batch")
        return self.fc(x.transpose(1, 2))


class Masked(nn.Module):
    """Two inputs whose dim 1 is the same sequence: a tied dim."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(FEATURES, 4)

    def forward(self, x, mask):
        return (self.fc(x) * mask.unsqueeze(-1)).mean(1)


class MaskedChecked(Masked):
    def forward(self, x, mask):
        if x.shape[0] > 9:
            raise ValueError("at most 9 per batch")
        return super().forward(x, mask)


class DictHeads(nn.Module):
    """Returns a dict; fx cannot trace it, so it is captured through torch.export."""

    def __init__(self):
        super().__init__()
        self.cls, self.box = nn.Linear(8, 3), nn.Linear(8, 4)

    def forward(self, x):
        if x.shape[0] > 9:
            raise ValueError("at most 9 per batch")
        return {"logits": self.cls(x), "boxes": self.box(x)}


class GatedBlock(nn.Module):
    """Branches on a tensor's value: fx makes it an opaque leaf, and no exporter can capture it whole."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class WithGatedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.gate, self.out = nn.Linear(8, 8), GatedBlock(), nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.gate(self.inp(x)))


class TokenClassifier(nn.Module):
    """An embedding (int64 input): the direct ONNX lowering does not cover it, torch.onnx writes it."""

    def __init__(self):
        super().__init__()
        self.embed, self.fc = nn.Embedding(10, 8), nn.Linear(8, 2)

    def forward(self, ids):
        return self.fc(self.embed(ids))


def _seq(length: int = 8) -> torch.Tensor:
    return torch.randn(1, length, FEATURES)


def _optimize(model: nn.Module, inputs: tuple[torch.Tensor, ...], dynamic: object) -> graphopt.OptimizeResult:
    torch.manual_seed(0)
    return graphopt.optimize(model.eval(), "generic-fp32", example_inputs=inputs, dynamic_shapes=dynamic)


# -- refused up front: what dynamic_shapes names must exist and be usable -----------------------------------
class OneD(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(FEATURES, 4)

    def forward(self, x):
        return self.fc(x.unsqueeze(0))


@pytest.mark.parametrize(
    ("model", "inputs", "spec", "error", "message"),
    [
        (OneD(), (torch.randn(FEATURES),), {"x": {1: "seq"}}, graphopt.ConfigError,
         r"dim 1 of input 'x', which has 1 dims .*no dim besides the batch"),
        (nn.Conv2d(3, 4, 3), (torch.randn(1, 3, 8, 8),), {0: {7: "h"}}, graphopt.ConfigError,
         r"dim 7 of input 'input', which has 4 dims .*name a dim from 1 to 3"),
        (SeqMean(), (_seq(),), {"x": {1: ""}}, graphopt.ConfigError, "must be an identifier"),
        (SeqMean(), (_seq(),), {"x": {1: "my seq"}}, graphopt.ConfigError, "must be an identifier"),
        (SeqMean(), (_seq(),), {"x": {1: "batch"}}, graphopt.ConfigError,
         r"'batch', the name graphopt gives dim 0 .*name of its own"),
        (SeqMean(), (_seq(1),), {"x": {1: "seq"}}, graphopt.InvalidInputError,
         r"dim 1 of input 'x' is declared dynamic \('seq'\) but has size 1.*specialises.*>= 2 long"),
        (Masked(), (_seq(8), torch.ones(1, 6)), {"x": {1: "seq"}, "mask": {1: "seq"}},
         graphopt.InvalidInputError, r"'seq' is 8 long at dim 1 of input 'x' but 6 at dim 1 of input 'mask'"),
    ],
    ids=["dim-of-1d-input", "dim-7-of-4d", "empty-name", "spaced-name", "batch-name", "one-token", "unequal"],
)  # fmt: skip
def test_dynamic_shapes_the_example_cannot_honour_are_refused_before_capture(
    model, inputs, spec, error, message
):
    with pytest.raises(error, match=message):
        _optimize(model, inputs, spec)


def test_a_one_token_example_is_refused_on_the_torch_export_path_without_fx_advice():
    """It used to open with fx's symbolic-trace failure and control-flow advice."""
    with pytest.raises(graphopt.InvalidInputError, match="size 1") as caught:
        _optimize(MaskedChecked(), (_seq(1), torch.ones(1, 1)), {"x": {1: "seq"}, "mask": {1: "seq"}})
    assert "torch.fx" not in str(caught.value) and "control flow" not in str(caught.value)


# -- refused at capture: the model's code fixes a dim declared dynamic ------------------------------------
@pytest.mark.parametrize(
    ("model", "capture_path"),
    [(FixesSeqByView(), "torch.fx"), (FixesSeqByLinear(), "torch.export")],
    ids=["view-fx", "linear-export"],
)
def test_a_dim_the_model_fixes_is_refused_at_capture_naming_the_dim_and_the_fix(model, capture_path):
    assert _optimize(model, (_seq(),), None).report.capture == capture_path  # captures without the dim
    with pytest.raises(graphopt.ConfigError) as caught:
        _optimize(model, (_seq(),), {"x": {1: "seq"}})
    first, advice = str(caught.value).split("\n")
    assert "dim 1 of input 'x' dynamic ('seq'), but the model fixes it" in first
    assert "specialises that dim to 8" in first
    assert advice.startswith("Drop 'seq' from dynamic_shapes")
    assert "TORCH_LOGS" not in str(caught.value) and "control flow" not in str(caught.value)


@pytest.mark.parametrize("model", [Masked(), MaskedChecked()], ids=["fx", "export"])
def test_a_tied_dim_declared_on_one_input_only_names_the_other_input(model):
    inputs = (_seq(), torch.ones(1, 8))
    with pytest.raises(graphopt.ConfigError, match="ties it to dim 1 of input 'mask'") as caught:
        _optimize(model, inputs, {"x": {1: "seq"}})
    assert "{'x': {1: 'seq'}, 'mask': {1: 'seq'}}" in str(caught.value)
    assert "torch.fx" not in str(caught.value)


@pytest.mark.parametrize("model", [SeqMean(), MaskedChecked()], ids=["fx", "export"])
def test_a_dynamic_dim_the_model_follows_exports_and_runs_at_other_lengths(model, tmp_path):
    inputs = (_seq(),) if isinstance(model, SeqMean) else (_seq(), torch.ones(1, 8))
    spec = {"x": {1: "seq"}} if isinstance(model, SeqMean) else {"x": {1: "seq"}, "mask": {1: "seq"}}
    res = _optimize(model, inputs, spec)
    graph = onnx.load(str(res.export(tmp_path / "m.onnx"))).graph
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [
        "batch", "seq", FEATURES,
    ]  # fmt: skip


@pytest.mark.parametrize("target", ["x86-int8", "x86-dynamic-int8"])
def test_calibration_batches_may_differ_along_a_declared_dynamic_dim(target, tmp_path):
    """Real text comes at many lengths: with the sequence declared dynamic, calibration batches of other
    lengths than the example's calibrate (they were refused for their per-sample shape)."""
    calibration = [_seq(6), _seq(12), torch.randn(3, 5, FEATURES)]
    res = graphopt.optimize(
        SeqMean().eval(), target, example_inputs=(_seq(),), calibration_data=calibration,
        dynamic_shapes={"x": {1: "seq"}},
    )  # fmt: skip
    runner = OnnxRunner(res.export(tmp_path / "m.onnx"))
    x = _seq(12)
    assert np.allclose(runner.run(x)[0], res.model(x).detach().numpy(), atol=0.05)


class TokensMasked(nn.Module):
    """Token ids and an integer attention mask, as a tokenizer gives them."""

    def __init__(self):
        super().__init__()
        self.embed, self.fc = nn.Embedding(50, FEATURES), nn.Linear(FEATURES, 4)

    def forward(self, ids, mask):
        return (self.fc(self.embed(ids)) * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)


def test_integer_token_batches_at_other_lengths_are_inputs_not_input_label_pairs():
    """(ids, mask) at another length than the example's was read as (inputs, labels), its integer mask
    taken for labels, and refused for the shape of one input (issue 42)."""
    example = (torch.randint(0, 50, (1, 8)), torch.ones(1, 8, dtype=torch.long))
    batches = [(torch.randint(0, 50, (4, n)), torch.ones(4, n, dtype=torch.long)) for n in (5, 13)]
    res = graphopt.optimize(
        TokensMasked().eval(), "x86-dynamic-int8", example_inputs=example,
        calibration_data=batches, dynamic_shapes={"ids": {1: "seq"}, "mask": {1: "seq"}},
    )  # fmt: skip
    assert res.report.stage("quantize_dynamic").stats["worst_cosine"] > 0.9  # the fall-back ranked on them


def test_calibration_at_another_length_is_refused_when_no_dim_is_declared_dynamic():
    with pytest.raises(graphopt.InvalidInputError, match=r"per-sample shapes \[\(6, 16\)\]"):
        graphopt.optimize(SeqMean().eval(), "x86-int8", example_inputs=(_seq(),), calibration_data=[_seq(6)])


# -- export failures name their cause ---------------------------------------------------------------------
def test_control_flow_in_a_submodule_recommends_no_backend_that_fails_too(tmp_path):
    """The ONNX error used to recommend backend='torchscript', whose tracing bakes one branch in (the
    artifact check then refuses it, as it checks inputs that take the other branch)."""
    res = _optimize(WithGatedBlock(), (torch.randn(1, 8),), None)
    assert "gate" in res.report.leaves
    with pytest.raises(graphopt.ExportError, match=r"rewrite it with torch\.where or torch\.cond") as caught:
        res.export(tmp_path / "m.onnx")
    assert "backend='torchscript'" not in str(caught.value)
    assert "data-dependent" in str(caught.value).lower()
    with pytest.raises(graphopt.ExportError, match=r"torch\.where or torch\.cond"):
        res.export(tmp_path / "m.pt")  # which is why it is not recommended
    assert not list(tmp_path.iterdir())


def test_a_missing_onnxscript_says_to_install_it(tmp_path, monkeypatch):
    res = _optimize(TokenClassifier(), (torch.randint(0, 10, (1, 5)),), None)

    def exporter_without_onnxscript(*args, **kwargs):  # what torch.onnx's dynamo exporter raises then
        raise ModuleNotFoundError("No module named 'onnxscript'", name="onnxscript")

    monkeypatch.setattr(torch.onnx, "export", exporter_without_onnxscript)
    with pytest.raises(graphopt.ExportError, match="pip install onnxscript") as caught:
        res.export(tmp_path / "m.onnx")
    assert "control flow" not in str(caught.value)
    assert not list(tmp_path.iterdir())


def test_a_translation_failure_recommends_torchscript():
    """After a capture without data-dependent control flow, tracing records the graph faithfully."""
    message = exporter_failure(RuntimeError("no translation for aten::frobnicate"), 18)
    assert "backend='torchscript'" in message and "opset 18" in message


def _unloadable(path, *, ours: bool):
    node = helper.make_node("NoSuchOp", ["x"], ["y"])
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], "g", [value("x", TensorProto.FLOAT, [1])], [value("y", TensorProto.FLOAT, [1])]
    )
    model = helper.make_model(graph, producer_name="sometool", opset_imports=[helper.make_opsetid("", 18)])
    if ours:
        mark_written(model, "torch.onnx")
    onnx.save(model, str(path))
    return path


def test_onnx_runtime_refusing_a_file_asks_for_a_report_only_when_graphopt_wrote_it(tmp_path):
    with pytest.raises(graphopt.ExportError, match="NoSuchOp") as theirs:
        OnnxRunner(_unloadable(tmp_path / "theirs.onnx", ours=False))
    assert "please report" not in str(theirs.value) and "graphopt did not write" in str(theirs.value)
    with pytest.raises(graphopt.ExportError, match="please report it"):
        OnnxRunner(_unloadable(tmp_path / "ours.onnx", ours=True))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(graphopt.ExportError, match="graphopt did not write"):
        OnnxRunner(tmp_path / "junk.onnx")


# -- dict and ModelOutput keys name the ONNX outputs on the torch.export path --------------------------------
def _export_and_compare(model: nn.Module, tmp_path) -> list[str]:
    x = torch.randn(1, 8)
    res = _optimize(model, (x,), None)
    assert res.report.capture == "torch.export"
    path = res.export(tmp_path / "m.onnx")
    runner = OnnxRunner(path)
    x3 = torch.randn(3, 8)
    with torch.no_grad():
        expected = model(x3)
    got = runner.run(x3)
    for (key, value), array in zip(expected.items(), got, strict=True):
        np.testing.assert_allclose(array, value.numpy(), rtol=1e-5, atol=1e-5, err_msg=key)
    return [o.name for o in onnx.load(str(path)).graph.output]


def test_dict_keys_name_the_onnx_outputs_of_a_model_fx_cannot_trace(tmp_path):
    assert _export_and_compare(DictHeads().eval(), tmp_path) == ["logits", "boxes"]


def test_model_output_fields_name_the_onnx_outputs_of_a_model_fx_cannot_trace(tmp_path):
    transformers = pytest.importorskip("transformers")

    @dataclass
    class HeadsOutput(transformers.utils.ModelOutput):
        logits: torch.Tensor | None = None
        boxes: torch.Tensor | None = None

    class ModelOutputHeads(DictHeads):
        def forward(self, x):
            out = super().forward(x)
            return HeadsOutput(logits=out["logits"], boxes=out["boxes"])

    assert _export_and_compare(ModelOutputHeads().eval(), tmp_path) == ["logits", "boxes"]


def test_inputs_sharing_a_dynamic_dim_must_share_its_size_in_each_calibration_batch():
    spec = {"x": {1: "seq"}, "mask": {1: "seq"}}
    batch = (_seq(12), torch.ones(1, 16))  # one "seq", two lengths
    message = r"'seq' is 12 long at dim 1 of input 'x' but 16 at dim 1 of input 'mask' in calibration_data"
    with pytest.raises(graphopt.InvalidInputError, match=message):
        graphopt.optimize(
            MaskedChecked().eval(), "x86-int8", example_inputs=(_seq(), torch.ones(1, 8)),
            calibration_data=[batch], dynamic_shapes=spec,
        )  # fmt: skip


def test_calibration_batches_are_read_once_and_checked_against_the_example():
    from graphopt.data.calibration import CalibrationBatches, read_calibration_inputs
    from graphopt.data.run_data import read_run_data

    checked = read_calibration_inputs([_seq(6)], (_seq(6),))
    assert isinstance(checked, CalibrationBatches)
    assert read_run_data((_seq(6),), calibration_data=checked).calibration is checked  # taken as it is
    with pytest.raises(graphopt.InvalidInputError, match="per-sample shapes"):
        read_calibration_inputs(checked, (_seq(8),))
    with pytest.raises(graphopt.InvalidInputError, match="NaN"):
        read_calibration_inputs([(torch.full((1, 6, 16), float("nan")),)], (_seq(6),))
