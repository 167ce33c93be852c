"""Each plan-shaping option of ``optimize()`` is declared once (:mod:`graphopt.call_options`): the API,
the planner, both CLI commands and the bench's pipeline tokens take exactly what the table declares."""

from __future__ import annotations

import inspect

import pytest

import graphopt
from graphopt.benchmark.pipelines import parse_pipeline
from graphopt.call_options import BENCH_TOKENS, CALL_OPTIONS
from graphopt.cli import _parser, main
from graphopt.pipeline.plan import plan_options


@pytest.mark.parametrize("option", CALL_OPTIONS, ids=lambda o: o.name)
def test_optimize_and_the_planner_take_every_declared_option_with_its_default(option):
    for function in (graphopt.optimize, plan_options):
        parameter = inspect.signature(function).parameters[option.name]
        assert parameter.default == option.default, function.__name__
    assert f"``{option.name}``" in graphopt.optimize.__doc__  # documented where users read


@pytest.mark.parametrize("command", ["plan", "optimize"])
def test_plan_and_optimize_accept_the_same_option_flags(command):
    sub = next(a for a in _parser()._actions if a.dest == "command" or (a.choices and command in a.choices))
    flags = {flag for action in sub.choices[command]._actions for flag in action.option_strings}
    assert {option.flag for option in CALL_OPTIONS} <= flags


def test_bench_tokens_are_the_declared_ones():
    assert set(BENCH_TOKENS) == {"prune", "sparsify"}
    pipeline = parse_pipeline("x86-int8+prune=0.5+sparsify=0.25")
    assert (pipeline.prune, pipeline.sparsify) == (0.5, 0.25)
    with pytest.raises(graphopt.ConfigError, match=r"prune must be a fraction in \[0, 1\), got 1.5"):
        parse_pipeline("x86-int8+prune=1.5")


def test_graphopt_optimize_takes_the_options_graphopt_plan_takes(tmp_path, capsys):
    """Once only `graphopt plan` took --prune; `graphopt optimize` ran without it."""
    out = tmp_path / "m.onnx"
    assert main(["optimize", "resnet_basic", "--target", "x86-int8", "--prune", "0.5", "-o", str(out)]) == 0
    report = capsys.readouterr().out
    assert "prune_channels" in report and "calibrate" in report and out.is_file()


def test_a_search_refuses_options_it_chooses_itself(capsys):
    assert main(["optimize", "digits_resnet", "--goal", "size<=1MB", "--prune", "0.5"]) == 2
    assert "--prune fix what a --goal search chooses" in capsys.readouterr().err


def test_a_factory_model_is_not_calibrated_on_noise(capsys):
    """The CLI has no data for a factory's model: int8 is refused with the way to give real inputs."""
    argv = ["optimize", "tests.factories:small_cnn", "--input-shape", "1,3,8,8", "--target", "x86-int8"]
    assert main(argv) == 2
    assert "calibration_data=" in capsys.readouterr().err


def test_an_fp32_run_gets_no_data_it_does_not_read(capsys):
    assert main(["optimize", "mlp", "--target", "generic-fp32"]) == 0
    out = capsys.readouterr().out
    assert "no pass read it" not in out and "note: data:" not in out
