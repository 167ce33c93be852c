"""Early exit on a network deep enough for exits to matter: a three-stage ResNet on digits upsampled to 32x32.

Per seed: train the network (15 epochs) on 1077 training images, insert two exits (``spatial`` heads at
~20 % and ~50 % of the MACs, trained on the frozen backbone with 3 shifted copies of the training images),
calibrate thresholds for a 0.3 pp budget on the 360 validation images the model never saw, export to ONNX
(``If`` inside), and time every test image at batch 1 through ORT, interleaving the exit model with the
original model's ONNX file. Reports test accuracy of both and the average latency ratio; the goal is a
ratio <= 0.5 at an accuracy drop <= 0.3 pp on every seed.

Run: ``python -m pytest bench/test_bench_early_exit.py --benchmark-enable -s``
"""

from __future__ import annotations

import pytest

import graphopt
from graphopt.backends import OnnxRunner, export_onnx
from graphopt.data.digits import (
    DigitsTraining,
    batches,
    hold_out_validation,
    load_digits_split,
    random_shift,
    train_digits_cnn,
    upsampled,
)
from graphopt.early_exit.measure import mean_latencies, per_sample_accuracy
from graphopt.zoo.resnet import resnet_digits

CONFIG = graphopt.EarlyExitConfig(fractions=(0.2, 0.5), head="spatial", augment=random_shift, quiet=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_early_exit_latency_and_accuracy(benchmark, seed, tmp_path):
    split, validation = hold_out_validation(upsampled(load_digits_split()))
    model = train_digits_cnn(split, DigitsTraining(epochs=15, seed=seed), quiet=True, model=resnet_digits)
    inputs = (split.test_x[:1],)
    result = graphopt.optimize(
        model,
        "generic-fp32",
        example_inputs=inputs,
        train_data=batches(split.train_x, split.train_y, 64),
        early_exit=graphopt.EarlyExitConfig(**{**CONFIG.__dict__, "seed": seed}),
        validation_data=validation,
    )
    runners = {
        "ort_fp32_without_exits": OnnxRunner(export_onnx(model, inputs, tmp_path / "base.onnx")),
        "graphopt_early_exit": OnnxRunner(result.export(tmp_path / "exits.onnx")),
    }
    test = split.test_batches()
    latency = mean_latencies({key: r.run for key, r in runners.items()}, test)
    accuracy = {key: 100 * per_sample_accuracy(r.run, test) for key, r in runners.items()}
    stats = result.report.stage("insert_early_exit").stats
    ratio = latency["graphopt_early_exit"] / latency["ort_fp32_without_exits"]
    benchmark.extra_info.update(
        latency_ms=latency, accuracy=accuracy, latency_ratio=round(ratio, 3),
        expected_macs_share=stats["expected_macs_share"], exits=result.report.tables.get("early_exit", []),
        expected_latency_share=stats.get("expected_latency_share"),
    )  # fmt: skip
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\nseed {seed}: latency {latency}, ratio {ratio:.2f}, accuracy {accuracy}, "
          f"expected MACs {stats['expected_macs_share']:.0%}")  # fmt: skip
    for row in result.report.tables.get("early_exit", []):  # none when no set of exits paid here
        print("  ", row)
    assert all(v > 0 for v in latency.values())
    drop = accuracy["ort_fp32_without_exits"] - accuracy["graphopt_early_exit"]
    assert ratio <= 0.5 and drop <= 0.3 + 1e-9, f"ratio {ratio:.3f}, accuracy drop {drop:.2f} pp"
