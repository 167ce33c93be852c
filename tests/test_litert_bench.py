"""``graphopt bench`` for ``.tflite`` pipelines: LiteRT CPU rows timed like every other runtime, Ethos-U rows
costed by Vela's estimate, and the peers a LiteRT user would pick instead (LiteRT fp32, LiteRT's own PT2E
int8 flow, and that flow compiled by Vela)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("litert_torch", reason="the litert backend is optional: pip install 'graphopt[litert]'")
pytest.importorskip("ethosu", reason="Vela is optional: pip install 'graphopt[litert]'")

from graphopt.benchmark import parse_pipeline
from graphopt.benchmark.runner import BenchConfig, run_bench

PT2E = "LiteRT PT2E int8"
PT2E_ON_U55 = f"{PT2E} on ethos-u55-128 (Vela)"


@pytest.fixture(scope="module")
def tflite_run():
    """The smallest reference model (mlp, random weights, synthetic calibration), one timing round: each
    LiteRT conversion costs seconds, and a run converts eight times (two peers; per pipeline the latency
    guard's int8 and fp32 files and the artifact), about 25 s in all."""
    pipelines = (parse_pipeline("litert-int8"), parse_pipeline("ethos-u55-int8"))
    config = BenchConfig(model="mlp", pipelines=pipelines, rounds=1, round_ms=5, recovery_epochs=0,
                         calibration_samples=8, measure_peak=False, plot=False, quiet=True)  # fmt: skip
    return run_bench(config)


def test_a_litert_pipeline_has_its_artifact_row_timed_in_litert(tflite_run):
    assert tflite_run.complete and not tflite_run.errors
    artifact = [r for r in tflite_run.rows if r.pipeline == "litert-int8" and r.kind == "artifact"][-1]
    assert artifact.runtime == "litert" and artifact.timed and artifact.speedup_vs_ort_fp32 > 0
    assert artifact.cosine > 0.99 and artifact.bytes > 0
    # The latency guard decides by timing which file ships: on a model this small int8 may not be faster,
    # and then the fp32 file ships; either way the file is a LiteRT one, and an int8 one is fully integer.
    if artifact.numeric == "int8":
        assert "fully int8, float32 I/O" in " ".join(artifact.notes)
    else:
        assert artifact.numeric == "fp32"


def test_litert_peers_are_lite_rt_fp32_and_its_own_pt2e_flow(tflite_run):
    fp32, pt2e = tflite_run.row("peers", "LiteRT fp32"), tflite_run.row("peers", PT2E)
    assert fp32.runtime == pt2e.runtime == "litert" and (fp32.numeric, pt2e.numeric) == ("fp32", "int8")
    assert fp32.timed and pt2e.timed and pt2e.speedup_vs_ort_fp32 > 0
    assert pt2e.cosine > 0.9 and pt2e.bytes < fp32.bytes


def test_ethos_u_rows_carry_vela_s_estimate_marked_as_such(tflite_run):
    artifact = [r for r in tflite_run.rows if r.pipeline == "ethos-u55-int8" and r.kind == "artifact"][-1]
    peer = tflite_run.row("peers", PT2E_ON_U55)
    for row in (artifact, peer):
        assert row.runtime.startswith("Vela estimate") and "ESTIMATE" in row.latency_basis
        assert 0 < row.latency.median_ms < math.inf and row.latency.runs == 1
        assert row.speedup_vs_ort_fp32 is None  # an NPU's estimate is not compared with CPU timings
    assert "every op on the NPU" in " ".join(artifact.notes)
    assert "ESTIMATED" in peer.notes[0] and peer.cosine > 0.9  # the int8 graph Vela took, run in LiteRT
