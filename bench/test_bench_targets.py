"""Every target pipeline against every peer, per model, through ``graphopt bench``'s engine.

For each model: fp32, int8, prune 50 % + int8 (and early exit where the model has labelled data), next to
eager fp32 (contiguous and channels-last), ORT fp32, ORT ``quantize_static`` (defaults and best settings),
TorchScript fp32 and Torch-Pruning when installed; one interleaved timing run. ``extra_info`` holds, per row,
the latency (median, p10, p90, min), the three speed-ups, accuracy or agreement, and for stage rows the time
the pass took (per-pass timing of ``optimize``). The benchmark's own time is the whole run.

Run: ``python -m pytest bench/test_bench_targets.py --benchmark-enable -s``
(``graphopt bench MODEL -t ...`` runs the same thing from the command line and writes JSON/Markdown/PNG.)
"""

from __future__ import annotations

import pytest

from graphopt.benchmark import BenchConfig, parse_pipeline, run_bench, to_text

PIPELINES = ("generic-fp32", "x86-int8", "x86-int8+prune=0.5")
MODELS = {
    "resnet18": PIPELINES,
    "mobilenet_v2": PIPELINES,
    "digits": (*PIPELINES, "generic-fp32+early-exit"),
    "digits_resnet": (*PIPELINES, "generic-fp32+early-exit"),
}


@pytest.mark.parametrize("model", MODELS)
def test_targets_against_peers(benchmark, model):
    config = BenchConfig(model=model, pipelines=tuple(parse_pipeline(p) for p in MODELS[model]), quiet=True)
    result = benchmark.pedantic(run_bench, args=(config,), rounds=1, iterations=1)
    for row in result.rows:
        info: dict[str, object] = {
            "kind": row.kind,
            "numeric": row.numeric,
            "macs": row.macs,
            "bytes": row.bytes,
        }
        if row.latency is not None:
            info.update(median_ms=row.latency.median_ms, p10_ms=row.latency.p10_ms, p90_ms=row.latency.p90_ms,
                        min_ms=row.latency.min_ms, vs_ort_fp32=row.speedup_vs_ort_fp32,
                        vs_ort_int8=row.speedup_vs_ort_int8, vs_eager=row.speedup_vs_eager)  # fmt: skip
        if row.kind == "stage":
            info["pass_seconds"] = row.seconds
        info.update(accuracy=row.accuracy, cosine=row.cosine, top1=row.top1)
        benchmark.extra_info[row.key] = info
    benchmark.extra_info["machine"] = result.machine
    print("\n" + to_text(result))
    assert result.complete and not result.errors
