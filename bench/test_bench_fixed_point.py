"""Power-of-two (fixed-point) scales against free scales: what the constraint costs.

- Digits, three training seeds: test accuracy of the ``x86-int8`` and ``fixed-point-int8`` ONNX artifacts in
  ORT (same scheme otherwise: u8 activations, s8 per-channel 7-bit weights).
- ResNet-18 at 224x224 (random weights, 32 synthetic calibration inputs): SQNR of every weight tensor and
  every activation quantizer's round trip on the calibration data, per layer, for both; and the output
  cosine of each artifact against the fp32 model.

Run: ``python -m pytest bench/test_bench_fixed_point.py --benchmark-enable -s``
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graphopt
from graphopt.backends import OnnxRunner
from graphopt.data.digits import DigitsTraining, load_digits_split, train_digits_cnn
from graphopt.quant import ActivationQuantizer, QuantizedLayer
from graphopt.reporting.evaluation import accuracy
from graphopt.reporting.numerics import agreement
from graphopt.zoo import get_model

TARGETS = ("x86-int8", "fixed-point-int8")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_digits_accuracy_free_vs_power_of_two(benchmark, seed, tmp_path):
    split = load_digits_split()
    model = train_digits_cnn(split, DigitsTraining(seed=seed), quiet=True)
    calibration = [split.train_x[i : i + 32] for i in range(0, 320, 32)]
    scores = {}
    for target in TARGETS:
        res = graphopt.optimize(
            model, target, example_inputs=(split.test_x[:1],), calibration_data=calibration
        )
        path = res.export(tmp_path / f"{target}.onnx", latency_guard=False)
        scores[target] = 100 * accuracy(OnnxRunner(path).run_batched, split.test_batches())
    benchmark.extra_info.update(scores)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\ndigits seed {seed}: " + ", ".join(f"{k} {v:.2f} %" for k, v in scores.items()))
    assert all(0 <= v <= 100 for v in scores.values())


def test_resnet18_sqnr_per_layer(benchmark, tmp_path):
    model, inputs = get_model("resnet18").build()
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randn(inputs[0].shape, generator=generator) for _ in range(32)]
    probes = [torch.randn(inputs[0].shape, generator=generator) for _ in range(4)]
    summary = {}
    for target in TARGETS:
        res = graphopt.optimize(model, target, example_inputs=inputs, calibration_data=calibration)
        weights = [m.weight_sqnr_db for m in res.model.modules() if isinstance(m, QuantizedLayer)]
        # An infinite SQNR is a quantizer whose input is already on its grid (it follows another quantizer).
        acts = [m.sqnr_db for m in res.model.modules()
                if isinstance(m, ActivationQuantizer) and m.sqnr_db and np.isfinite(m.sqnr_db)]  # fmt: skip
        runner = OnnxRunner(res.export(tmp_path / f"{target}.onnx", latency_guard=False))
        with torch.no_grad():
            cosine = min(agreement(model(x), runner.run(x)).cosine for x in probes)
        summary[target] = {
            "weight_sqnr_db_mean": float(np.mean(weights)), "weight_sqnr_db_min": float(np.min(weights)),
            "activation_sqnr_db_mean": float(np.mean(acts)), "activation_sqnr_db_min": float(np.min(acts)),
            "output_cosine_min": cosine, "weight_sqnr_db": [round(w, 2) for w in weights],
        }  # fmt: skip
    benchmark.extra_info.update(summary)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    for target, s in summary.items():
        weights = f"weights {s['weight_sqnr_db_mean']:.2f} dB mean ({s['weight_sqnr_db_min']:.2f} min)"
        acts = f"activations {s['activation_sqnr_db_mean']:.2f} dB ({s['activation_sqnr_db_min']:.2f} min)"
        print(f"\n{target}: {weights}, {acts}, output cosine >= {s['output_cosine_min']:.5f}")
    free, fixed = summary["x86-int8"], summary["fixed-point-int8"]
    assert fixed["weight_sqnr_db_mean"] <= free["weight_sqnr_db_mean"] + 1e-6  # a constraint cannot help
