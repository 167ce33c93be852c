"""``graphopt optimize MODEL --goal speedup>=3 --goal accuracy-drop<=0.5 --goal size<=2MB``.

With ``--goal`` the model is loaded like ``graphopt bench`` loads it: the models trained here on labelled
data (``digits``, ``digits_resnet``, ``fashion_resnet``, ...) bring their calibration, training,
validation and test splits; other models calibrate on synthetic inputs and can have speed and size goals
only (an accuracy goal needs labels).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from graphopt.artifacts.result import OptimizeResult
from graphopt.call_options import OPTION, add_option_flags
from graphopt.errors import ConfigError
from graphopt.search.space import DEFAULT_INT8_MODES

#: The search's own flags and their defaults. They default to None on the parser so that one given
#: without ``--goal`` (where nothing reads it) can be refused rather than ignored.
SEARCH_DEFAULTS = {
    "search_prune": "0,0.25,0.5,0.7", "search_weight_bits": "8", "search_int8": ",".join(DEFAULT_INT8_MODES),
    "no_exits": False, "max_candidates": 24,
    "max_minutes": 20.0, "recovery_epochs": 5, "search_plot": None, "search_cache": None, "cluster": None,
}  # fmt: skip


#: The ``optimize()`` options whose flags the search adds (declared in :mod:`graphopt.call_options`).
SEARCH_OPTIONS = ("goals",)


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    """``--goal`` (``optimize()``'s ``goals``, declared in :mod:`graphopt.call_options`) and the search's own
    flags."""
    add_option_flags(p, tuple(OPTION[name] for name in SEARCH_OPTIONS))
    p.add_argument("--search-prune", help="prune ratios the search tries (default 0,0.25,0.5,0.7)")
    p.add_argument(
        "--search-weight-bits", help="int8 weight widths the search tries, e.g. 8,4 (W4A8 too; default 8)"
    )
    p.add_argument(
        "--search-int8",
        help="int8 modes the search tries: off, on, improved (the accuracy driver: equalization, sequential "
        "MSE, AdaRound, bias correction; every layer int8), fallbacks (default off,on,fallbacks)",
    )
    p.add_argument("--no-exits", action="store_const", const=True, help="the search does not try early exits")
    p.add_argument("--max-candidates", type=int, help="the most candidates the search measures (default 24)")
    p.add_argument("--max-minutes", type=float, help="the search's time budget (default 20)")
    p.add_argument("--recovery-epochs", type=int, help="distillation / QAT epochs per candidate (default 5)")
    p.add_argument("--search-plot", type=Path, help="write the search's Pareto plot (PNG) here")
    p.add_argument("--search-cache", type=Path, help="keep measured candidates here: a rerun reuses them")
    p.add_argument(
        "--cluster",
        help="build candidates on a Dask cluster: local:N (N worker processes here) or tcp://host:port",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")


def refuse_search_flags_without_goal(args: argparse.Namespace) -> None:
    """A search flag without ``--goal`` would be ignored (no plot written, no cache kept): say so."""
    given = [f"--{name.replace('_', '-')}" for name in SEARCH_DEFAULTS if getattr(args, name) is not None]
    if given and not args.goals:
        raise ConfigError(
            f"{', '.join(given)} only apply to a search: add --goal (e.g. --goal size<=2MB) or drop them"
        )


def _with_search_defaults(args: argparse.Namespace) -> argparse.Namespace:
    values = {name: getattr(args, name) for name in SEARCH_DEFAULTS}
    filled = {name: SEARCH_DEFAULTS[name] if value is None else value for name, value in values.items()}
    return argparse.Namespace(**{**vars(args), **filled})


def run_search_command(args: argparse.Namespace) -> OptimizeResult:
    from graphopt.api import optimize
    from graphopt.benchmark.models import load_bench_model
    from graphopt.model_spec import parse_shape
    from graphopt.recovery.config import RecoveryConfig
    from graphopt.search import SearchConfig, parse_goals

    args = _with_search_defaults(args)
    goals = parse_goals(args.goals)
    check_search_arguments(args)
    # built before the model loads: a bad option is reported before any work
    config = SearchConfig(
        prune_ratios=_ratios(args.search_prune), weight_bits=_bits(args.search_weight_bits),
        int8=tuple(args.search_int8.split(",")),
        exits=(False,) if args.no_exits else (False, True),
        max_candidates=args.max_candidates, max_minutes=args.max_minutes, cache_dir=args.search_cache,
        quiet=args.quiet, cluster=args.cluster,
    )  # fmt: skip
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
    config = dataclasses.replace(config, early_exit=bench.early_exit)
    result = optimize(
        bench.model, args.target, bench.example_inputs, calibration_data=bench.calibration,
        train_data=bench.train if training else None, validation_data=bench.validation,
        eval_data=bench.eval, recovery=recovery, goals=goals, search=config,
    )  # fmt: skip
    if args.search_plot:
        result.search.save_plot(args.search_plot)
    return result


def check_search_arguments(args: argparse.Namespace) -> None:
    """What can be checked before the model loads and the first candidate runs: each mistake found now
    costs nothing, found after the search it costs the search."""
    from graphopt.search.store import CandidateStore

    if args.dump_ir is not None:
        raise ConfigError("--dump-ir writes the IR of one plan; a --goal search runs many: drop one of them")
    if args.recovery_epochs < 0:
        raise ConfigError(
            f"--recovery-epochs must be >= 0 (0: no distillation or QAT), e.g. --recovery-epochs 5; "
            f"got {args.recovery_epochs}"
        )
    if args.search_plot is not None:
        from graphopt.benchmark.plot import pyplot

        pyplot(instead="drop --search-plot")
    if args.search_cache is not None:
        CandidateStore(args.search_cache)  # a folder that cannot be written is a ConfigError now


def _bits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        message = f"--search-weight-bits must be comma-separated widths like 8,4; got {text!r}"
        raise ConfigError(message) from None


def _ratios(text: str) -> tuple[float, ...]:
    try:
        ratios = tuple(float(part) for part in text.split(","))
    except ValueError:
        ratios = ()
    if not ratios or not all(0 <= r < 1 for r in ratios):  # NaN fails the comparison too
        raise ConfigError(
            f"--search-prune must be comma-separated fractions in [0, 1) like 0,0.5; got {text!r}"
        )
    return ratios
