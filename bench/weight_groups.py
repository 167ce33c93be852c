"""Per-channel vs per-group 4-bit (and 3-, 2-bit) weights on Fashion-MNIST: test accuracy of the ONNX file in
ONNX Runtime and its bytes (docs/ptq.md, "Per-group weight scales").

    python bench/weight_groups.py --mlp-epochs 3 --mobilenet-epochs 1

Two models trained here, short runs: ``fashion_mlp``, a Linear-heavy MLP (the image zero-padded to 28 x 32,
896 inputs, -> 256 -> 256 -> 10: every layer groups by 32), and ``fashion_mobilenet`` (the bench's
MobileNetV2; its 1x1 convs group, by 8 since 8 divides all their input channels 16, 24, 32, 64, 96, ...; the
3x3 and depthwise convs keep per-channel scales). Every row is ``x86-int8`` (u8 activations), plain
calibration on 320 training images, exported with ``latency_guard=False`` (the file measured is the
quantized one), scored on the 10,000 test images. Progress on stderr, a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import graphopt
from graphopt import WeightQuant
from graphopt.backends import OnnxRunner
from graphopt.data.digits import DigitsTraining, batches, train_digits_cnn
from graphopt.data.fashion import as_digits_split, load_fashion_mnist
from graphopt.reporting.evaluation import accuracy
from graphopt.zoo.mobilenet import mobilenet_fashion


class FashionMLP(nn.Module):
    """Linear -> ReLU -> Linear -> ReLU -> Linear on the image padded to 28 x 32 with zeros on the right
    (896 = 28 x 32 inputs: a block of 32 is one image row and 4 zeros)."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.pad, self.flatten = nn.ZeroPad2d((0, 4, 0, 0)), nn.Flatten()
        self.fc1, self.fc2, self.fc3 = (
            nn.Linear(28 * 32, hidden),
            nn.Linear(hidden, hidden),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(self.pad(x))
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def rows(group: int) -> tuple[tuple[str, WeightQuant | None], ...]:
    return (
        ("int8 per channel", None),
        ("W4 per channel", WeightQuant(bits=4)),
        (f"W4 group {group}", WeightQuant(bits=4, group_size=group)),
        ("W4 per channel, mse", WeightQuant(bits=4, clipping="mse")),
        (f"W4 group {group}, mse", WeightQuant(bits=4, group_size=group, clipping="mse")),
        ("W3 per channel", WeightQuant(bits=3)),
        (f"W3 group {group}", WeightQuant(bits=3, group_size=group)),
        ("W2 per channel", WeightQuant(bits=2)),
        (f"W2 group {group}", WeightQuant(bits=2, group_size=group)),
    )


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def median_ms(path: Path, example: tuple[Tensor, ...]) -> float:
    """Batch-1 median latency of the file in ONNX Runtime, one thread (a shared machine: indicative)."""
    return OnnxRunner(path, threads=1).time(*example, warmup=20, repeat=200).median_ms


def measure(name: str, model: nn.Module, group: int, split, folder: Path) -> list[str]:
    example = (split.train_x[:1],)
    calibration = [split.train_x[i : i + 32] for i in range(0, 320, 32)]
    test = batches(split.test_x, split.test_y, 1000)
    fp32_path = folder / f"{name}_fp32.onnx"
    graphopt.optimize(model, "generic-fp32", example).export(fp32_path)
    fp32_bytes, fp32_score = fp32_path.stat().st_size, 100 * accuracy(OnnxRunner(fp32_path).run, test)
    fp32_ms = median_ms(fp32_path, example)
    lines = [f"| {name} | fp32 | {fp32_score:.2f} | {fp32_bytes:,} | 1.000x | {fp32_ms:.3f} |"]
    for label, weights in rows(group):
        path = folder / f"{name}_{len(lines)}.onnx"
        res = graphopt.optimize(model, "x86-int8", example, calibration_data=calibration, weights=weights)
        res.export(path, latency_guard=False)
        score = 100 * accuracy(OnnxRunner(path).run, test)
        size = path.stat().st_size
        ms = median_ms(path, example)
        lines.append(f"| {name} | {label} | {score:.2f} | {size:,} | {size / fp32_bytes:.3f}x | {ms:.3f} |")
        log(lines[-1])
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlp-epochs", type=int, default=3)
    parser.add_argument("--mobilenet-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    split = load_fashion_mnist()
    data = as_digits_split(split)
    table = [
        "| model | weights | test accuracy % | file bytes | vs fp32 | ORT ms, batch 1, 1 thread |",
        "|---|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs = [("fashion_mlp", FashionMLP, args.mlp_epochs, False, 32)]
        if args.mobilenet_epochs > 0:
            runs.append(("fashion_mobilenet", mobilenet_fashion, args.mobilenet_epochs, True, 8))
        for name, build, epochs, channels_last, group in runs:
            log(f"train {name}, {epochs} epochs")
            training = DigitsTraining(
                epochs=epochs, batch_size=128, seed=args.seed, channels_last=channels_last
            )
            model = train_digits_cnn(data, training, quiet=True, model=build, task="Fashion-MNIST").eval()
            table += measure(name, model, group, split, folder)
    print("\n".join(table))


if __name__ == "__main__":
    main()
