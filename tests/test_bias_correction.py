from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import graphopt
from graphopt.errors import ConfigError, InvalidInputError
from graphopt.frontend.capture import capture
from graphopt.passes import Calibrate, FoldBatchNorm, InsertFakeQuant
from graphopt.passes.bias_correction import NO_STATISTICS, BiasCorrection
from graphopt.passes.equalize import Equalize
from graphopt.pipeline.pass_base import PassContext
from graphopt.pipeline.pass_manager import PassManager
from graphopt.quant import QuantScheme
from graphopt.quant.bias_correction import BATCHNORM_OUTPUT_STATS, ChannelNormal, record_batchnorm_stats
from graphopt.quant.options import InsertFakeQuantOptions
from graphopt.quant.scheme import sqnr_db
from tests.helpers import outputs
from tests.ptq_cases import PER_TENSOR, calibration_batches, int8_passes, rescaled_case, run_passes

#: 127 levels, per channel: the constructed weights below sit on a known grid.
FULL_RANGE = QuantScheme(reduce_range=False)
STEP = 0.01


def biased_weights(out_features: int, in_features: int, kernel: tuple[int, ...] = ()) -> torch.Tensor:
    """Weights ``STEP * (k + 0.45)`` with one ``127 * STEP`` per row, so per-channel int8 has the step
    ``STEP`` and rounds every other weight down by ``0.45 STEP``: on non-negative inputs the output error
    has a mean far from 0 (what bias correction removes)."""
    gen = torch.Generator().manual_seed(7)
    k = torch.randint(-20, 20, (out_features, in_features, *kernel), generator=gen).double()
    weight = STEP * (k + 0.45)
    weight.reshape(out_features, -1)[:, 0] = 127 * STEP
    return weight.float()


class BiasedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 8)
        with torch.no_grad():
            self.fc2.weight.copy_(biased_weights(8, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def mean_output_error(gm: nn.Module, model: nn.Module, x: torch.Tensor) -> float:
    """The per-channel mean of the output error, averaged in magnitude over channels."""
    return float((outputs(gm, x) - outputs(model, x)).mean(dim=0).abs().mean())


@pytest.fixture(scope="module")
def mlp_case():
    model = BiasedMLP().eval()
    calibration = calibration_batches((64, 8), batches=5)
    test_x = torch.randn(256, 8, generator=torch.Generator().manual_seed(9))
    return model, calibration, test_x


@pytest.mark.parametrize("reference", ["layer", "network"])
def test_bias_correction_removes_a_biased_rounding_error(mlp_case, reference):
    model, calibration, test_x = mlp_case
    gm, _, context = run_passes(model, int8_passes(FULL_RANGE), calibration)
    before = mean_output_error(gm, model, test_x)
    old_bias = gm.fc2.bias_int32.detach().clone()
    (record,) = PassManager([BiasCorrection(reference=reference)]).run(gm, context)
    after = mean_output_error(gm, model, test_x)
    assert record.modified and record.stats["corrected"] == 2
    assert after < before / 5  # measured: 0.118 -> 0.006 (layer), 0.005 (network)
    assert record.stats["output_sqnr_db_after"] > record.stats["output_sqnr_db_before"] + 3
    assert not torch.equal(gm.fc2.bias_int32, old_bias) and gm.fc2.bias_int32.dtype == torch.int32
    (row,) = [r for r in context.tables["bias_correction"] if r["layer"] == "fc2"]
    assert row["max_shift_lsb"] >= 1 and row["sqnr_db_after"] > row["sqnr_db_before"]


def test_network_reference_absorbs_upstream_error_that_the_layer_reference_cannot():
    base, model = rescaled_case()
    calibration = calibration_batches((16, 3, 8, 8), batches=5)
    test_x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    reference = outputs(base, test_x)
    results = {}
    for mode in ("layer", "network"):
        gm, _, _ = run_passes(model, [*int8_passes(PER_TENSOR), BiasCorrection(reference=mode)], calibration)
        results[mode] = sqnr_db(reference, outputs(gm, test_x))
    assert results["network"] > results["layer"] + 10  # measured 33.5 vs 15.4 dB (16.7 uncorrected)


class ConvBnReluConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1)
        with torch.no_grad():
            self.c2.weight.copy_(biased_weights(8, 8, (1, 1)))
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.relu(self.bn(self.c1(x))))


@pytest.fixture(scope="module")
def bn_case():
    model = ConvBnReluConv()
    calibration = calibration_batches((16, 3, 8, 8), batches=3)
    with torch.no_grad():  # running statistics that describe the data, as training leaves them
        pre = model.c1(torch.cat(calibration))
        model.bn.running_mean.copy_(pre.mean((0, 2, 3)))
        model.bn.running_var.copy_(pre.var((0, 2, 3)))
    return model.eval(), calibration


def analytic_run(model: nn.Module, calibration: list[torch.Tensor], record: bool):
    """fold_batchnorm records the statistics of what it folds; ``record=False`` forgets them (a graph
    whose BatchNorms were folded elsewhere)."""
    gm = capture(copy.deepcopy(model)).gm
    int8 = [FoldBatchNorm(), InsertFakeQuant(InsertFakeQuantOptions(scheme=FULL_RANGE)), Calibrate()]
    context = PassContext((calibration[0][:2],), calibration_data=calibration)
    PassManager(int8).run(gm, context)
    assert (BATCHNORM_OUTPUT_STATS in gm.meta) is True
    if not record:
        del gm.meta[BATCHNORM_OUTPUT_STATS]
    no_data = PassContext((calibration[0][:2],))
    (result,) = PassManager([BiasCorrection()]).run(gm, no_data)  # auto: no data -> analytic
    return gm, result, no_data


def test_analytic_correction_from_batchnorm_statistics_recorded_before_folding(bn_case):
    model, calibration = bn_case
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(11))
    plain, _, _ = run_passes(model, [FoldBatchNorm(), *int8_passes(FULL_RANGE)], calibration)
    gm, record, _ = analytic_run(model, calibration, record=True)
    assert record.stats == {"corrected": 1, "skipped:no_input_statistics": 1}  # c1 reads the input
    assert mean_output_error(gm, model, x) < mean_output_error(plain, model, x) / 3


def test_analytic_mode_without_statistics_says_so_instead_of_guessing(bn_case):
    model, calibration = bn_case
    _, record, context = analytic_run(model, calibration, record=False)
    assert not record.modified and record.stats == {"skipped:no_batchnorm_stats": 2}
    assert any(getattr(note, "key", None) == NO_STATISTICS for note in context.notes)


def test_equalize_rescales_the_recorded_statistics():
    conv = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()
    with torch.no_grad():
        conv[1].weight.copy_(torch.tensor([100.0, 1.0, 0.01, 1.0]))
        conv[1].bias.fill_(0.5)
    gm = capture(conv).gm
    record_batchnorm_stats(gm)
    before = gm.meta[BATCHNORM_OUTPUT_STATS]["0"]
    x = torch.randn(2, 3, 4, 4)
    PassManager([FoldBatchNorm(), Equalize()]).run(gm, PassContext((x,)))
    after: ChannelNormal = gm.meta[BATCHNORM_OUTPUT_STATS]["0"]
    scales = before.mean / after.mean
    assert torch.allclose(before.std / after.std, scales)
    assert not torch.allclose(scales, torch.ones(4, dtype=torch.float64))


def test_empirical_mode_without_data_is_an_input_error(mlp_case):
    model, calibration, _ = mlp_case
    gm, _, _ = run_passes(model, int8_passes(FULL_RANGE), calibration)
    with pytest.raises(graphopt.errors.PassError) as info:
        PassManager([BiasCorrection(mode="empirical")]).run(gm, PassContext((calibration[0][:2],)))
    assert isinstance(info.value.__cause__, InvalidInputError)


def test_a_graph_without_int8_layers_is_skipped(mlp_case):
    model, calibration, _ = mlp_case
    _, records, _ = run_passes(model, [BiasCorrection()], calibration)
    assert not records[0].modified and records[0].stats == {"skipped:no_frozen_int8_layers": 1}


@pytest.mark.parametrize("fields", [{"mode": "guess"}, {"reference": "teacher"}, {"max_batches": 0}])
def test_bad_options_are_config_errors(fields):
    with pytest.raises(ConfigError):
        BiasCorrection(**fields)


def test_through_optimize_the_callers_model_is_not_mutated(mlp_case):
    model, calibration, test_x = mlp_case
    before = {k: v.clone() for k, v in model.state_dict().items()}
    passes = [
        Equalize(),
        InsertFakeQuant(InsertFakeQuantOptions(scheme=FULL_RANGE)),
        Calibrate(),
        BiasCorrection(),
    ]
    res = graphopt.optimize(
        model, "x86-int8", example_inputs=(test_x[:1],), calibration_data=calibration, passes=passes
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res.report.stage("bias_correction").stats["corrected"] == 2
