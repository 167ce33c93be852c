"""Every reference architecture through every fp32 target and both backends."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import graphopt
from graphopt.backends import OnnxRunner, TorchScriptRunner
from graphopt.frontend.capture import FX_LEFT_LEAVES, capture
from graphopt.zoo import TEST_MODELS, get_model
from tests.conftest import assert_unchanged, state_snapshot
from tests.helpers import outputs


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", TEST_MODELS)
def test_generic_fp32_exact_and_exports(name, tmp_path):
    model, inputs = get_model(name).build()
    res = graphopt.optimize(model, target="generic-fp32", example_inputs=inputs)
    expected = outputs(model, *inputs)
    torch.testing.assert_close(outputs(res.model, *inputs), expected, rtol=1e-5, atol=1e-5)
    # every BatchNorm in these models follows a conv/linear whose output has no other user: all fold
    assert res.report.stage("fold_batchnorm").stats.get("folded", 0) == _batchnorms(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in res.model.modules())

    onnx_path = res.export(tmp_path / f"{name}.onnx")
    ts_path = res.export(tmp_path / f"{name}.pt")
    scale = float(expected.abs().max())
    for runner in (OnnxRunner(onnx_path), TorchScriptRunner(ts_path)):
        (got,) = runner.run(*inputs)
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-4 * scale)
    rows = {r.stage: r for r in res.report.stages}
    assert rows["artifact:onnx"].bytes == onnx_path.stat().st_size
    assert rows["artifact:onnx"].agreement.cosine > 0.99999


def test_onnx_is_one_file_with_a_dynamic_batch(tmp_path):
    model, inputs = get_model("resnet_basic").build()
    path = graphopt.optimize(model, example_inputs=inputs).export(tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no external .data file
    import onnx

    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    batch = torch.randn(3, *inputs[0].shape[1:])
    (got,) = OnnxRunner(path).run(batch)
    torch.testing.assert_close(torch.from_numpy(got), outputs(model, batch), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", ["generic-fp32", "arm-fp32"])
@pytest.mark.parametrize("name", ["resnet_basic", "mlp", "control_flow", "vit"])
def test_caller_model_is_never_mutated(name, target):
    model, inputs = get_model(name).build()
    model.train()  # the caller's training flag must survive too
    before = state_snapshot(model)
    res = graphopt.optimize(model, target=target, example_inputs=inputs)
    assert_unchanged(model, before, training=True)
    assert res.model is not model
    model.eval()
    torch.testing.assert_close(outputs(res.model, *inputs), outputs(model, *inputs), rtol=1e-5, atol=1e-5)


def test_arm_fp32_runs_the_same_exact_pipeline():
    model, inputs = get_model("mobilenet_v2_tiny").build()
    res = graphopt.optimize(model, target="arm-fp32", example_inputs=inputs)
    assert res.report.target == "arm-fp32"
    assert res.report.stage("fold_batchnorm").stats["folded"] == _batchnorms(model)
    assert res.report.stage("remove_identity").stats == {"dropout": 1}
    torch.testing.assert_close(outputs(res.model, *inputs), outputs(model, *inputs), rtol=1e-5, atol=1e-5)


def test_shared_relu_module_is_handled():
    model, inputs = get_model("resnet_basic").build()
    gm = graphopt.optimize(model, example_inputs=inputs).model
    sites = [
        n.target
        for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.ReLU)
    ]
    assert len(sites) > len(set(sites))  # one ReLU module is still called at several sites


def test_shape_dependent_control_flow_is_captured_whole_by_torch_export():
    """fx would make the ``pad`` submodule an opaque leaf; torch.export resolves its shape test at capture."""
    model, inputs = get_model("control_flow").build()
    res = graphopt.optimize(model, example_inputs=inputs)
    assert res.report.capture == "torch.export" and not res.report.leaves
    assert res.report.note(FX_LEFT_LEAVES).facts["leaves"] == ("pad",)
    why = capture(copy.deepcopy(model).eval(), inputs).why  # why torch.export ran: fx's leaves
    assert (why.key, why.facts["leaves"]) == (FX_LEFT_LEAVES, ("pad",))
    # the pad's 1x1 conv is a layer of the graph now, counted in MACs: 16*16 per pixel of a 21x21 map
    assert res.report.stages[0].macs > 16 * 16 * 21 * 21


class FixedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(x.view(1, 16))  # hard-codes batch 1: the export falls back to static shapes


def test_static_batch_artifact_is_evaluated_in_slices(tmp_path):
    model = FixedBatch().eval()
    x = torch.randn(8, 16)
    labels = outputs(model, x[:1]).argmax(-1).repeat(8)
    res = graphopt.optimize(model, example_inputs=(x[:1],), eval_data=[(x[:1], labels[:1])])
    res.eval_data = [(x, labels)]  # 8 samples in one batch against a batch-1 file
    path = res.export(tmp_path / "fixed.onnx")
    assert OnnxRunner(path).fixed_batch == 1
    assert res.report.artifact("onnx").accuracy is not None
    assert res.report.stage("remove_identity").stats == {"skipped:batch_specific": 1}
