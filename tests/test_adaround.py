"""adaround: on weights sitting near half-steps of a coarse grid, learned rounding reconstructs the layers'
outputs better than round-to-nearest, the integers stay on the grid and within the bound, the exported
ONNX still computes what the eager model does, and bad requests are clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.fx as fx
from torch import nn

import graphopt
from graphopt import ConfigError, PassError
from graphopt.ir.graph import deep_copy
from graphopt.passes.adaround import NOTHING_QUANTIZED, AdaRound, AdaRoundOptions
from graphopt.passes.calibrate import Calibrate
from graphopt.passes.insert_fake_quant import InsertFakeQuant, InsertFakeQuantOptions
from graphopt.pipeline.pass_base import PassContext
from graphopt.pipeline.pass_manager import PassManager
from graphopt.quant import QuantizedLayer, QuantScheme
from graphopt.quant.adaround import initial_v, rectified_sigmoid
from graphopt.quant.float_twin import float_twin
from graphopt.quant.modules import ActivationQuantizer
from tests.conftest import assert_unchanged, state_snapshot

#: 4-bit weights, one scale per tensor: a grid coarse enough that each rounding decision matters.
SCHEME = QuantScheme(per_channel=False, weight_bits=4)
FAST = AdaRoundOptions(iterations=100, lr=1e-2, samples=128)
FEWER = dataclasses.replace(FAST, iterations=30)  # where only the export is checked


def half_step_model() -> nn.Module:
    """Two linear layers whose weights sit just above half-steps of the 4-bit grid (step 0.1, max 0.7):
    nearest rounds every one of them up, so their errors add up along each row on positive inputs."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            steps = torch.randint(-3, 3, layer.weight.shape, generator=generator).float()
            jitter = 0.04 * torch.rand(layer.weight.shape, generator=generator)
            layer.weight.copy_(0.1 * (steps + 0.5 + jitter))
            layer.weight.view(-1)[0] = 0.7  # sets the per-tensor scale: 0.7 / 7 = 0.1
            layer.bias.copy_(0.05 * torch.randn(layer.bias.shape, generator=generator))
    return model.eval()


def _calibration() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(64, 16, generator=generator) for _ in range(2)]


def _context() -> PassContext:
    calibration = _calibration()
    return PassContext((calibration[0][:1],), calibration_data=calibration)


@pytest.fixture(scope="module")
def calibrated() -> fx.GraphModule:
    gm = fx.symbolic_trace(half_step_model())
    PassManager([InsertFakeQuant(InsertFakeQuantOptions(scheme=SCHEME)), Calibrate()]).run(gm, _context())
    return gm


@pytest.fixture(scope="module")
def rounded(calibrated):
    """The calibrated graph after adaround, with its pass record and context."""
    gm, context = deep_copy(calibrated), _context()
    (record,) = PassManager([AdaRound(FAST)]).run(gm, context)
    return gm, record, context


def _int8_layers(gm: fx.GraphModule) -> dict[str, QuantizedLayer]:
    return {name: m for name, m in gm.named_modules() if isinstance(m, QuantizedLayer)}


def _output_error(gm: fx.GraphModule, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((gm(x) - float_twin(gm, unrounded=True)(x)).pow(2).mean())


def test_rectified_sigmoid_starts_at_the_fractional_part():
    rest = torch.tensor([0.0, 0.25, 0.5, 0.9])
    assert (rectified_sigmoid(initial_v(rest)) - rest).abs().max() <= 1e-5


def test_learned_rounding_reconstructs_better_than_nearest(calibrated, rounded):
    gm, record, context = rounded
    assert record.modified and record.stats["adaround_layers"] == 2 and record.stats["flipped_weights"] > 0
    rows = {row["layer"]: row for row in context.tables["adaround"]}
    assert set(rows) == {"0", "2"}
    for row in rows.values():
        assert row["mse_adaround"] < 0.7 * row["mse_nearest"], row
    assert rows["0"]["loss_on"] == "relu output" and rows["2"]["loss_on"] == "layer output"
    # Independently of the pass's own numbers: the whole network is closer to fp32 on unseen inputs.
    x = torch.rand(256, 16, generator=torch.Generator().manual_seed(2))
    assert _output_error(gm, x) < 0.7 * _output_error(calibrated, x)


def test_integers_stay_on_the_grid_next_to_the_weight(calibrated, rounded):
    gm = rounded[0]
    nearest = _int8_layers(calibrated)
    for name, layer in _int8_layers(gm).items():
        q = layer.weight_int8.to(torch.int32)
        assert q.abs().max() <= SCHEME.weight_bound
        assert (q - nearest[name].weight_int8).abs().max() <= 1  # only the direction changed
        exact = layer.fp32_layer.weight / layer.expanded_weight_scale()
        assert bool(((q >= exact.floor() - 1e-4) & (q <= exact.ceil() + 1e-4)).all())
        # bias and fp32 layer untouched (accuracy_budget can still put the layer back in fp32)
        assert torch.equal(layer.bias_int32, nearest[name].bias_int32)
        assert torch.equal(layer.fp32_layer.weight, nearest[name].fp32_layer.weight)


def test_a_second_run_changes_nothing(rounded):
    gm = deep_copy(rounded[0])
    (record,) = PassManager([AdaRound(FAST)]).run(gm, _context())
    assert not record.modified and record.stats == {"skipped:already_rounded": 2}


def test_only_the_named_layers_are_rounded(calibrated):
    gm = deep_copy(calibrated)
    (record,) = PassManager([AdaRound(dataclasses.replace(FAST, layers=("2",)))]).run(gm, _context())
    assert record.stats["adaround_layers"] == 1
    before, after = _int8_layers(calibrated), _int8_layers(gm)
    assert torch.equal(after["0"].weight_int8, before["0"].weight_int8)
    assert not torch.equal(after["2"].weight_int8, before["2"].weight_int8)
    unknown = AdaRound(dataclasses.replace(FAST, layers=("conv9",)))
    with pytest.raises(PassError, match=r"names \['conv9'\].*int8 layers are: 0, 2"):
        PassManager([unknown]).run(deep_copy(calibrated), _context())


def test_without_int8_layers_it_says_why():
    gm = fx.symbolic_trace(half_step_model())
    context = _context()
    (record,) = PassManager([AdaRound(FAST)]).run(gm, context)
    assert not record.modified and record.stats == {"skipped:nothing_quantized": 1}
    assert [note.key for note in context.notes] == [NOTHING_QUANTIZED]


@pytest.mark.parametrize(
    "fields",
    [
        {"iterations": 0}, {"samples": -1}, {"batch_size": 2.5}, {"iterations": True},
        {"regularization": -0.1}, {"regularization": float("inf")}, {"lr": 0.0},
        {"layers": "features.0"}, {"layers": ("a", 1)},
    ],
)  # fmt: skip
def test_bad_options_are_config_errors(fields):
    with pytest.raises(ConfigError, match="AdaRoundOptions"):
        AdaRoundOptions(**fields)


def test_onnx_export_matches_the_eager_model_and_the_callers_model_is_untouched(tmp_path):
    import onnxruntime as ort

    model = half_step_model()
    before = state_snapshot(model)
    calibration = _calibration()
    res = graphopt.optimize(
        model, "x86-int8", example_inputs=(calibration[0][:1],), calibration_data=calibration,
        passes=[InsertFakeQuant(InsertFakeQuantOptions(scheme=SCHEME)), Calibrate(), AdaRound(FEWER)],
    )  # fmt: skip
    assert_unchanged(model, before, training=False)
    assert res.report.stage("adaround").stats["flipped_weights"] > 0
    path = res.export(tmp_path / "m.onnx", latency_guard=False)  # checked against the eager model on export
    x = torch.rand(8, 16, generator=torch.Generator().manual_seed(3))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        eager = res.model(x)
    # Integer kernels and eager rounding may differ by one step of the output quantizer, no more.
    step = max(m.scale for m in res.model.modules() if isinstance(m, ActivationQuantizer))
    assert (torch.from_numpy(onnx_out) - eager).abs().max() <= 1.01 * step
