"""Goal-driven optimize on ``digits_resnet`` against the fixed preset pipelines, in one run.

The search (goals: speed-up >= 3x over the original in ORT fp32, accuracy drop <= 0.5 pp on validation)
runs its whole default space (prune 0 / 0.25 / 0.5 / 0.7 x fp32 / int8 / int8 with fall-backs x exits),
5 epochs of distillation recovery and of QAT per candidate. The presets a user would pick by hand run
through plain ``optimize`` with the same training and the latency guard on, and are measured the same way
(exported, timed side by side with the original, scored on validation and test data). Recorded: the
search's wall time, its table, the returned row's test drop, and for every preset whether a row of the
search's Pareto front dominates or equals it (speed-up within 5 %, drop and bytes no worse).

Run: ``python -m pytest bench/test_bench_search.py --benchmark-enable -s``
"""

from __future__ import annotations

import dataclasses
import time

import pytest

import graphopt
from graphopt.benchmark.models import load_bench_model
from graphopt.search.measure import Baseline, measure_candidate, retime_together

GOALS = graphopt.Goals(min_speedup=3.0, max_accuracy_drop=0.5)
#: Speed-ups are ratios from separate side-by-side timings: within this share they count as equal.
SPEED_NOISE = 0.05
PRESETS = {
    "x86-int8 + QAT": {"target": "x86-int8"},
    "x86-int8 prune 0.5": {"target": "x86-int8", "prune": 0.5},
    "x86-int8 prune 0.5 + exits": {"target": "x86-int8", "prune": 0.5, "exits": True},
    "generic-fp32 prune 0.5": {"target": "generic-fp32", "prune": 0.5},
}


@pytest.mark.parametrize("seed", [0])
def test_search_meets_the_goals_and_its_front_covers_the_presets(benchmark, seed, tmp_path):
    bench = load_bench_model("digits_resnet", seed=seed, quiet=True)
    recovery = graphopt.RecoveryConfig(epochs=5, augment=bench.augment, quiet=True)
    data = dict(
        example_inputs=bench.example_inputs, calibration_data=bench.calibration, train_data=bench.train,
        validation_data=bench.validation, eval_data=bench.eval, recovery=recovery,
    )  # fmt: skip
    started = time.perf_counter()
    config = graphopt.SearchConfig(early_exit=bench.early_exit, quiet=True)
    res = graphopt.optimize(bench.model, "x86-int8", **data, goals=GOALS, search=config)
    minutes = (time.perf_counter() - started) / 60
    baseline = Baseline.of(bench.model, bench.example_inputs, 1, tmp_path, bench.validation, bench.eval)
    presets = {name: _preset(bench, spec, data, baseline, tmp_path / name.replace(" ", "_"))
               for name, spec in PRESETS.items()}  # fmt: skip
    front = {row.point.label: _exported_again(res, row, tmp_path) for row in res.search.front()}
    # one timing session for the front and the presets: a comparison across sessions would be noise
    timed = [m for m, _ in (*front.values(), *presets.values())]
    retime_together(timed, baseline, bench.validation, threads=1)
    covered = {name: [label for label, m in front.items() if _covers(m, p)] for name, p in presets.items()}
    chosen = res.search.chosen
    print(f"\nsearch: {minutes:.1f} min; {res.search.verdict}")
    for row in res.search.table():
        print(row)
    for name, p in presets.items():
        print(f"preset {name}: {_summary(p)}; covered by: {covered[name]}")
    for label, m in front.items():
        print(f"front {label}: {_summary(m)}")
    benchmark.extra_info.update(
        minutes=round(minutes, 2), verdict=res.search.verdict, table=res.search.table(),
        chosen_test_drop=chosen.test_drop, covered=covered,
        presets={n: _summary(p) for n, p in presets.items()},
        front={k: _summary(m) for k, m in front.items()},
    )  # fmt: skip
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def _preset(bench, spec, data, baseline, folder):
    folder.mkdir()
    early_exit = bench.early_exit if spec.get("exits") else None
    result = graphopt.optimize(bench.model, spec["target"], prune=spec.get("prune", 0.0),
                               early_exit=early_exit, **{**data, "eval_data": bench.validation})  # fmt: skip
    measured = measure_candidate(result, "onnx", folder / "preset", baseline, bench.validation, bench.eval,
                                 latency_guard=True)  # fmt: skip
    return measured, baseline.drop(measured.accuracy)


def _exported_again(res, row, folder):
    """A front row's artifact written again (the search's own files went with its temporary folder)."""
    _, result = next(v for k, v in res.search.outcomes.items() if k[1] == row.point)
    path = result.export(folder / f"front_{abs(hash(row.point))}.onnx", latency_guard=False)
    return dataclasses.replace(row.measured, path=path), row.accuracy_drop


def _covers(front, preset) -> bool:
    """Dominates or equals: the preset's speed-up (within timing noise) or more, drop and bytes no worse."""
    (f, f_drop), (p, p_drop) = front, preset
    return (
        f.speedup >= p.speedup * (1 - SPEED_NOISE)
        and (f_drop or 0.0) <= (p_drop or 0.0)
        and f.bytes <= p.bytes
    )


def _summary(entry) -> dict:
    m, drop = entry
    return {"speedup": round(m.speedup, 2), "drop_pp": drop, "bytes": m.bytes,
            "test_accuracy": m.test_accuracy, "shipped_fp32": m.shipped_fp32}  # fmt: skip
