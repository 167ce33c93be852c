"""The digits ResNet search in this process and on local Dask clusters, side by side (issue 43's goals).

    python bench/cluster_search.py --clusters none local:1 local:2

The search of ``graphopt optimize digits_resnet --target x86-int8 --goal accuracy-drop<=0.5`` (the whole
default space, 5 epochs of recovery / QAT per candidate), with ``tie_break="size"`` so that the choice rests
on accuracy and bytes, never on a timing (exits costed in the runtime, the bench model's default, still
choose their exits by timing: ``--exit-cost macs`` takes that out too). Every run trains on one torch thread
per process (the in-process run too, so that every artifact can be compared byte for byte). Per run: wall
time, the returned candidate and the sha256 of its file, and each candidate's build time and where it ran; a
markdown table on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import torch

import graphopt
from graphopt import Goals, RecoveryConfig, SearchConfig
from graphopt.benchmark.models import load_bench_model


def one_search(bench, cluster: str | None, folder: Path, exit_cost: str | None) -> dict[str, object]:
    exits = bench.early_exit if exit_cost is None else dataclasses.replace(bench.early_exit, cost=exit_cost)
    config = SearchConfig(cluster=cluster, tie_break="size", early_exit=exits, quiet=True)
    started = time.perf_counter()
    res = graphopt.optimize(
        bench.model, "x86-int8", bench.example_inputs, calibration_data=bench.calibration,
        train_data=bench.train, validation_data=bench.validation, eval_data=bench.eval,
        recovery=RecoveryConfig(epochs=5, augment=bench.augment, quiet=True),
        goals=Goals(max_accuracy_drop=0.5), search=config,
    )  # fmt: skip
    wall = time.perf_counter() - started
    path = res.export(folder / f"{cluster or 'in-process'}.onnx".replace(":", "-"), latency_guard=False)
    rows = res.search.table()
    return {
        "cluster": cluster or "in-process",
        "wall_s": wall,
        "returned": res.search.chosen.point.label,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16],
        "measured": sum(r["status"] == "measured" for r in rows),
        "build_s": sum(float(r["seconds"]) for r in rows),
        "rows": rows,
        "notes": [n for n in res.report.notes if n.startswith("search: ")],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clusters", nargs="+", default=["none", "local:2"])
    p.add_argument(
        "--exit-cost", choices=["macs", "runtime"], help="how exits are costed (default: the bench model's)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    bench = load_bench_model("digits_resnet", quiet=True)
    print("| run | wall (s) | candidates measured | sum of build times (s) | returned | sha256 |")
    print("|---|---:|---:|---:|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for cluster in args.clusters:
            run = one_search(bench, None if cluster == "none" else cluster, Path(tmp), args.exit_cost)
            print(f"| {run['cluster']} | {run['wall_s']:.0f} | {run['measured']} | {run['build_s']:.0f} | "
                  f"{run['returned']} | {run['sha256']} |", flush=True)  # fmt: skip
            for row in run["rows"]:
                print(
                    f"  {row['candidate']}: {row['status']}, {row['seconds']} s, {row['ran_on']}",
                    file=sys.stderr,
                )
            for note in run["notes"]:
                print(f"  {note}", file=sys.stderr)


if __name__ == "__main__":
    main()
