"""Per-tensor, fixed-point and 4-bit-weight int8 on Fashion-MNIST, plain and after the improve_int8 driver,
next to NNCF's PTQ (issue 41's goals).

    python bench/ptq_fashion.py --models fashion_resnet fashion_mobilenet --seeds 0 1 2

Per model and seed: the bench model is trained here (``graphopt bench``'s recipe; ``--epochs`` shortens it);
every row is an ONNX file run in ONNX Runtime and scored on the 10,000 test images, never seen by a
decision. ``+ driver`` rows pass ``accuracy_budget=`` with the 5,000 validation images as ``eval_data``:
``improve_int8`` (equalize, AdaRound, bias correction, each kept only if validation accuracy rises) runs
first, then ``accuracy_budget`` puts layers back in fp32 if the budget is still missed; the ``fp32 layers``
column says how many it did (0: the driver alone met it). Progress on stderr, a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import graphopt
from graphopt import WeightQuant
from graphopt.backends import OnnxRunner
from graphopt.benchmark.models import DIGITS_MODELS, BenchModel
from graphopt.benchmark.nncf_peer import nncf_quantize
from graphopt.passes import ImproveInt8Options
from graphopt.pipeline.registry import make_pass
from graphopt.reporting.evaluation import accuracy
from graphopt.targets import TARGETS

#: (row, target, weights, accuracy budget in pp or None for plain calibration)
ROWS = (
    ("int8 per channel", "x86-int8", None, None),
    ("int8 per tensor", "x86-int8", WeightQuant(per_channel=False), None),
    ("int8 per tensor + driver", "x86-int8", WeightQuant(per_channel=False), 0.3),
    ("fixed-point-int8", "fixed-point-int8", None, None),
    ("fixed-point-int8 + driver", "fixed-point-int8", None, 0.3),
    ("W4A8 per channel", "x86-int8", WeightQuant(bits=4), None),
    ("W4A8 per channel + driver", "x86-int8", WeightQuant(bits=4), 1.0),
)
#: Rows where the driver runs every step that helps and no layer goes back to fp32 (the bits NNCF keeps):
#: ``improve_int8`` after the target's passes, scored on the validation images, stopping at no drop.
DRIVER_ONLY_ROWS = (("int8 per channel + driver, no fall-back", "x86-int8", None),)

#: Mixed 8/4-bit rows: the weights in this share of their int8 bytes, the least sensitive layers at 4 bits
MIXED_SHARE = 0.75


def mixed_rows(model: torch.nn.Module) -> tuple[tuple[str, str, WeightQuant, float | None], ...]:
    weights = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )
    mixed = WeightQuant(bits=4, max_weight_bytes=int(MIXED_SHARE * weights))
    label = f"W4/W8 mixed, weights {MIXED_SHARE:g}x int8"
    return ((label, "x86-int8", mixed, None), (f"{label} + driver", "x86-int8", mixed, 1.0))


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def file_accuracy(path: Path, bench: BenchModel) -> float:
    """Test accuracy (%) of the ONNX file at ``path`` in ONNX Runtime."""
    return 100 * accuracy(OnnxRunner(path).run, bench.eval or [])


def one_model(name: str, seed: int, folder: Path, only: set[str] | None = None) -> list[dict[str, object]]:
    t0 = time.perf_counter()
    bench = DIGITS_MODELS[name](seed, True)
    log(f"{name} seed {seed}: trained ({time.perf_counter() - t0:.0f} s)")
    validation = bench.validation or bench.eval  # digits has no validation split: a smoke run only
    common = {"example_inputs": bench.example_inputs, "calibration_data": bench.calibration}
    fp32 = graphopt.optimize(bench.model, "generic-fp32", example_inputs=bench.example_inputs)
    fp32_path = fp32.export(folder / f"{name}-{seed}-fp32.onnx")
    reference = file_accuracy(fp32_path, bench)
    log(f"{name} seed {seed}: fp32 {reference:.2f} %")
    rows = [_row(name, seed, "fp32", reference, reference, fp32_path, fp32_path, None)]
    for label, target, weights, budget in (*ROWS, *mixed_rows(bench.model)):
        if only is not None and label not in only:
            continue
        t0 = time.perf_counter()
        extra = {"accuracy_budget": budget, "eval_data": validation} if budget is not None else {}
        res = graphopt.optimize(bench.model, target, weights=weights, **common, **extra)
        path = res.export(folder / f"{name}-{seed}-{len(rows)}.onnx", latency_guard=False)
        rows.append(_row(name, seed, label, file_accuracy(path, bench), reference, path, fp32_path, res))
        log(f"{name} seed {seed}: {label} {rows[-1]['accuracy']:.2f} % ({time.perf_counter() - t0:.0f} s)")
    for label, target, weights in DRIVER_ONLY_ROWS:
        if only is not None and label not in only:
            continue
        driver = make_pass("improve_int8", ImproveInt8Options(budget_pp=0.0))
        passes = [*(make_pass(p.name, p.options) for p in TARGETS[target].passes), driver]
        res = graphopt.optimize(
            bench.model, target, weights=weights, passes=passes, eval_data=validation, **common
        )
        path = res.export(folder / f"{name}-{seed}-{len(rows)}.onnx", latency_guard=False)
        rows.append(_row(name, seed, label, file_accuracy(path, bench), reference, path, fp32_path, res))
        log(f"{name} seed {seed}: {label} {rows[-1]['accuracy']:.2f} %")
    samples = [(x[i : i + 1],) for x in bench.calibration or [] for i in range(len(x))]
    for preset in ("default", "bias_correction"):
        path, label = folder / f"{name}-{seed}-nncf-{preset}.onnx", f"NNCF PTQ ({preset})"
        try:
            nncf_quantize(bench.model, bench.example_inputs, samples, path, preset)
            score = file_accuracy(path, bench)  # a file ORT refuses is NNCF's failure too
        except Exception as exc:  # a peer's failure is a finding: logged, the run goes on
            log(f"{name} seed {seed}: {label} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            continue
        rows.append(_row(name, seed, label, score, reference, path, fp32_path, None))
        log(f"{name} seed {seed}: {label} {score:.2f} %")
    return rows


def _row(name, seed, label, acc, reference, path, fp32_path, res) -> dict[str, object]:  # type: ignore[no-untyped-def]
    kept = steps = "-"
    if res is not None and any(r.stage == "accuracy_budget" for r in res.report.stages):
        kept = str(res.report.stage("accuracy_budget").stats.get("kept_fp32", 0))
    if res is not None and "improve_int8" in res.report.tables:
        rows = res.report.tables["improve_int8"]
        steps = ", ".join(str(r["step"]) for r in rows if r["kept"]) or "none kept"
    if res is not None and "allocate_weight_bits" in res.report.tables:
        narrow = sum(r["bits"] < 8 for r in res.report.tables["allocate_weight_bits"])
        steps = f"int4 layers: {narrow}" + ("" if steps == "-" else f"; {steps}")
    return {
        "model": name, "seed": seed, "row": label, "accuracy": acc, "drop": reference - acc,
        "bytes": path.stat().st_size, "size": path.stat().st_size / fp32_path.stat().st_size,
        "fp32 layers": kept, "driver kept": steps,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["fashion_resnet", "fashion_mobilenet"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", nargs="+", help="only these graphopt rows (labels as in the table); NNCF always")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| model | seed | row | test % (ORT) | drop pp | bytes | vs fp32 | fp32 layers | driver kept |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for seed in args.seeds:
                for r in one_model(name, seed, Path(tmp), set(args.rows) if args.rows else None):
                    print(_markdown(r), flush=True)


def _markdown(r: dict[str, object]) -> str:
    cells = (r["model"], r["seed"], r["row"], f"{r['accuracy']:.2f}", f"{r['drop']:.2f}", f"{r['bytes']:,}",
             f"{r['size']:.3f}", r["fp32 layers"], r["driver kept"])  # fmt: skip
    return "| " + " | ".join(str(c) for c in cells) + " |"


if __name__ == "__main__":
    main()
