from __future__ import annotations

import json
import re

import pytest

from graphopt.cli import main


def test_passes_and_targets(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "fold_batchnorm" in out and "eliminate_dead_code" in out
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "generic-fp32" in out and "arm-fp32" in out and "fold_batchnorm -> remove_identity" in out


def test_optimize_a_factory(tmp_path, capsys):
    out_path, report_path = tmp_path / "m.onnx", tmp_path / "r.json"
    args = ["--input-shape", "1,3,16,16", "--target", "arm-fp32", "-o", str(out_path)]
    args += ["--json", str(report_path), "--save", str(tmp_path / "m.pt2")]
    code = main(["optimize", "tests.factories:small_cnn", *args])
    assert code == 0
    out = capsys.readouterr().out
    assert "Sequential -> arm-fp32" in out and "folded=1" in out and "artifact:onnx" in out
    assert out_path.is_file() and (tmp_path / "m.pt2").is_file()
    assert json.loads(report_path.read_text())["target"] == "arm-fp32"


def test_optimize_a_zoo_model_with_ir_dump(tmp_path, capsys):
    assert main(["optimize", "mlp", "--dump-ir", str(tmp_path)]) == 0
    assert (tmp_path / "001_fold_batchnorm.txt").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["optimize", "tests.factories:small_cnn"], "--input-shape is required"),
        (["optimize", "tests.factories:small_cnn", "--input-shape", "1,three"], "comma-separated integers"),
        (
            ["optimize", "tests.factories:broken", "--input-shape", "1,3,8,8"],
            "raised RuntimeError: weights file",
        ),
        (["optimize", "tests.factories:nothing", "--input-shape", "1,3,8,8"], "has no callable 'nothing'"),
        (["optimize", "no_such_pkg.mod:f", "--input-shape", "1"], "cannot import 'no_such_pkg.mod'"),
        (["optimize", "resnet9000"], "unknown model 'resnet9000'; known models: .*resnet18"),
        (["optimize", "mlp", "--target", "x"], "unknown target 'x'"),
        (["optimize", "mlp", "--json", "/proc/graphopt-test/r.json", "-o", "/tmp/m.onnx"], "--json .*cannot"),
        (["optimize", "mlp", "--input-shape", "1,3,99999,99999"], r"elements, over .*batch 1"),
        (["verify", __file__], "is not an ONNX model"),
        (["verify", __file__.replace(".py", ".onnx"), "--ort", "0.0.1"], "no ONNX file"),
        (["demo", "--epochs", "-1"], "epochs must be an integer >= 1"),
        (["demo", "--target", "bogus"], "unknown target 'bogus'"),
        (["demo", "--recovery-epochs", "-3"], "recovery_epochs must be an integer >= 0, got -3"),
        (["demo", "--prune", "nan"], r"prune must be a fraction in \[0, 1\), got nan"),
        (["plan", "x86-int8", "--prune", "nan"], r"argument --prune: must be a finite number, got 'nan'"),
        (["plan", "x86-int8", "--prune", "1.5"], r"argument --prune: must be a fraction in \[0, 1\)"),
        (["plan", "x86-int8", "--accuracy-budget", "nan"], "argument --accuracy-budget: must be a finite"),
        (["plan", "x86-int8", "--sparsify", "-1"], r"argument --sparsify: must be a number >= 0"),
    ],
)
def test_errors_are_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.match(r"graphopt( \w+)?: error: ", err) and err.count("\n") == 1  # one line, the command named
    assert re.search(message, err)


def test_third_party_warnings_stay_off_the_terminal_unless_verbose(monkeypatch, caplog):
    """torchao's "Failed to load ..._C_mxfp8...so" and torch's _pytree notes once opened `graphopt bench
    minilm`'s output; graphopt's own warnings still show, and --verbose shows everything."""
    import logging

    from graphopt import cli

    def noisy(args) -> int:
        logging.getLogger("torchao").warning("Failed to load _C_mxfp8.so")
        logging.getLogger("graphopt.search").warning("graphopt's own warning")
        return 0

    monkeypatch.setattr(cli, "_cmd_passes", noisy)
    with caplog.at_level(logging.WARNING):
        assert main(["passes"]) == 0
        quiet = [r.getMessage() for r in caplog.records]
        caplog.clear()
        assert main(["--verbose", "passes"]) == 0
        verbose = [r.getMessage() for r in caplog.records]
    assert quiet == ["graphopt's own warning"]
    assert verbose == ["Failed to load _C_mxfp8.so", "graphopt's own warning"]
    assert logging.getLogger("torchao").level == logging.NOTSET  # main puts the levels back
