"""Bad command-line input and interruptions (issue 38): each used to be accepted, end in a raw exception or
a traceback, or fail only after the long work; now one clear line and a non-zero status, before any work."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import graphopt.benchmark.runner as bench_runner
import graphopt.cli as cli
from graphopt.cli import main
from graphopt.errors import GraphoptError, PassError, TrainingDivergedError, UnknownNameError


@pytest.fixture
def no_long_work(monkeypatch):
    """Every entry into a long step fails the test: a bad flag must be refused before it."""

    def started(*args, **kwargs):
        raise AssertionError("the long work started despite a bad flag")

    monkeypatch.setattr(bench_runner, "run_bench", started)
    monkeypatch.setattr(bench_runner, "load_bench_model", started)
    monkeypatch.setattr(cli, "load_bench_model", started)
    monkeypatch.setattr(cli, "run_search_command", started)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


# -- counts and amounts that argparse refuses ------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "mlp", "--rounds", "0"], "argument --rounds: must be an integer >= 1, got '0'"),
        (["bench", "mlp", "--rounds", "-5"], "argument --rounds: must be an integer >= 1"),
        (["bench", "minilm", "--rounds", "0"], "argument --rounds: must be an integer >= 1"),
        (["bench", "mlp", "--recovery-epochs", "-3"], "argument --recovery-epochs: must be an integer >= 0"),
        (["bench", "mlp", "--round-ms", "nan"], "argument --round-ms: must be a finite number, got 'nan'"),
        (["bench", "mlp", "--round-ms", "inf"], "argument --round-ms: must be a finite number"),
        (["bench", "mlp", "--round-ms", "0"], "argument --round-ms: must be a number > 0"),
        (["bench", "mlp", "--calibration-samples", "0"], "--calibration-samples: must be an integer >= 1"),
        (["bench", "mlp", "--seed", "-1"], "argument --seed: must be an integer >= 0"),
        (["bench-compare", "a.json", "b.json", "--tolerance", "nan"], "--tolerance: must be a finite"),
        (["bench-compare", "a.json", "b.json", "--tolerance", "-1"], "--tolerance: must be a number >= 0"),
        (["bench"], "the following arguments are required: model"),
    ],
    ids=["rounds-0", "rounds-negative", "minilm-rounds-0", "recovery-epochs-negative", "round-ms-nan",
         "round-ms-inf", "round-ms-0", "calibration-samples-0", "seed-negative", "tolerance-nan",
         "tolerance-negative", "missing-model"],
)  # fmt: skip
def test_bad_counts_and_amounts_are_one_line_before_any_work(argv, message, capsys, no_long_work):
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"graphopt {argv[0]}: error: ") and message in err and "--help" in err


def test_bench_rounds_zero_is_refused_not_replaced_by_the_default(no_long_work):
    """The regression of a8a2c6e: ``args.rounds or 100`` turned 0 into 100 rounds (the default is None so
    that minilm can default to 15). The API refuses it too."""
    from graphopt.benchmark.pipelines import parse_pipeline
    from graphopt.errors import ConfigError

    assert main(["bench", "mlp", "--rounds", "0"]) == 2
    for bad in ({"rounds": 0}, {"round_ms": float("nan")}, {"recovery_epochs": -3}, {"seed": -1}):
        with pytest.raises(ConfigError, match="must be"):
            bench_runner.BenchConfig(model="mlp", pipelines=(parse_pipeline("generic-fp32"),), **bad)


# -- output paths, checked before the run ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "mlp", "--out", "{file}"], r"--out .*bench\.json cannot be created: .* is a file, not"),
        (["bench", "mlp", "--seed", "1", "--seed", "2", "--out", "{file}"], r"seeds\.json cannot be created"),
        (["bench", "minilm", "--out", "{file}"], r"bench\.json cannot be created"),
        (["bench-seeds", "{file}", "--out", "{file}"], r"seeds\.json cannot be created"),
        (["optimize", "mlp", "-o", "{tmp}/m.txt"], r"cannot tell the backend from suffix '\.txt'"),
        (["optimize", "mlp", "--save", "{tmp}/m.onnx"], r"--save .*m\.onnx must end in \.pt2"),
        (["optimize", "mlp", "--goal", "speedup>=2", "-o", "{tmp}/m.txt"], "cannot tell the backend"),
    ],
    ids=["bench-out-file", "bench-seeds-out-file", "minilm-out-file", "bench-seeds-cmd-out-file",
         "optimize-output-suffix", "optimize-save-suffix", "search-output-suffix"],
)  # fmt: skip
def test_output_paths_that_cannot_work_fail_before_any_work(argv, message, tmp_path, capsys, no_long_work):
    (tmp_path / "file").write_text("not a folder")
    argv = [a.format(file=tmp_path / "file", tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert err.startswith("graphopt: error: ")
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# -- a factory module that raises while it is imported ---------------------------------------------------
@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise RuntimeError('no GPU here')\n", "raised RuntimeError: no GPU here"),
        ("def f(:\n", "raised SyntaxError"),
        ("import sys\nsys.exit(3)\n", "raised SystemExit: 3"),
    ],
    ids=["runtime-error", "syntax-error", "sys-exit"],
)
def test_a_factory_module_that_raises_at_import_is_one_line(source, message, tmp_path, monkeypatch, capsys):
    name = f"graphopt_test_factory_{abs(hash(source))}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["optimize", f"{name}:build", "--input-shape", "1,3,8,8"]) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"graphopt: error: importing '{name}' for '{name}:build' ") and message in err


# -- every GraphoptError that reaches main ----------------------------------------------------------------
def _every_graphopt_error() -> list[GraphoptError]:
    special = {
        UnknownNameError: ("target", "bogus", ["x86-int8"]),
        PassError: ("fold_batchnorm", ["capture"], "shapes differ"),
        TrainingDivergedError: ("loss became NaN",),
    }
    found, queue = [], [GraphoptError]
    while queue:
        kind = queue.pop()
        queue += kind.__subclasses__()
        found.append(kind(*special.get(kind, (f"{kind.__name__} raised on purpose",))))
    return found


@pytest.mark.parametrize("error", _every_graphopt_error(), ids=lambda e: type(e).__name__)
def test_every_graphopt_error_reaching_main_is_one_line_and_status_2(error, monkeypatch, capsys):
    def fails(args):
        raise error

    monkeypatch.setattr(cli, "_cmd_targets", fails)
    assert main(["targets"]) == 2
    assert _one_line_error(capsys) == f"graphopt: error: {error}\n"


# -- interruptions -------------------------------------------------------------------------------------------
def test_ctrl_c_in_main_is_one_line_and_status_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_passes", interrupted)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["passes"]) == 130
    assert capsys.readouterr().err == "graphopt: interrupted\n"
    assert signal.getsignal(signal.SIGTERM) is before  # main's SIGTERM handler does not outlive it


# A graphopt command whose first step writes a staged file and then takes long: it writes `ready` once the
# staging folder exists, so the test signals it exactly inside the `with StagedFile` block.
_SLOW_COMMAND = """
import signal, sys, time
from pathlib import Path
import graphopt.cli as cli
from graphopt.artifacts.destination import StagedFile

# An interactive terminal delivers Ctrl-C; a test runner started in the background may have SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
ready, out = Path(sys.argv[1]), Path(sys.argv[2])

def slow_load_model(*args, **kwargs):
    with StagedFile(out / "m.onnx") as staged:
        staged.path.write_bytes(b"half written")
        ready.write_text("staged")
        time.sleep(120)

cli.load_bench_model = slow_load_model
raise SystemExit(cli.main(["optimize", "tests.factories:small_cnn", "--input-shape", "1,3,8,8"]))
"""


#: Each signal, the status and the last line it must give.
_SIGNALS = {signal.SIGINT: (130, "graphopt: interrupted"), signal.SIGTERM: (143, "graphopt: terminated")}


def test_a_signalled_command_unwinds_without_a_traceback_or_staging_folder(tmp_path):
    """Ctrl-C and SIGTERM, each to its own command; both start at once (each start imports torch)."""
    runs = {}
    for signum in _SIGNALS:
        ready, out = tmp_path / f"ready-{signum}", tmp_path / f"out-{signum}"
        out.mkdir()
        command = [sys.executable, "-c", _SLOW_COMMAND, str(ready), str(out)]
        proc = subprocess.Popen(command, cwd=Path(__file__).parents[1], stderr=subprocess.PIPE, text=True)
        runs[signum] = (proc, ready, out)
    try:
        for signum, (proc, ready, out) in runs.items():
            while not ready.exists():
                assert proc.poll() is None, proc.communicate()[1]
                time.sleep(0.05)
            assert [p.name.startswith(".m.onnx.") for p in out.iterdir()] == [True]  # inside the `with`
            proc.send_signal(signum)
        for signum, (proc, _, out) in runs.items():
            _, err = proc.communicate(timeout=60)  # a guard against a hang, not a timing
            status, line = _SIGNALS[signum]
            assert proc.returncode == status, err
            assert "Traceback" not in err and err.strip().splitlines()[-1] == line, err
            assert list(out.iterdir()) == []  # the staging folder went with the `with` block
    finally:
        for proc, _, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
