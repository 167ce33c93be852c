"""The ``graphopt`` command line: ``passes``, ``targets``, ``options``, ``plan``, ``optimize``, ``verify``,
``demo``, ``bench``, ``bench-compare``. The flags that stand for ``optimize()`` options come from
:mod:`graphopt.call_options`: ``plan`` takes those that shape a plan, ``optimize`` every one."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from graphopt.artifacts.destination import save_file
from graphopt.benchmark.cli import add_bench_commands
from graphopt.benchmark.models import load_bench_model
from graphopt.call_options import (
    OPTIMIZE_FLAGS,
    PLAN_FLAGS,
    Option,
    add_option_flags,
    flag_values,
    given_flags,
    options_table,
    planned_values,
)
from graphopt.errors import ConfigError, GraphoptError, WriteError
from graphopt.reporting.notes import Note
from graphopt.search.cli import (
    SEARCH_OPTIONS,
    add_search_arguments,
    refuse_search_flags_without_goal,
    run_search_command,
)

if TYPE_CHECKING:
    from graphopt.artifacts.result import OptimizeResult
    from graphopt.benchmark.models import BenchModel
    from graphopt.pipeline.plan import Plan

#: Exit statuses of a run stopped by a signal: 128 + the signal's number, as a shell reports it.
INTERRUPTED, TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives, so it unwinds like Ctrl-C: every ``with`` block on
    the way out runs (staging folders of unfinished files are removed). A ``KeyboardInterrupt`` so that
    handlers of ``Exception`` around library calls do not swallow it."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error or --help: a status, like every other way main ends
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with _sigterm_unwinds(), _third_party_logs(shown=args.verbose):
        try:
            return int(args.run(args) or 0)
        except GraphoptError as exc:
            print(f"graphopt: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:  # the traceback of where Ctrl-C landed says nothing to the user
            terminated = isinstance(exc, Terminated)
            print(f"graphopt: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
            return TERMINATED if terminated else INTERRUPTED


#: Libraries whose warnings reach a CLI user's terminal through logging and say nothing about their run:
#: torchao's "Failed to load ..._C_mxfp8...so" (CUDA kernels of a CPU install), torch's ``_pytree``
#: deprecation notes, ExecuTorch's and ONNX Script's export chatter. Errors still show.
THIRD_PARTY_LOGGERS = ("torch", "torchao", "executorch", "onnxscript", "onnx_ir", "transformers", "urllib3")


@contextmanager
def _third_party_logs(shown: bool) -> Iterator[None]:
    """Only graphopt's own output on a successful run: third-party loggers at ERROR unless ``--verbose``;
    their levels come back after (main is also called in-process)."""
    if shown:
        yield
        return
    loggers = [logging.getLogger(name) for name in THIRD_PARTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` while the command runs; the previous handler comes back after.
    Only in main and only in the main thread (the one thread Python delivers signals to), never at import:
    a program that imports graphopt keeps its own handling."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _OneLineErrors(argparse.ArgumentParser):
    """Usage errors in one line with where to read more (the usage block of ``bench`` alone is a screen)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog="graphopt", description="Optimize trained PyTorch models for edge CPUs.")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show third-party libraries' warnings (torch, torchao, ...)",
    )
    sub = parser.add_subparsers(required=True, metavar="command")

    p = sub.add_parser("passes", help="list the registered passes")
    p.set_defaults(run=_cmd_passes)

    p = sub.add_parser("targets", help="list the target presets and what they run")
    p.set_defaults(run=_cmd_targets)

    p = sub.add_parser("options", help="list optimize()'s options: type, default, flag, bench token, doc")
    p.add_argument("--markdown", action="store_true", help="as the Markdown table of docs/api.md")
    p.set_defaults(run=_cmd_options)

    p = sub.add_parser(
        "plan",
        help="print what optimize() would run for a target and options, slot by slot",
        description="Switches stand for what they would bring: --train-data plans as if train_data were "
        "given, --early-exit plans the default EarlyExitConfig.",
    )
    add_option_flags(p, PLAN_FLAGS, positional=("target",))
    p.set_defaults(run=_cmd_plan)

    p = sub.add_parser(
        "optimize", help="optimize a model given as pkg.module:factory or a reference model name"
    )
    p.add_argument("model", help="pkg.module:factory (a callable returning an nn.Module) or a zoo name")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (zoo models know theirs)")
    p.add_argument("-o", "--output", type=Path, help="artifact path: .onnx or .pt")
    p.add_argument("--save", type=Path, help="also save the optimized torch model (.pt2)")
    p.add_argument("--latency", action="store_true", help="time the artifact and the original in ORT fp32")
    p.add_argument("--json", type=Path, help="write the report as JSON")
    # --train-data / --early-exit: the named model's own data / exits; --goal: with the search's flags
    add_option_flags(p, tuple(o for o in OPTIMIZE_FLAGS if o.name not in SEARCH_OPTIONS))
    add_search_arguments(p)
    p.set_defaults(run=_cmd_optimize)

    p = sub.add_parser(
        "verify", help="run an ONNX artifact on another CPU family's or an older onnxruntime and check it"
    )
    p.add_argument("artifact", type=Path, help="the .onnx file")
    p.add_argument("--arch", choices=["aarch64", "x86_64"], default="aarch64")
    p.add_argument("--ort", default=None, help="onnxruntime version to run it on (default 1.20.1)")
    p.set_defaults(run=_cmd_verify)

    p = sub.add_parser("demo", help="train the digits CNN, optimize, export, print the per-stage table")
    p.add_argument("--target", default="x86-int8")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--prune", type=float, default=0.5, help="fraction of channels to prune (0: none)")
    p.add_argument(
        "--recovery-epochs", type=int, default=20, help="epochs of distillation and of QAT (0: no training)"
    )
    p.add_argument("--early-exit", action="store_true", help="add an early exit after the second conv block")
    p.add_argument("--out", type=Path, default=Path("graphopt-demo"))
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(run=_cmd_demo)

    add_bench_commands(sub)
    return parser


def _cmd_passes(args: argparse.Namespace) -> int:
    from graphopt.pipeline.registry import list_passes

    for name, description in list_passes().items():
        print(f"{name:24s} {description}")
    return 0


def _cmd_targets(args: argparse.Namespace) -> int:
    from graphopt.targets import TARGETS

    for target in TARGETS.values():
        passes = " -> ".join(p.name for p in target.passes)
        print(f"{target.name:14s} {target.description}")
        print(f"{'':14s} passes: {passes}; backend: {target.backend.backend}")
    return 0


def _cmd_options(args: argparse.Namespace) -> int:
    print(options_table(markdown=args.markdown))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    values = planned_values(flag_values(args, PLAN_FLAGS))
    print(_plan(values))
    return 0


def _plan(values: dict) -> Plan:
    from graphopt.call_options import plan_keywords
    from graphopt.pipeline.plan import make_plan, plan_options
    from graphopt.targets import resolve_target

    return make_plan(resolve_target(values["target"]), plan_options(**plan_keywords(values)))


def _cmd_optimize(args: argparse.Namespace) -> int:
    refuse_search_flags_without_goal(args)  # they would be ignored: no plot, no cache
    _check_optimize_outputs(args)
    if args.goals:
        _refuse_call_options_in_a_search(args)
    args = argparse.Namespace(**{**vars(args), **flag_values(args, OPTIMIZE_FLAGS)})  # defaults filled
    result = run_search_command(args) if args.goals else _optimize_once(args)
    if args.output:
        result.export(args.output, measure_latency=args.latency)
    if args.save:
        result.save(args.save)
    print(result.report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        save_file(args.json, result.report.to_json(), "report JSON", WriteError)
    return 0


#: The option flags a ``--goal`` search reads; ``--dump-ir`` is refused by the search with its own reason.
SEARCH_READS = ("target", "goals", "dump_ir")

#: Note key (graphopt.reporting.notes): which data a named model calibrated on (fact ``data``).
MODEL_DATA = "bench:data"


def _refuse_call_options_in_a_search(args: argparse.Namespace) -> None:
    """A search chooses the plan itself (pruning, int8 fall-backs, exits, its data and training: its
    --search-* flags); any other option flag would be ignored, so it is refused."""
    fixed = tuple(o for o in OPTIMIZE_FLAGS if o.name not in SEARCH_READS)
    given = [_flag_name(o) for o in given_flags(args, fixed)]
    if given:
        raise ConfigError(
            f"{', '.join(given)} fix what a --goal search chooses: drop them (the search's candidates are "
            "set by --search-prune, --no-exits and --recovery-epochs), or drop --goal"
        )


def _flag_name(option: Option) -> str:
    assert option.flag is not None
    return option.flag.name


def _optimize_once(args: argparse.Namespace) -> OptimizeResult:
    """One plan on the named model with the data it comes with: a digits model's labelled splits, random
    calibration inputs for a reference architecture (random weights too). A factory's model brings no data,
    and graphopt does not calibrate a real model on noise: int8 targets need the Python API's
    ``calibration_data`` there. Calibration data goes only to plans that read it, and the report says
    where it came from; ``--train-data`` and ``--early-exit`` take the model's own training split and exit
    configuration."""
    from graphopt.api import optimize
    from graphopt.model_spec import parse_shape

    values = flag_values(args, OPTIMIZE_FLAGS)
    plan = _plan(planned_values(values))  # before the model loads: a bad option costs nothing
    reads_calibration = any("calibration_data" in p.needs for p in plan.passes())
    factory = ":" in args.model
    if factory and reads_calibration:
        raise ConfigError(
            f"{values['target']} calibrates int8 on real inputs, and a factory's model comes with none on "
            "the command line: call graphopt.optimize(model, target, example_inputs, calibration_data=...) "
            "from Python, or choose an fp32 target (generic-fp32, arm-fp32)"
        )
    shape = parse_shape(args.input_shape) if args.input_shape else None
    bench = load_bench_model(args.model, input_shape=shape, synthetic_data=not factory, quiet=True)
    values.update(_model_switches(values, bench))
    calibration = bench.calibration if reads_calibration or plan.has("prune_channels") else None
    result = optimize(
        bench.model, example_inputs=bench.example_inputs, calibration_data=calibration, eval_data=bench.eval,
        **values,
    )  # fmt: skip
    if calibration is not None:
        result.report.notes.append(Note(MODEL_DATA, f"data: {bench.data}", data=bench.data))
    return result


def _model_switches(values: dict, bench: BenchModel) -> dict:
    """Each given switch (``--train-data``, ``--early-exit``) as the named model's own piece of data."""
    taken = {}
    for option in OPTIMIZE_FLAGS:
        flag = option.flag
        if flag is None or flag.from_model is None or values[option.name] is not True:
            continue
        taken[option.name] = getattr(bench, flag.from_model)
        if taken[option.name] is None:
            raise ConfigError(
                f"{flag.name} takes {bench.name}'s own {option.name.replace('_', ' ')}, and it has none "
                f"({bench.data}): use a model trained here on labelled data (digits, digits_resnet, "
                f"fashion_resnet), or pass {option.name}=... to graphopt.optimize from Python"
            )
    return taken


def _check_optimize_outputs(args: argparse.Namespace) -> None:
    """Every output path, and the suffixes that choose a backend and the archive format, checked before
    any work: a typo costs a second, not a search's minutes and then an error."""
    from graphopt.artifacts.destination import check_destination
    from graphopt.backends import backend_for

    for option, path in (("--output", args.output), ("--save", args.save), ("--json", args.json),
                         ("--search-plot", args.search_plot)):  # fmt: skip
        if path is not None:
            check_destination(path, option, suffix=".pt2" if option == "--save" else None)
    if args.output is not None:
        backend_for(args.output)


def _cmd_verify(args: argparse.Namespace) -> int:
    from graphopt.verify import DEFAULT_ORT, verify_artifact

    result = verify_artifact(args.artifact, args.arch, ort_version=args.ort or DEFAULT_ORT, quiet=False)
    print(result.summary())
    return 0 if result.ok else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from graphopt.demo import DemoConfig, run_demo

    config = DemoConfig(
        target=args.target,
        epochs=args.epochs,
        prune=args.prune,
        recovery_epochs=args.recovery_epochs,
        early_exit=args.early_exit,
        out_dir=args.out,
        quiet=args.quiet,
    )
    result = run_demo(config)
    print(result.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
