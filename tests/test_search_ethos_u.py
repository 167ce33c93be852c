"""The goal-driven search on an Ethos-U target: candidates costed by the backend's estimate (marked so),
speed-ups against the unpruned original int8 compiled the same way (no NPU runs fp32), drops against fp32.

The search's logic runs on a stand-in cost-model backend (ONNX files, "estimated" from their size: no LiteRT
conversion, which takes seconds a file); one slow case costs the real baseline with Vela."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import graphopt
from graphopt import Goals, SearchConfig
from graphopt.backends import BACKENDS, OnnxRunner
from graphopt.errors import ExportError
from graphopt.pipeline.driver import OptimizeCall
from graphopt.search import estimated_baseline
from graphopt.search.engine import VERDICT
from graphopt.search.estimated_baseline import EstimatedBaseline, costs_by_estimate

TARGET = "ethos-u55-int8"
NPU = "ethos-u"


class SizeCostedRunner(OnnxRunner):
    """A cost-model runner: runs the ONNX file, "estimates" 1 ms per 10 kB of it (pruning shrinks both)."""

    def estimated_ms(self) -> float:
        return self.path.stat().st_size / 1e4


def _stand_in(runner: type = SizeCostedRunner) -> graphopt.backends.Backend:
    onnx = BACKENDS["onnx"]
    return dataclasses.replace(BACKENDS[NPU], suffix=".onnx", runtime="stand-in estimate", lower=onnx.lower,
                               runner=runner, check=onnx.check, describe=lambda path: "stand-in")  # fmt: skip


def _calibration(digits) -> list[torch.Tensor]:
    return [digits.train_x[i : i + 32] for i in range(0, 64, 32)]


@pytest.fixture(scope="module")
def searched(digits_model, digits):
    """Two int8 candidates (unpruned, half the channels pruned), no training."""
    config = SearchConfig(prune_ratios=(0.0, 0.5), int8=("on",), exits=(False,), quiet=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BACKENDS, NPU, _stand_in())
        return graphopt.optimize(
            digits_model, TARGET, example_inputs=(digits.test_x[:1],), calibration_data=_calibration(digits),
            validation_data=digits.test_batches()[:1], goals=Goals(min_speedup=1.5), search=config,
        )  # fmt: skip


def test_candidates_are_costed_by_the_estimate_and_marked_so(searched):
    rows = {r["candidate"]: r for r in searched.search.table()}
    assert set(rows) == {"prune=0 int8 [ethos-u]", "prune=0.5/l2 int8 [ethos-u]"}
    for row in rows.values():
        assert row["status"] == "measured"
        basis = row["latency_basis"]
        assert basis.startswith("ESTIMATE (") and basis.endswith(
            "vs the unpruned original int8, compiled the same way"
        )
    chosen = searched.search.chosen
    assert chosen is not None and chosen.point.prune == 0.5 and chosen.measured.estimated
    assert chosen.measured.latency_ms == pytest.approx(chosen.measured.bytes / 1e4)  # the estimate, untimed
    verdict = next(n for n in searched.report.notes if getattr(n, "key", None) == VERDICT)
    assert verdict.facts["meets_goals"] and verdict.facts["speedup"] > 1.5


def test_the_baseline_is_the_unpruned_int8_model_compiled_alike(searched):
    # the unpruned int8 candidate, untrained and calibrated alike, IS the baseline: exactly 1x (against ORT
    # fp32 it would be the int8 file's estimate over an fp32 timing: anything)
    unpruned = next(r for r in searched.search.rows if r.point.prune == 0)
    assert unpruned.measured.speedup == 1.0
    assert searched.search.baseline_ms == unpruned.measured.latency_ms


def test_drops_are_against_the_fp32_original(searched, digits_model, digits):
    x, y = digits.test_batches()[0]
    with torch.no_grad():
        fp32 = 100 * (digits_model(x).argmax(1) == y).float().mean().item()
    for row in searched.search.table():
        assert row["drop_pp"] == pytest.approx(fp32 - row["accuracy"], abs=0.01)


def test_a_baseline_the_npu_cannot_run_entirely_is_refused_with_the_reason(digits_model, digits, tmp_path):
    loaded: list[Path] = []

    class PartlyOnCpu(SizeCostedRunner):
        """An operator on the CPU, which Vela prices at 0 cycles: the estimate is ``inf``."""

        def estimated_ms(self) -> float:
            loaded.append(self.path)
            return math.inf

    inputs = (digits.test_x[:1],)
    call = OptimizeCall(digits_model, TARGET, example_inputs=inputs, calibration_data=_calibration(digits))
    baseline = EstimatedBaseline(call, graphopt.TARGETS[TARGET], inputs, tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BACKENDS, NPU, _stand_in(PartlyOnCpu))
        for _ in range(2):  # the failure is kept, not built again
            with pytest.raises(ExportError, match="does not run entirely on the NPU"):
                baseline.ms(NPU)
    assert len(loaded) == 1


def test_only_cost_model_backends_are_costed_by_an_estimate():
    assert costs_by_estimate("ethos-u") and not costs_by_estimate("litert") and not costs_by_estimate("onnx")


def test_the_baseline_call_is_the_target_s_post_training_int8_of_the_unpruned_original(digits_model):
    spec = graphopt.TARGETS[TARGET]
    trained = OptimizeCall(digits_model, "x86-int8", prune=0.5, train_data=[(torch.ones(1), torch.ones(1))],
                           passes=["fold_batchnorm"], accuracy_budget=1.0, eval_data=[])  # fmt: skip
    call = estimated_baseline.baseline_call(trained, spec)
    assert call.target is spec and call.passes is None and call.prune == 0.0  # the target's own pipeline
    assert call.train_data is None and call.recovery is None and call.accuracy_budget is None
    assert call.early_exit is None and call.eval_data is None and call.model is digits_model


@pytest.mark.slow  # one LiteRT conversion and a Vela compile
def test_the_real_baseline_is_vela_s_estimate_of_the_int8_original(digits_model, digits, tmp_path):
    pytest.importorskip("ethosu", reason="Vela is optional: pip install 'graphopt[litert]'")
    pytest.importorskip(
        "litert_torch", reason="the litert backend is optional: pip install 'graphopt[litert]'"
    )
    from graphopt.backends import ethos_u_backend

    inputs = (digits.test_x[:1],)
    call = OptimizeCall(digits_model, TARGET, example_inputs=inputs, calibration_data=_calibration(digits),
                        train_data=[(digits.train_x[:32], digits.train_y[:32])], prune=0.5)  # fmt: skip
    ms = EstimatedBaseline(call, graphopt.TARGETS[TARGET], inputs, tmp_path).ms(NPU)
    compiled = next(reversed(ethos_u_backend.COMPILED.values()))  # the last Vela compile: the baseline's
    assert compiled.estimate.all_on_npu and ms == compiled.estimate.inference_ms
    assert compiled.estimate.config.accelerator == "ethos-u55-128"
