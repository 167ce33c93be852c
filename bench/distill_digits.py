"""Measured goal of recovery: a half-width digits student distilled from the digits teacher reaches at
least the accuracy of the same student trained on labels alone with the same budget (3 seeds), and a run
is deterministic for a seed.

    python bench/distill_digits.py [--seeds 0 1 2] [--epochs 30] [--json out.json]

Both arms use graphopt's recovery engine with identical settings (AdamW, one-cycle lr 0.01, batch 64,
+-1 px shifts, 10 % validation split with best-weight selection); only the loss differs: ``alpha=1`` is
labels alone, the distilled arm uses graphopt's default DistillConfig (tau 4, alpha 0.1). Accuracy is on the
360-image test split.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import graphopt
from graphopt.data.digits import (
    DigitsCNN,
    DigitsTraining,
    batches,
    load_digits_split,
    random_shift,
    train_digits_cnn,
)
from graphopt.reporting.evaluation import accuracy


def config(seed: int, epochs: int, distill: graphopt.DistillConfig) -> graphopt.RecoveryConfig:
    return graphopt.RecoveryConfig(epochs=epochs, batch_size=64, optimizer=graphopt.OptimizerConfig(lr=0.01),
                                   schedule="onecycle", distill=distill,
                                   patience=None, seed=seed, quiet=True, augment=random_shift)  # fmt: skip


def student_run(
    teacher, data, seed: int, epochs: int, distill: graphopt.DistillConfig
) -> tuple[float, torch.nn.Module]:
    torch.manual_seed(seed)
    student = DigitsCNN(width=16)
    result = graphopt.distill(
        teacher, student, batches(data.train_x, data.train_y, 256), config(seed, epochs, distill)
    )
    return accuracy(result.student, data.test_batches()), result.student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--json")
    args = parser.parse_args()
    data = load_digits_split()
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        teacher = train_digits_cnn(data, DigitsTraining(seed=seed), quiet=True)
        labels_only, _ = student_run(teacher, data, seed, args.epochs, graphopt.DistillConfig(alpha=1.0))
        distilled, model = student_run(teacher, data, seed, args.epochs, graphopt.DistillConfig())
        _, again = student_run(teacher, data, seed, args.epochs, graphopt.DistillConfig())
        deterministic = all(
            torch.equal(a, b)
            for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
        )
        teacher_accuracy = accuracy(teacher, data.test_batches())
        seconds = round(time.perf_counter() - start, 1)
        rows.append({"seed": seed, "teacher": teacher_accuracy, "labels_only": labels_only,
                     "distilled": distilled, "deterministic": deterministic, "seconds": seconds})  # fmt: skip
        print(rows[-1], flush=True)
    print("\n| seed | teacher (width 32) | student, labels only | student, distilled | deterministic |")
    print("|---:|---:|---:|---:|---|")
    for r in rows:
        accuracies = " | ".join(f"{r[k]:.2%}" for k in ("teacher", "labels_only", "distilled"))
        print(f"| {r['seed']} | {accuracies} | {r['deterministic']} |")
    mean = {k: statistics.mean(r[k] for r in rows) for k in ("teacher", "labels_only", "distilled")}
    print(f"| mean | {mean['teacher']:.2%} | {mean['labels_only']:.2%} | {mean['distilled']:.2%} | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "mean": mean}, f, indent=2)


if __name__ == "__main__":
    main()
