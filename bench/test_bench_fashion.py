"""Fashion-MNIST's ResNet, the full chain against the peers, three training seeds (issue 22's table).

Per seed: the original trained here (4 epochs), then graphopt's int8 alone; prune 0.5 + BatchNorm
re-estimation + ``probe_int8`` + distillation recovery + QAT (QAT and int8 only where int8 is faster than
fp32 in ORT, else their epochs go to recovery); the same on labels alone (distillation's ablation); the same
with early exits; next to ORT fp32 / ``quantize_static``, TorchScript, eager, and Torch-Pruning at 0.5
fine-tuned on labels for the same epochs (+ ``quantize_static``), one interleaved timing run per seed.
``extra_info`` holds each row's accuracy per seed, mean, worst, drop against the same seed's original, and
the speed-up and file ratio against it; the benchmark's own time is the whole run, training included.

Hours on one pinned core; needs Debian's ``dataset-fashion-mnist``. Run:
``python -m pytest bench/test_bench_fashion.py --benchmark-enable -s``
(``graphopt bench fashion_resnet -t ... --seed 0 --seed 1 --seed 2`` is the same from the command line.)
"""

from __future__ import annotations

from statistics import fmean

import pytest

from graphopt.benchmark import BenchConfig, parse_pipeline
from graphopt.benchmark.seeds import run_seeds, seeds_markdown
from graphopt.data.fashion import fashion_folder
from graphopt.errors import ConfigError

CHAIN = ("x86-int8", "x86-int8+prune=0.5", "x86-int8+prune=0.5+labels-only", "x86-int8+prune=0.5+early-exit")
SEEDS = [0, 1, 2]


def test_fashion_resnet_chain_against_peers_over_three_seeds(benchmark, tmp_path):
    try:
        fashion_folder()
    except ConfigError:
        pytest.skip("dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    config = BenchConfig(model="fashion_resnet", pipelines=tuple(parse_pipeline(p) for p in CHAIN),
                         recovery_epochs=2, out_dir=tmp_path, quiet=True)  # fmt: skip
    results, rows = benchmark.pedantic(run_seeds, args=(config, SEEDS), rounds=1, iterations=1)
    for row in rows:
        benchmark.extra_info[f"{row.pipeline} / {row.stage}"] = {
            "accuracy_per_seed": row.accuracy, "accuracy_mean": row.mean_accuracy,
            "accuracy_worst": row.worst_accuracy, "drop_pp_mean": fmean(row.drop_pp),
            "drop_pp_worst": max(row.drop_pp), "latency_ms_mean": fmean(row.latency_ms),
            "speedup_mean": fmean(row.speedup), "file_ratio_mean": fmean(row.file_ratio),
            **({"latency_vs_no_exits_per_seed": row.vs_no_exits} if row.vs_no_exits else {}),
        }  # fmt: skip
    benchmark.extra_info["machine"] = results[0].machine
    print("\n" + seeds_markdown(results, rows))
    assert all(r.complete and not r.errors for r in results)
    chain = next(r for r in rows if r.pipeline == "x86-int8+prune=0.5" and r.stage.startswith("artifact"))
    assert len(chain.accuracy) == len(SEEDS) and chain.mean_accuracy > 80  # a trained chain, every seed
