"""The search's options and its on-disk cache as untrusted input: every bad option is a ConfigError naming
the field before any work; a cache entry that is edited, damaged or malformed is a miss with a note, never
trusted and never a crash; a failed cache write leaves no file and is a note."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import resource
import signal
import sys
from pathlib import Path

import pytest
import torch

import graphopt
from graphopt import ConfigError, Goals, SearchConfig
from graphopt.reporting.notes import notes_with, the_note
from graphopt.search import store as store_module
from graphopt.search.goals import parse_goals
from graphopt.search.measure import Measured
from graphopt.search.store import (
    CACHE_ENTRY_IGNORED,
    CACHE_WRITE_FAILED,
    CHECKS,
    MAX_ENTRY_BYTES,
    CandidateStore,
    _entry_digest,
)

KEY = "0123456789abcdef0123456789abcdef"
ARTIFACT_BYTES = 3000


def _saved(tmp_path: Path) -> tuple[CandidateStore, Path]:
    """A store in ``tmp_path/cache`` holding one candidate (a 3000-byte stand-in artifact: the store
    never parses it), and a work folder for what ``load`` copies out."""
    work = tmp_path / "work"
    work.mkdir()
    artifact = work / "candidate-0.onnx"
    artifact.write_bytes(bytes(range(256)) * 11 + b"x" * (ARTIFACT_BYTES - 256 * 11))
    store = CandidateStore(tmp_path / "cache")
    measured = Measured(artifact, 0.5, 1.0, ARTIFACT_BYTES, 10, 100, 90.0, None, False, False)
    store.save(KEY, measured, 0.25, None, "prune=0 fp32 [onnx]")
    assert store.notes == []
    return store, work


def _edit(store: CandidateStore, change, resign: bool = False) -> None:
    """Apply ``change`` to the stored entry's JSON; ``resign``: recompute its digest as an editor who
    knows the format would, so the field checks behind the digest are what must catch it."""
    path = store.folder / f"{KEY}.json"
    entry = json.loads(path.read_text())
    entry = change(entry) or entry
    if resign and isinstance(entry, dict):
        entry["entry_sha256"] = _entry_digest(entry)
    path.write_text(json.dumps(entry))


def test_a_stored_candidate_reads_back_as_written_and_leaves_no_temporary_file(tmp_path):
    store, work = _saved(tmp_path)
    assert sorted(p.name for p in store.folder.iterdir()) == [f"{KEY}.json", f"{KEY}.onnx"]
    stored = store.load(KEY, work)
    assert stored is not None and store.notes == []
    assert stored.measured.bytes == ARTIFACT_BYTES and stored.accuracy_drop == 0.25
    assert stored.measured.latency_ms == 0.5 and stored.measured.backend == "onnx"
    # what is timed later is a private copy of the checked bytes, not the file in the shared folder
    assert stored.measured.path.parent == work
    assert stored.measured.path.read_bytes() == (store.folder / f"{KEY}.onnx").read_bytes()
    assert store.load("f" * 32, work) is None and store.notes == []  # absent: a plain miss, no note


def _set(section: str, field: str, value):
    def change(entry):
        (entry[section] if section else entry)[field] = value

    return change


def _ignored(store: CandidateStore) -> dict[str, object]:
    """The facts of the one note the store wrote: the entry it ignored, and which check failed where."""
    facts = dict(the_note(store, CACHE_ENTRY_IGNORED).facts)
    assert len(store.notes) == 1 and facts["check"] in CHECKS
    return facts


@pytest.mark.parametrize(
    "change, resign, failed",
    [
        (_set("measured", "bytes", 10), False, {"check": "entry_digest"}),
        (_set("measured", "latency_ms", 1e-9), False, {"check": "entry_digest"}),
        (_set("measured", "bytes", 10), True,
         {"check": "artifact_size", "stored_bytes": 10, "artifact_bytes": ARTIFACT_BYTES}),
        (_set("", "measured", [1, 2]), True, {"check": "not_an_object", "field": "measured"}),
        (_set("measured", "bytes", "big"), True, {"check": "bad_value", "field": "bytes"}),
        (_set("measured", "latency_ms", 0), True, {"check": "bad_value", "field": "latency_ms"}),
        (_set("measured", "latency_ms", 10**400), True, {"check": "bad_value", "field": "latency_ms"}),
        (_set("measured", "accuracy", math.nan), True, {"check": "bad_value", "field": "accuracy"}),
        (_set("measured", "backend", "../../x"), True, {"check": "bad_value", "field": "backend"}),
        (_set("measured", "exits", "no"), True, {"check": "bad_value", "field": "exits"}),
        (_set("", "accuracy_drop", 1e9), True, {"check": "bad_value", "field": "accuracy_drop"}),
        (_set("", "key", "f" * 32), True, {"check": "other_candidate"}),
        (_set("", "schema", 1), True, {"check": "schema"}),
        (lambda entry: {**entry, "measured": {"bytes": 10}}, True, {"check": "fields", "field": "measured"}),
        (lambda entry: [1, 2, 3], False, {"check": "not_an_object"}),
    ],
)  # fmt: skip
def test_an_edited_or_malformed_entry_is_a_miss_with_a_note(tmp_path, change, resign, failed):
    store, work = _saved(tmp_path)
    _edit(store, change, resign)
    assert store.load(KEY, work) is None
    assert _ignored(store) == {"entry": f"{KEY}.json", **failed}


@pytest.mark.parametrize(
    "damage, failed",
    [
        (lambda a, e: a.write_bytes(a.read_bytes()[:1000]),
         {"check": "artifact_size", "stored_bytes": ARTIFACT_BYTES, "artifact_bytes": 1000}),
        (lambda a, e: a.write_bytes(b"\0" * ARTIFACT_BYTES), {"check": "artifact_digest"}),
        (lambda a, e: a.unlink(), {"check": "unreadable", "part": "artifact"}),
        # a pipe would block a reader forever
        (lambda a, e: (a.unlink(), os.mkfifo(a)), {"check": "not_plain_file", "part": "artifact"}),
        (lambda a, e: e.write_text(e.read_text()[:60]), {"check": "not_json"}),
        (lambda a, e: e.write_bytes(b"\xff\xfe garbage"), {"check": "not_json"}),
        (lambda a, e: e.write_text(" " * (MAX_ENTRY_BYTES + 1)), {"check": "entry_too_large"}),
        (lambda a, e: (e.unlink(), e.mkdir()), {"check": "not_plain_file", "part": "entry"}),
    ],
)  # fmt: skip
def test_a_damaged_artifact_or_entry_file_is_a_miss_with_a_note(tmp_path, damage, failed):
    store, work = _saved(tmp_path)
    damage(store.folder / f"{KEY}.onnx", store.folder / f"{KEY}.json")
    assert store.load(KEY, work) is None
    assert _ignored(store) == {"entry": f"{KEY}.json", **failed}
    assert not (work / f"cached-{KEY}.onnx").exists()  # a rejected copy is not left for timing


def test_an_edited_cache_entry_is_measured_again_in_a_search_and_the_report_says_so(tmp_path):
    """The issue's case: a 3 kB candidate stored as "10 B" must not meet size<=2kB."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    config = SearchConfig(
        prune_ratios=(0.0,), int8=("off",), exits=(False,), cache_dir=tmp_path / "cache", quiet=True
    )

    example = (torch.randn(1, 16),)

    def search():
        return graphopt.optimize(model, "generic-fp32", example, goals=Goals(max_bytes=2_000), search=config)

    first = search()
    real_bytes = first.search.chosen.measured.bytes
    assert real_bytes > 2_000
    (entry_path,) = (tmp_path / "cache").glob("*.json")
    entry = json.loads(entry_path.read_text())
    entry["measured"]["bytes"] = 10
    entry_path.write_text(json.dumps(entry))
    second = search()
    (row,) = second.search.table()
    assert row["status"] == "measured" and row["bytes"] == real_bytes and row["goals"] != "met"
    assert not second.search.meets_goals
    ignored = [n.facts for n in notes_with(second.report, CACHE_ENTRY_IGNORED)]
    assert ignored == [{"entry": entry_path.name, "check": "entry_digest"}]
    # the fresh measurement replaced the bad entry
    store = CandidateStore(tmp_path / "cache")
    stored = store.load(entry_path.stem, tmp_path)
    assert stored is not None and stored.measured.bytes == real_bytes and store.notes == []


def test_cached_artifacts_are_never_loaded_before_their_plan_rebuilds_them(tmp_path, monkeypatch):
    """The digests do not stop someone who recomputes them, so a file from the cache is never run: cached
    finalists are not timed again, and the returned one is rebuilt and compared byte for byte first."""
    from graphopt.backends import onnx_backend

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    config = SearchConfig(prune_ratios=(0.0, 0.5), int8=("off",), exits=(False,), cache_dir=tmp_path / "c",
                          quiet=True)  # fmt: skip
    example = (torch.randn(1, 16),)
    graphopt.optimize(model, "generic-fp32", example, goals=Goals(max_bytes=10**6), search=config)
    loaded: list[str] = []
    real_init = onnx_backend.OnnxRunner.__init__

    def recording(self, path, *args, **kwargs):
        loaded.append(str(path))
        real_init(self, path, *args, **kwargs)

    monkeypatch.setattr(onnx_backend.OnnxRunner, "__init__", recording)
    again = graphopt.optimize(model, "generic-fp32", example, goals=Goals(max_bytes=10**6), search=config)
    assert {row["status"] for row in again.search.table()} == {"cached"}
    cache = str(tmp_path / "c")
    assert not [p for p in loaded if p.startswith(cache) or "cached-" in Path(p).name], loaded


def test_a_full_disk_while_caching_is_a_note_and_leaves_no_partial_file(tmp_path, monkeypatch):
    store, _ = _saved(tmp_path)
    for path in store.folder.iterdir():
        path.unlink()
    real = store_module._copy_hashing

    def half_then_enospc(source, f, limit=None):
        f.write(source.read_bytes()[:1000])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "_copy_hashing", half_then_enospc)
    measured = Measured(tmp_path / "work" / "candidate-0.onnx", 0.5, 1.0, ARTIFACT_BYTES, 1, 1, None, None,
                        False, False)  # fmt: skip
    store.save(KEY, measured, None, None, "prune=0 int8 [onnx]")
    assert list(store.folder.iterdir()) == []
    failed = the_note(store, CACHE_WRITE_FAILED).facts
    assert failed == {"label": "prune=0 int8 [onnx]", "errno": errno.ENOSPC}
    # the JSON written after the artifact fails: the artifact it would have named goes too
    monkeypatch.setattr(store_module, "_copy_hashing", real)

    def refused(*args):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(store_module, "_atomic_write", refused)
    store.save(KEY, measured, None, None)
    assert list(store.folder.iterdir()) == [] and len(store.notes) == 2
    assert notes_with(store, CACHE_WRITE_FAILED)[1].facts["errno"] == errno.EACCES


def test_a_file_size_limit_while_caching_is_a_note_and_leaves_no_partial_file(tmp_path):
    """A real EFBIG: the process may not write past 1000 bytes (SIGXFSZ ignored, so write fails)."""
    store, _ = _saved(tmp_path)
    for path in store.folder.iterdir():
        path.unlink()
    measured = Measured(tmp_path / "work" / "candidate-0.onnx", 0.5, 1.0, ARTIFACT_BYTES, 1, 1, None, None,
                        False, False)  # fmt: skip
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, limits[1]))
        store.save(KEY, measured, None, None)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert list(store.folder.iterdir()) == []
    assert the_note(store, CACHE_WRITE_FAILED).facts["errno"] == errno.EFBIG


def test_a_cache_folder_that_cannot_be_written_is_refused_up_front(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=f"search cache folder {blocker / 'cache'} cannot be written"):
        CandidateStore(blocker / "cache")

    def read_only(*args, **kwargs):  # what a read-only folder does to a writer (root writes anyway)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(store_module.tempfile, "mkstemp", read_only)
    with pytest.raises(ConfigError, match="cannot be written \\(Permission denied\\): give a folder"):
        CandidateStore(tmp_path / "ro")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder_is_refused_up_front(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="cannot be written"):
            CandidateStore(folder)
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize(
    "field, value, phrase",
    [
        ("prune_ratios", "0.5", "prune_ratios must be a non-empty tuple"),
        ("prune_ratios", 0.5, "prune_ratios must be a non-empty tuple"),
        ("prune_ratios", (math.nan,), "prune_ratios must be fractions in \\[0, 1\\)"),
        ("prune_ratios", ("a",), "prune_ratios must be fractions"),
        ("prune_ratios", (True,), "prune_ratios must be fractions"),
        ("importances", ("bogus",), "importances: 'bogus' is not one of 'l1', 'l2'"),
        ("importances", "l2", "importances must be a non-empty tuple"),
        ("importances", (), "importances must be a non-empty tuple: an empty one leaves nothing to search"),
        ("int8", "on", "int8 must be a non-empty tuple"),
        ("int8", ("int4",), "int8: 'int4' is not one of"),
        ("exits", True, "exits must be a non-empty tuple"),
        ("exits", (1,), "exits: 1 is not one of False, True"),
        ("backends", "onnx", "backends must be a non-empty tuple"),
        ("backends", ("tflite-ish",), "backends: 'tflite-ish' is not one of 'onnx'"),
        ("max_candidates", 2.5, "max_candidates must be a whole number >= 1, e.g. 24; got 2.5"),
        ("max_candidates", True, "max_candidates must be a whole number"),
        ("max_candidates", 0, "max_candidates must be a whole number"),
        ("max_minutes", math.nan, "max_minutes must be a finite number of minutes > 0, e.g. 20.0; got nan"),
        ("max_minutes", math.inf, "max_minutes must be a finite number"),
        ("max_minutes", "5", "max_minutes must be a finite number"),
        ("max_minutes", -1, "max_minutes must be a finite number"),
        ("tie_break", "fastest", "tie_break is 'speed', 'accuracy' or 'size'"),
        ("cache_dir", 5, "cache_dir must be a folder path"),
        ("cache_dir", "", "cache_dir must be a folder path"),
        ("tune_share", "0.5", "tune_share must be a fraction in \\(0, 1\\), e.g. 0.5"),
        ("tune_share", math.nan, "tune_share must be a fraction"),
        ("quiet", "no", "quiet must be True or False"),
        ("reuse", 5, "reuse must be the .search of an earlier search's result"),
        ("early_exit", {"fractions": (0.3,)}, "early_exit must be a graphopt.EarlyExitConfig"),
    ],
)  # fmt: skip
def test_every_search_option_is_checked_and_the_error_names_it(field, value, phrase):
    assert phrase.startswith(field)
    with pytest.raises(ConfigError, match=f"SearchConfig\\.{phrase}"):
        SearchConfig(**{field: value})


def test_sequences_of_options_are_kept_as_tuples():
    config = SearchConfig(prune_ratios=[0, 0.5], importances=["l1"], int8=["on"], exits=[False])
    assert config.prune_ratios == (0.0, 0.5) and config.importances == ("l1",) and config.int8 == ("on",)
    hash(config)  # a frozen config stays hashable


@pytest.mark.parametrize(
    "kwargs, phrase",
    [
        ({"max_bytes": 10**400}, "max_bytes must be a whole number of bytes in \\[1, 2\\*\\*63 - 1\\]"),
        ({"max_bytes": 2.5}, "max_bytes must be a whole number of bytes"),
        ({"max_bytes": math.inf}, "max_bytes must be a whole number of bytes"),
        ({"max_bytes": "2MB"}, "max_bytes must be a whole number of bytes"),
        ({"min_speedup": 10**400}, "min_speedup must be a finite number or None, e.g. min_speedup=3.0"),
        ({"min_speedup": math.inf}, "min_speedup must be a finite number"),
        ({"min_speedup": 0}, "min_speedup must be > 0"),
        ({"max_accuracy_drop": math.nan}, "max_accuracy_drop must be a finite number"),
        ({"max_accuracy_drop": -1}, "max_accuracy_drop is in percentage points of accuracy, in \\[0, 100\\]"),
        ({"max_accuracy_drop": 150}, "max_accuracy_drop is in percentage points"),
        ({"max_accuracy_drop": True}, "max_accuracy_drop must be a finite number"),
    ],
)  # fmt: skip
def test_every_goal_is_checked_and_the_error_names_it(kwargs, phrase):
    with pytest.raises(ConfigError, match=f"Goals.{phrase}"):
        Goals(**kwargs)


def test_a_whole_float_byte_goal_is_taken_as_that_many_bytes():
    assert Goals(max_bytes=2e6).max_bytes == 2_000_000 and str(Goals(max_bytes=2e6)) == "size <= 2 MB"


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("size<=1" + "0" * 400, "the limit is too large to be a goal \\(e.g. size<=2MB\\)"),
        ("speedup>=1" + "0" * 400, "the limit is too large to be a goal \\(e.g. speedup>=3\\)"),
        ("size<=99999999999GB", "the limit is too large"),
        (5, "a goal is a string like 'speedup>=3'"),
    ],
)  # fmt: skip
def test_a_goal_too_large_to_be_a_number_is_one_clear_error(text, phrase):
    with pytest.raises(ConfigError, match=phrase):
        parse_goals([text])


def test_an_int8_search_without_calibration_data_is_refused_up_front():
    from graphopt.pipeline.driver import OptimizeCall
    from graphopt.search.engine import check_int8_data
    from graphopt.targets import resolve_target

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ConfigError, match=r"no calibration_data was given: pass calibration_data=\.\.\."):
        graphopt.optimize(model, "x86-int8", (torch.randn(1, 4),), goals=Goals(max_bytes=10**6))
    call = OptimizeCall(model, "x86-int8", (torch.randn(1, 4),))
    check_int8_data(call, SearchConfig(int8=("off",)), resolve_target("x86-int8"))  # fp32 only: fine
    check_int8_data(call, SearchConfig(), resolve_target("x86-dynamic-int8"))  # no calibration pass


def _cli(argv, capsys) -> tuple[int, str]:
    from graphopt.cli import main

    code = main(["optimize", "resnet_basic", "--goal", "size<=40kB", "--quiet", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["--recovery-epochs", "-3"], "--recovery-epochs must be >= 0"),
        (["--max-minutes", "nan"], "SearchConfig.max_minutes must be a finite number"),
        (["--max-candidates", "0"], "SearchConfig.max_candidates must be a whole number >= 1"),
        (["--search-prune", "0,1.5"], "--search-prune must be comma-separated fractions in \\[0, 1\\)"),
        (["--search-prune", "0,nan"], "--search-prune must be comma-separated fractions"),
        (["--search-weight-bits", "8,four"], "--search-weight-bits must be comma-separated widths like 8,4"),
        (["--search-weight-bits", "8,1"], "SearchConfig.weight_bits: 1 is not one of 2, 3"),
        (["--search-int8", "on,better"], "SearchConfig.int8: 'better' is not one of 'off', 'on', 'improved'"),
        (["--goal", "size<=1" + "0" * 400], "the limit is too large"),
    ],
)  # fmt: skip
def test_bad_search_arguments_on_the_command_line_fail_before_any_work(argv, phrase, capsys, monkeypatch):
    import graphopt.benchmark.models as models

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_bench_model", no_work)
    code, err = _cli(argv, capsys)
    assert code == 2 and re.search(phrase, err), err


def test_an_unwritable_search_cache_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import graphopt.benchmark.models as models

    monkeypatch.setattr(models, "load_bench_model", lambda *a, **k: pytest.fail("the model was loaded"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _cli(["--search-cache", str(blocker / "cache")], capsys)
    assert code == 2 and f"search cache folder {blocker / 'cache'} cannot be written" in err


def test_the_plot_advice_without_matplotlib_fits_the_caller(tmp_path, capsys, monkeypatch):
    import graphopt.benchmark.models as models
    from graphopt.benchmark.plot import pyplot
    from graphopt.search.plot import WITHOUT_PLOT

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setattr(models, "load_bench_model", lambda *a, **k: pytest.fail("the model was loaded"))
    code, err = _cli(["--search-plot", str(tmp_path / "front.png")], capsys)
    assert code == 2 and "(or drop --search-plot)" in err and "--no-plot" not in err
    with pytest.raises(ConfigError, match="or pass --no-plot"):  # graphopt bench has that flag
        pyplot()
    assert "--" not in WITHOUT_PLOT  # the API has no flag to drop


def test_search_flags_without_a_goal_are_refused_not_ignored():
    import argparse

    from graphopt.search.cli import add_search_arguments, refuse_search_flags_without_goal

    parser = argparse.ArgumentParser()
    add_search_arguments(parser)
    with pytest.raises(ConfigError, match="--search-plot, --search-cache only apply to a search: add --goal"):
        refuse_search_flags_without_goal(parser.parse_args(["--search-plot", "p.png", "--search-cache", "c"]))
    refuse_search_flags_without_goal(parser.parse_args([]))  # nothing given: nothing to refuse
    refuse_search_flags_without_goal(parser.parse_args(["--goal", "size<=1MB", "--max-minutes", "5"]))
