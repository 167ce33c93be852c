"""Fashion-MNIST ResNet on an Ethos-U55: prune + distillation + int8, costed by Vela (issue 40's goal).

    python bench/ethos_u_fashion.py --seeds 0 1 2 --out /tmp/ethos_u_fashion

Per seed: the fp32 original (``resnet_digits``, as ``graphopt bench fashion_resnet`` builds it) is trained
on a share of the Fashion-MNIST training images; the unpruned original is quantized for ``ethos-u55-int8``
(the same calibration images) and compiled by Vela: the BASELINE. The pruned model is optimized for the same
target with ``prune=``, distillation from the original (``train_data``) and QAT, then compiled alike.

    speed-up = Vela estimate(unpruned int8) / Vela estimate(pruned, distilled, int8)   (ESTIMATES, U55-128)
    drop     = test accuracy(fp32 original, eager) - test accuracy(the int8 .tflite Vela compiled, in LiteRT)

``--sweep`` first prints, per prune ratio, Vela's estimate of the pruned int8 model before any training
(estimates are deterministic and do not depend on training: this is how the ratio is chosen). Progress on
stderr, a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

import graphopt
from graphopt.backends.ethos_u_backend import EthosURunner
from graphopt.benchmark.models import FASHION_RECIPE
from graphopt.data.digits import DigitsSplit, DigitsTraining, batches, train_digits_cnn
from graphopt.data.fashion import as_digits_split, load_fashion_mnist, validation_batches
from graphopt.pruning.config import PruneConfig
from graphopt.reporting.evaluation import accuracy
from graphopt.zoo.resnet import resnet_digits

TARGET = "ethos-u55-int8"
CALIBRATION = 320  # images, the same for every seed and both models (as graphopt bench)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def subset(data: DigitsSplit, images: int, seed: int) -> DigitsSplit:
    """``images`` training images drawn by ``seed`` (the test split whole)."""
    pick = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))[:images]
    return dataclasses.replace(data, train_x=data.train_x[pick], train_y=data.train_y[pick])


def vela_ms(res: graphopt.OptimizeResult, path: Path) -> tuple[float, EthosURunner]:
    runner = EthosURunner(res.export(path, latency_guard=False))
    assert runner.estimate.all_on_npu, runner.estimate.summary()
    return runner.estimated_ms(), runner


def test_accuracy(predict, data: DigitsSplit) -> float:
    return 100 * accuracy(predict, batches(data.test_x, data.test_y, 500))


def sweep(data: DigitsSplit, ratios: list[float], out: Path) -> None:
    """Vela's estimate of the pruned int8 model per ratio, untrained weights: no training needed to choose."""
    torch.manual_seed(0)
    model = resnet_digits().eval()
    example, calibration = (data.test_x[:1],), [data.train_x[:CALIBRATION]]
    print("| prune | Vela U55-128 ms (ESTIMATE) | speed-up | MACs |\n|---:|---:|---:|---:|")
    base = None
    for ratio in [0.0, *ratios]:
        prune = PruneConfig(ratio=ratio, skip_int8_if_slower=False) if ratio else 0.0
        res = graphopt.optimize(
            model, TARGET, example_inputs=example, calibration_data=calibration, prune=prune
        )
        ms, _ = vela_ms(res, out / f"sweep-{ratio:g}.tflite")
        base = base or ms
        print(f"| {ratio:g} | {ms:.4f} | {base / ms:.2f}x | {res.report.stages[-1].macs:,} |", flush=True)
        log(f"sweep prune={ratio:g}: {ms:.4f} ms")


def one_seed(data: DigitsSplit, seed: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    train = subset(data, args.train_images, seed)
    t0 = time.perf_counter()
    original = train_digits_cnn(train, DigitsTraining(epochs=args.original_epochs, batch_size=128, seed=seed,
                                                      channels_last=True),
                                quiet=True, model=resnet_digits, task="Fashion-MNIST").eval()  # fmt: skip
    log(f"seed {seed}: original trained ({time.perf_counter() - t0:.0f} s)")
    fp32 = test_accuracy(original, data)
    example, calibration = (data.test_x[:1],), [data.train_x[:CALIBRATION]]
    baseline = graphopt.optimize(original, TARGET, example_inputs=example, calibration_data=calibration)
    base_ms, _ = vela_ms(baseline, out / f"seed{seed}-baseline.tflite")
    log(f"seed {seed}: fp32 {fp32:.2f} %, unpruned int8 on the NPU {base_ms:.4f} ms (Vela)")
    t0 = time.perf_counter()
    recovery = dataclasses.replace(FASHION_RECIPE, epochs=args.epochs, seed=seed, quiet=True, patience=None)
    res = graphopt.optimize(
        original, TARGET, example_inputs=example, calibration_data=calibration,
        train_data=batches(train.train_x, train.train_y, 128), recovery=recovery,
        prune=PruneConfig(ratio=args.prune, skip_int8_if_slower=False, seed=seed),
    )  # fmt: skip
    ms, runner = vela_ms(res, out / f"seed{seed}-pruned.tflite")
    int8 = test_accuracy(runner.run_batched, data)
    log(f"seed {seed}: pruned {ms:.4f} ms, {int8:.2f} % ({time.perf_counter() - t0:.0f} s)")
    return {"seed": seed, "fp32": fp32, "int8": int8, "base_ms": base_ms, "ms": ms}


def search(data: DigitsSplit, validation: list, args: argparse.Namespace) -> None:
    """The goal-driven search: "fastest on Ethos-U55 within 0.5 pp" (speed-ups are Vela's ESTIMATES against
    the unpruned original int8 compiled alike; drops against the fp32 original, on validation data)."""
    seed = args.seeds[0]
    train = subset(data, args.train_images, seed)
    original = train_digits_cnn(train, DigitsTraining(epochs=args.original_epochs, batch_size=128, seed=seed,
                                                      channels_last=True),
                                quiet=True, model=resnet_digits, task="Fashion-MNIST").eval()  # fmt: skip
    log(f"search: original trained (seed {seed})")
    recovery = dataclasses.replace(FASHION_RECIPE, epochs=args.epochs, seed=seed, quiet=True, patience=None)
    config = graphopt.SearchConfig(prune_ratios=tuple(args.search), int8=("on",), exits=(False,),
                                   max_minutes=args.max_minutes)  # fmt: skip
    res = graphopt.optimize(
        original, TARGET, example_inputs=(data.test_x[:1],), calibration_data=[data.train_x[:CALIBRATION]],
        train_data=batches(train.train_x, train.train_y, 128), recovery=recovery,
        validation_data=validation, eval_data=batches(data.test_x, data.test_y, 500),
        goals=graphopt.Goals(max_accuracy_drop=0.5), search=config,
    )  # fmt: skip
    print("| candidate | latency ms | speed-up | basis | drop pp (val) | drop pp (test) | goals |")
    print("|---|---:|---:|---|---:|---:|---|")
    for r in res.search.table():
        cells = (
            "candidate",
            "latency_ms",
            "speedup",
            "latency_basis",
            "drop_pp",
            "test_drop_pp",
            "goals",
            "chosen",
        )
        print("| " + " | ".join(str(r[c]) for c in cells) + " |")
    print(f"\n{res.search.verdict}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prune", type=float, default=0.75)
    p.add_argument("--sweep", type=float, nargs="*", help="prune ratios to cost (no training), then stop")
    p.add_argument("--train-images", type=int, default=10_000)
    p.add_argument("--original-epochs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2, help="distillation epochs (QAT runs as many)")
    p.add_argument("--search", type=float, nargs="*", help="search these prune ratios (goal: drop <= 0.5 pp)")
    p.add_argument("--max-minutes", type=float, default=15.0, help="the search's time budget")
    p.add_argument("--threads", type=int, default=2, help="torch's CPU threads for training")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    split = load_fashion_mnist()
    data = as_digits_split(split)
    if args.sweep is not None:
        sweep(data, args.sweep, args.out)
        return
    if args.search is not None:
        search(data, validation_batches(split), args)
        return
    print(
        f"prune={args.prune:g}, {args.train_images} training images, original {args.original_epochs} "
        f"epochs, distillation + QAT {args.epochs} epochs each, {CALIBRATION} calibration images, U55-128\n"
    )
    print("| seed | fp32 test % | int8 .tflite test % | drop pp | unpruned int8 ms | pruned ms | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for seed in args.seeds:  # each row as it is measured: a run cut short keeps its seeds
        r = one_seed(data, seed, args, args.out)
        drop, speedup = r["fp32"] - r["int8"], r["base_ms"] / r["ms"]
        print(f"| {r['seed']} | {r['fp32']:.2f} | {r['int8']:.2f} | {drop:.2f} | {r['base_ms']:.4f} | "
              f"{r['ms']:.4f} | {speedup:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
