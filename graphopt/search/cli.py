"""``graphopt optimize MODEL --goal speedup>=3 --goal accuracy-drop<=0.5 --goal size<=2MB``.

With ``--goal`` the model is loaded like ``graphopt bench`` loads it: the models trained here on labelled
data (``digits``, ``digits_resnet``, ``fashion_resnet``, ...) bring their calibration, training,
validation and test splits; other models calibrate on synthetic inputs and can have speed and size goals
only (an accuracy goal needs labels).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from graphopt.errors import ConfigError
from graphopt.result import OptimizeResult


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--goal", action="append", default=[], metavar="GOAL",
        help="speedup>=N, accuracy-drop<=PP, size<=2MB: search for the best artifact that meets them",
    )  # fmt: skip
    p.add_argument("--search-prune", default="0,0.25,0.5,0.7", help="prune ratios the search tries")
    p.add_argument("--no-exits", action="store_true", help="the search does not try early exits")
    p.add_argument("--max-candidates", type=int, default=24)
    p.add_argument("--max-minutes", type=float, default=20.0)
    p.add_argument("--recovery-epochs", type=int, default=5, help="distillation / QAT epochs per candidate")
    p.add_argument("--search-plot", type=Path, help="write the search's Pareto plot (PNG) here")
    p.add_argument("--search-cache", type=Path, help="keep measured candidates here: a rerun reuses them")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run_search_command(args: argparse.Namespace) -> OptimizeResult:
    from graphopt.api import optimize
    from graphopt.benchmark.models import load_bench_model
    from graphopt.model_spec import parse_shape
    from graphopt.recovery.config import RecoveryConfig
    from graphopt.search import SearchConfig, parse_goals

    goals = parse_goals(args.goal)
    if args.dump_ir is not None:
        raise ConfigError("--dump-ir writes the IR of one plan; a --goal search runs many: drop one of them")
    shape = parse_shape(args.input_shape) if args.input_shape else None
    bench = load_bench_model(args.model, input_shape=shape, synthetic_data=True, quiet=args.quiet)
    if goals.needs_accuracy and bench.validation is None:
        raise ConfigError(
            f"--goal accuracy-drop needs labelled validation data, which {args.model} has none of "
            f"({bench.data}); use a model trained here (digits_resnet, fashion_resnet) or drop that goal"
        )
    training = args.recovery_epochs > 0
    recovery = (
        RecoveryConfig(epochs=args.recovery_epochs, augment=bench.augment, quiet=args.quiet)
        if training
        else None
    )
    config = SearchConfig(
        prune_ratios=_ratios(args.search_prune), exits=(False,) if args.no_exits else (False, True),
        early_exit=bench.early_exit, max_candidates=args.max_candidates, max_minutes=args.max_minutes,
        cache_dir=args.search_cache, quiet=args.quiet,
    )  # fmt: skip
    result = optimize(
        bench.model, args.target, bench.example_inputs, calibration_data=bench.calibration,
        train_data=bench.train if training else None, validation_data=bench.validation,
        eval_data=bench.eval, recovery=recovery, goals=goals, search=config,
    )  # fmt: skip
    if args.search_plot:
        result.search.save_plot(args.search_plot)
    return result


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--search-prune must be comma-separated fractions like 0,0.5; got {text!r}"
        ) from None
