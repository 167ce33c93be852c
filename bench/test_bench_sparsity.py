"""Unstructured sparsity on digits: 80 % of the weights zeroed, accuracy after recovery, compressed size.

Per training seed: the digits CNN (30 epochs); ``sparsify`` at 0.8, global magnitude, three steps of the
cubic schedule with 20 epochs of distillation after each (+-1 px shifts), then the usual recovery stage (20
epochs) for fp32, or QAT for ``x86-int8``. Test accuracy of each ONNX artifact in ORT against the dense
model's, and each file zipped (zlib level 6) against the dense fp32 file zipped.

Run: ``python -m pytest bench/test_bench_sparsity.py --benchmark-enable -s``
"""

from __future__ import annotations

import pytest

import graphopt
from graphopt.backends import OnnxRunner, export_onnx
from graphopt.data.digits import DigitsTraining, batches, load_digits_split, random_shift, train_digits_cnn
from graphopt.pruning.sparsity import zipped_bytes
from graphopt.reporting.evaluation import accuracy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_digits_80_percent_sparse(benchmark, seed, tmp_path):
    split = load_digits_split()
    model = train_digits_cnn(split, DigitsTraining(seed=seed), quiet=True)
    inputs, test = (split.test_x[:1],), split.test_batches()
    dense = export_onnx(model, inputs, tmp_path / "dense.onnx")
    results = {"dense fp32": (accuracy(OnnxRunner(dense).run_batched, test), zipped_bytes(dense))}
    recovery = graphopt.RecoveryConfig(epochs=20, augment=random_shift, seed=seed, quiet=True)
    config = graphopt.SparsifyConfig(sparsity=0.8, steps=3, recovery=recovery)
    calibration = [split.train_x[i : i + 32] for i in range(0, 320, 32)]
    for target in ("generic-fp32", "x86-int8"):
        res = graphopt.optimize(
            model, target, example_inputs=inputs, train_data=batches(split.train_x, split.train_y, 64),
            calibration_data=calibration if target == "x86-int8" else None, sparsify=config,
            recovery=recovery,
        )  # fmt: skip
        path = res.export(tmp_path / f"{target}.onnx", latency_guard=False)
        results[f"80 % sparse {target}"] = (accuracy(OnnxRunner(path).run_batched, test), zipped_bytes(path))
    base_acc, base_zip = results["dense fp32"]
    for name, (acc, size) in results.items():
        benchmark.extra_info[name] = {"accuracy": round(100 * acc, 2), "zipped_bytes": size,
                                      "smaller_zipped": round(base_zip / size, 2)}  # fmt: skip
        print(f"\nseed {seed} {name}: {100 * acc:.2f} % ({100 * (acc - base_acc):+.2f} pp), zipped {size} B "
              f"({base_zip / size:.2f}x smaller)")  # fmt: skip
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert all(0 <= acc <= 1 for acc, _ in results.values())
