"""4-bit weights in ExecuTorch ``.pte`` files next to 8-bit ones, on Fashion-MNIST (issue 41).

    python bench/executorch_w4.py --epochs 2

Two models trained here for ``--epochs`` on the 55,000 training images: the bench's ``FashionCNN`` (three
convs and a Linear(64->10) classifier: 4-bit reaches the file only in the classifier, XNNPACK keeps the
convs int8) and an MLP on the flattened image (784-512-256-10: every weight can be 4-bit). Each is optimized
for ``x86-int8`` with 8-bit and with 4-bit weights (calibration: 320 training images) and written as
``.pte``. Per file: bytes, the weight storage XNNPACK recorded in it, test accuracy on the 10,000 test
images run through the ``.pte`` one image at a time, the largest difference from the eager optimized model,
and single-thread latency at batch 1 on one pinned core, the 4- and 8-bit files timed in interleaved rounds
(the ratio is the median of per-round ratios). A markdown table on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import graphopt
from graphopt import WeightQuant
from graphopt.backends import ExecuTorchRunner
from graphopt.backends.pte_weights import xnnpack_weight_storage
from graphopt.backends.timing import edge_timing, interleaved_rounds, paired_ratio, stats_of_rounds
from graphopt.data.digits import DigitsTraining, train_digits_cnn
from graphopt.data.fashion import FashionCNN, as_digits_split, load_fashion_mnist
from graphopt.reporting.evaluation import accuracy


class FashionMLP(nn.Module):
    """784-512-256-10 on the flattened image: 535,818 parameters, all in Linear layers."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)
        )

    def forward(self, x):
        return self.layers(x)


MODELS = {"fashion_cnn": FashionCNN, "fashion_mlp": FashionMLP}


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def one_model(name: str, epochs: int, folder: Path) -> list[dict[str, object]]:
    data = as_digits_split(load_fashion_mnist())
    trained = train_digits_cnn(data, DigitsTraining(epochs=epochs, batch_size=128), quiet=True,
                               model=MODELS[name], task="Fashion-MNIST").eval()  # fmt: skip
    example, calibration = (data.test_x[:1],), [data.train_x[i : i + 64] for i in range(0, 320, 64)]
    test = data.test_batches(1000)
    rows, runners = [], {}
    for bits in (8, 4):
        res = graphopt.optimize(trained, "x86-int8", example, calibration_data=calibration,
                                weights=WeightQuant(bits=bits))  # fmt: skip
        path = res.export(folder / f"{name}-w{bits}.pte", latency_guard=False)
        runner = runners[bits] = ExecuTorchRunner(path, threads=1)
        x = data.test_x[:64]
        worst = float((torch.as_tensor(runner.run_batched(x)[0]) - res.model(x)).abs().max())
        stored = xnnpack_weight_storage(path)
        rows.append({"model": name, "weights": f"W{bits}A8", "bytes": path.stat().st_size,
                     "qc4w": stored["xnn_datatype_qcint4"], "qc8w": stored["xnn_datatype_qcint8"],
                     "accuracy": 100 * accuracy(runner.run_batched, test), "eager_diff": worst})  # fmt: skip
        log(f"{name} W{bits}: {rows[-1]}")
    with edge_timing(threads=1):
        calls = {bits: runner.bind(example) for bits, runner in runners.items()}
        rounds = interleaved_rounds(calls, rounds=15, calls_per_round=50, warmup=20)
    for row, bits in zip(rows, (8, 4), strict=True):
        row["median_ms"] = stats_of_rounds(rounds[bits]).median_ms
    rows[1]["speedup_vs_w8"] = paired_ratio(rounds[8], rounds[4])
    rows[1]["bytes_vs_w8"] = rows[1]["bytes"] / rows[0]["bytes"]
    return rows


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| model | weights | .pte bytes | vs W8 | qc4w / qc8w tensors | test acc % | max diff to eager | "
        "median ms (1 thread) | W8 time / W4 time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['weights']} | {r['bytes']:,} | {r.get('bytes_vs_w8', 1.0):.3f}x | "
            f"{r['qc4w']} / {r['qc8w']} | {r['accuracy']:.2f} | {r['eager_diff']:.2g} | "
            f"{r['median_ms']:.4f} | {r.get('speedup_vs_w8', 1.0):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        rows = [row for name in args.models for row in one_model(name, args.epochs, Path(folder))]
    print(table(rows))


if __name__ == "__main__":
    main()
