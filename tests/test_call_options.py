"""Each option of ``optimize()`` is declared once (:mod:`graphopt.call_options`): the API's signature and
docstring, the driver's call, the planner, both CLI commands, the bench's pipeline tokens and the docs take
exactly what the table declares."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

import graphopt
from graphopt.benchmark.pipelines import FLAGS, USAGE, VALUE_TOKENS, Pipeline, parse_pipeline
from graphopt.call_options import (
    BENCH_TOKENS,
    OPTIMIZE_FLAGS,
    OPTIONS,
    PLAN_FLAGS,
    fraction,
    options_table,
    plan_keywords,
)
from graphopt.cli import _parser, main
from graphopt.errors import ConfigError, UnknownNameError
from graphopt.pipeline.driver import OptimizeCall
from graphopt.pipeline.plan import plan_options

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: OptimizeCall fields that are the driver's, not optimize() options (a fake timing service in tests, ...).
DRIVER_ONLY = {"timing", "training"}


def test_the_signature_is_the_registry_in_order_with_its_defaults():
    parameters = list(inspect.signature(graphopt.optimize).parameters.values())[1:]  # after the model
    assert [p.name for p in parameters] == [o.name for o in OPTIONS]
    assert {p.name: p.default for p in parameters} == {o.name: o.default for o in OPTIONS}


def test_the_driver_call_has_a_field_per_option_the_driver_reads():
    fields = {f.name for f in dataclasses.fields(OptimizeCall)} - {"model"} - DRIVER_ONLY
    assert fields == {o.name for o in OPTIONS if o.to_call is not None}
    defaults = {f.name: f.default for f in dataclasses.fields(OptimizeCall) if f.name in fields}
    assert defaults == {o.name: o.default for o in OPTIONS if o.name in fields}


def test_the_planner_takes_exactly_the_declared_plan_keywords():
    declared = {o.plan.keyword: o for o in OPTIONS if o.plan is not None and o.plan.keyword is not None}
    parameters = inspect.signature(plan_options).parameters
    assert set(parameters) == set(declared)
    for keyword, option in declared.items():  # an option's default plans nothing
        assert option.plan.of(option.default) == parameters[keyword].default, keyword


def test_plan_keywords_turn_data_into_its_presence():
    keywords = plan_keywords({"train_data": [], "prune": 0.5})
    assert keywords["has_train_data"] is True and keywords["prune"] == 0.5 and keywords["passes"] is None
    assert plan_keywords({})["has_train_data"] is False


def test_the_docstring_lists_every_option_with_its_default():
    doc = inspect.getdoc(graphopt.optimize)
    assert "{options}" not in doc
    args = " ".join(doc.split("Args:")[1].split())  # the entries, wrapped lines joined
    for option in OPTIONS:
        assert f" {option.name} ({option.type}, default ``{option.default!r}``): {option.doc}." in args


def test_every_doc_line_is_one_line_and_every_flag_and_token_is_unique():
    assert all("\n" not in o.doc and not o.doc.endswith(".") for o in OPTIONS)
    flags = [o.flag.name for o in OPTIONS if o.flag is not None]
    assert len(flags) == len(set(flags)) and len(BENCH_TOKENS) == len([o for o in OPTIONS if o.bench_token])


def _flags(command: str) -> set[str]:
    sub = next(a for a in _parser()._actions if a.choices and command in a.choices)
    parser = sub.choices[command]
    return {s for a in parser._actions for s in a.option_strings} | {
        a.dest for a in parser._actions if not a.option_strings
    }


def test_plan_takes_every_plan_flag_and_optimize_every_flag():
    plan, optimize = _flags("plan"), _flags("optimize")
    plan_forms = {"target"} | {o.flag.name for o in PLAN_FLAGS if o.name != "target"}
    assert plan_forms <= plan
    assert {o.flag.name for o in OPTIMIZE_FLAGS} <= optimize
    assert {f for f in plan if f.startswith("--")} - {"--help"} <= optimize  # issue 39: plan ⊆ optimize


def test_a_flag_only_parses_plain_text():
    """Nothing on the command line becomes code: every flag parses text into numbers, names or paths."""
    for option in OPTIMIZE_FLAGS:
        assert option.flag.parse in (None, str, Path, fraction) or option.flag.parse.__module__ in (
            "graphopt.call_options",
            "graphopt.model_spec",
        ), option.name
    assert {o.name for o in OPTIONS if o.flag is None} >= {"instruments", "recovery", "calibration_data"}


def test_bench_tokens_are_the_declared_ones():
    assert set(BENCH_TOKENS) == {"prune", "sparsify", "early-exit"}
    assert set(VALUE_TOKENS) == {"prune", "sparsify"} and FLAGS["early-exit"] == "early_exit"
    assert all(o.flag.parse is fraction for o in VALUE_TOKENS.values())  # Pipeline checks fractions
    assert {o.name for o in BENCH_TOKENS.values()} <= {f.name for f in dataclasses.fields(Pipeline)}
    assert USAGE == "TARGET[+prune=R][+sparsify=S][+early-exit][+labels-only]"
    pipeline = parse_pipeline("x86-int8+prune=0.5+sparsify=0.25+early-exit")
    assert (pipeline.prune, pipeline.sparsify, pipeline.early_exit) == (0.5, 0.25, True)
    assert pipeline.label == "x86-int8+prune=0.5+sparsify=0.25+early-exit"
    with pytest.raises(ConfigError, match=r"prune must be a fraction in \[0, 1\), got 1.5"):
        parse_pipeline("x86-int8+prune=1.5")


def test_the_api_doc_has_the_generated_option_table():
    table = options_table(markdown=True)
    assert table in (DOCS / "api.md").read_text(), (
        "run `graphopt options --markdown` and paste it in docs/api.md"
    )


def test_graphopt_options_prints_the_registry(capsys):
    assert main(["options"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == [o.name for o in OPTIONS]
    assert "--accuracy-budget" in lines[[o.name for o in OPTIONS].index("accuracy_budget") + 1]


def test_plan_takes_the_new_flags(capsys):
    argv = ["plan", "x86-int8", "--passes", "fold_batchnorm,insert_fake_quant,calibrate", "--train-data",
            "--early-exit", "--accuracy-budget", "1"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["cleanup", "int8", "int8_budget", "training", "exits"]
    assert "from passes=" in lines[1]


def test_a_flag_given_as_zero_is_given(capsys):
    """``--accuracy-budget 0`` (no accuracy may be lost) parses to 0.0, which equals False: it once read as
    "not given" and the budget slot vanished from the plan."""
    assert main(["plan", "x86-int8", "--accuracy-budget", "0"]) == 0
    slots = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert "int8_budget" in slots


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["plan", "x86-int8", "--passes", "a.b:c"], "argument --passes: must be comma-separated pass names"),
        (["optimize", "mlp", "--steps", "0"], "argument --steps: must be an integer >= 1"),
        (["plan", "x86-int8", "--steps", "2"], "unrecognized arguments: --steps 2"),  # plans nothing
    ],
)
def test_bad_new_flags_are_refused_in_one_line(argv, error, capsys):
    assert main(argv) == 2
    assert error in capsys.readouterr().err


def test_an_unknown_pass_name_is_refused_with_the_known_ones(capsys):
    assert main(["plan", "generic-fp32", "--passes", "fold_batchnorm,no_such_pass"]) == 2
    assert "unknown pass 'no_such_pass'; known passes:" in capsys.readouterr().err
    with pytest.raises(UnknownNameError):
        plan_options(passes=("no_such_pass",))


def test_optimize_takes_steps_and_passes(capsys):
    assert main(["optimize", "mlp", "--passes", "remove_identity,eliminate_dead_code", "--steps", "2"]) == 0
    report = capsys.readouterr().out
    assert "eliminate_dead_code" in report and "fold_batchnorm" not in report


@pytest.mark.parametrize("flag", ["--train-data", "--early-exit"])
def test_a_switch_the_model_has_no_data_for_is_refused(flag, capsys):
    assert main(["optimize", "mlp", flag]) == 2
    err = capsys.readouterr().err
    assert f"{flag} takes mlp's own" in err and "graphopt.optimize from Python" in err


def test_graphopt_optimize_takes_the_options_graphopt_plan_takes(tmp_path, capsys):
    """Once only `graphopt plan` took --prune; `graphopt optimize` ran without it."""
    out = tmp_path / "m.onnx"
    assert main(["optimize", "resnet_basic", "--target", "x86-int8", "--prune", "0.5", "-o", str(out)]) == 0
    report = capsys.readouterr().out
    assert "prune_channels" in report and "calibrate" in report and out.is_file()


@pytest.mark.parametrize("flag", [["--prune", "0.5"], ["--steps", "2"], ["--train-data"]])
def test_a_search_refuses_options_it_chooses_itself(flag, capsys):
    assert main(["optimize", "digits_resnet", "--goal", "size<=1MB", *flag]) == 2
    assert f"{flag[0]} fix what a --goal search chooses" in capsys.readouterr().err


def test_a_factory_model_is_not_calibrated_on_noise(capsys):
    """The CLI has no data for a factory's model: int8 is refused with the way to give real inputs."""
    argv = ["optimize", "tests.factories:small_cnn", "--input-shape", "1,3,8,8", "--target", "x86-int8"]
    assert main(argv) == 2
    assert "calibration_data=" in capsys.readouterr().err


def test_an_fp32_run_gets_no_data_it_does_not_read(capsys):
    assert main(["optimize", "mlp", "--target", "generic-fp32"]) == 0
    out = capsys.readouterr().out
    assert "no pass read it" not in out and "note: data:" not in out


def test_optimize_switches_take_the_named_models_own_data(monkeypatch, capsys):
    """``--train-data`` / ``--early-exit`` hand optimize() the model's own split and exit configuration."""
    import graphopt.api
    import graphopt.cli as cli
    from graphopt.benchmark.models import BenchModel

    train, exits = [("x", "y")], graphopt.EarlyExitConfig(epochs=1)
    bench = BenchModel("m", object(), (), "test data", train=train, early_exit=exits)
    monkeypatch.setattr(cli, "load_bench_model", lambda *a, **k: bench)
    seen = {}

    def recorded(*args, **kwargs):
        seen.update(kwargs)
        raise ConfigError("stopped here")

    monkeypatch.setattr(graphopt.api, "optimize", recorded)
    assert main(["optimize", "m", "--train-data", "--early-exit", "--steps", "3"]) == 2
    assert "stopped here" in capsys.readouterr().err
    assert seen["train_data"] is train and seen["early_exit"] is exits and seen["steps"] == 3
    assert seen["target"] == "generic-fp32" and seen["goals"] is None
