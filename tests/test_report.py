from __future__ import annotations

import json

import torch

import graphopt
from graphopt.pipeline.driver import DATA_UNUSED
from graphopt.reporting.notes import notes_with
from graphopt.reporting.report import SCHEMA_VERSION
from graphopt.zoo import get_model


def _result():
    model, inputs = get_model("mobilenet_v2_tiny").build()
    return graphopt.optimize(model, example_inputs=inputs)


def test_one_row_per_stage_with_costs_and_stats():
    res = _result()
    stages = res.report.stages
    assert [s.stage for s in stages] == [
        "original",
        "fold_batchnorm",
        "remove_identity",
        "eliminate_dead_code",
    ]
    original, fold = stages[0], stages[1]
    assert original.params > fold.params  # BN parameters gone
    assert original.macs == fold.macs > 0
    assert fold.stats == {"folded": 16}
    assert fold.exact_check_max_abs is not None and fold.exact_check_max_abs < 1e-5
    assert fold.agreement.cosine > 0.999999 and fold.agreement.top1 == 1.0


def test_table_markdown_and_json():
    res = _result()
    table = str(res.report)
    assert "mobilenet" in table.lower() or "MobileNetV2" in table
    columns = ("stage", "params", "MACs", "bytes", "peak RSS MiB", "latency ms", "vs ORT fp32", "cosine")
    for column in (*columns, "stats"):
        assert column in table
    assert "folded=16" in table and "dropout=1" in table
    md = res.report.to_markdown()
    assert md.count("\n| ") >= 5 and "| fold_batchnorm |" in md
    data = json.loads(res.report.to_json())
    assert data["schema"] == SCHEMA_VERSION and data["target"] == "generic-fp32"
    assert [s["stage"] for s in data["stages"]][:2] == ["original", "fold_batchnorm"]
    assert all(s["peak_rss_mib"] > 0 for s in data["stages"])  # every row: the process's peak during it
    assert data["stages"][1]["stats"] == {"folded": 16}


def test_latency_rows_and_speedup(tmp_path):
    res = _result()
    res.export(tmp_path / "m.onnx", measure_latency=True, warmup=2, repeat=5)
    baseline = res.report.stage("original in ORT fp32")
    artifact = res.report.artifact("onnx")
    assert baseline.latency.median_ms > 0 and artifact.latency.runs == 5
    assert res.report.speedup(baseline) == 1.0
    assert res.report.speedup(artifact) == baseline.latency.median_ms / artifact.latency.median_ms
    assert "speed-up is against the original model run in ONNX Runtime fp32" in str(res.report)


def test_accuracy_column_with_eval_data(digits_model, digits):
    res = graphopt.optimize(
        digits_model, example_inputs=(digits.test_x[:1],), eval_data=digits.test_batches()
    )
    accuracies = {s.stage: s.accuracy for s in res.report.stages}
    assert accuracies["original"] > 0.9
    assert all(a == accuracies["original"] for a in accuracies.values())  # exact passes: same accuracy


def test_unused_data_is_reported_not_silently_ignored():
    model, inputs = get_model("mlp").build()
    labels = torch.zeros(len(inputs[0]), dtype=torch.long)
    res = graphopt.optimize(
        model, example_inputs=inputs, calibration_data=[inputs], train_data=[(inputs, labels)]
    )
    unused = [n.facts["name"] for n in notes_with(res.report, DATA_UNUSED)]
    assert unused == ["calibration_data", "train_data"]
    rendered = str(res.report).splitlines()  # each note on a line of its own
    assert all(f"note: {n}" in rendered for n in notes_with(res.report, DATA_UNUSED))
