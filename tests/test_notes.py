"""Keyed report notes: a note is its sentence for a person and a key with facts for a test or a tool; the
key and facts survive every way a note travels (lists, copies, pickling, asdict, JSON keeps the sentence)."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import pytest

from graphopt.reporting.notes import Note, for_pipeline, note_keys, notes_with, the_note
from graphopt.reporting.report import Report, StageRecord

KEPT = "accuracy_budget:kept_fp32"


def _note() -> Note:
    return Note(KEPT, "accuracy_budget: kept in fp32: features.7", layers=("features.7",))


def test_a_note_is_its_sentence_with_a_key_and_read_only_facts():
    note = _note()
    assert note == "accuracy_budget: kept in fp32: features.7" and isinstance(note, str)
    assert note.key == KEPT and note.facts["layers"] == ("features.7",)
    assert f"note: {note}" == "note: accuracy_budget: kept in fp32: features.7"
    with pytest.raises(TypeError):
        note.facts["layers"] = ()  # type: ignore[index]


@pytest.mark.parametrize("key", ["kept", "Accuracy:kept", "accuracy budget:kept", "a:", ":b", ""])
def test_a_key_without_source_and_fact_is_refused_with_the_grammar(key):
    with pytest.raises(ValueError, match="<source>:<fact>"):
        Note(key, "text")


@pytest.mark.parametrize(
    "travel",
    [copy.copy, copy.deepcopy, lambda n: pickle.loads(pickle.dumps(n))],
    ids=["copy", "deep", "pickle"],
)
def test_key_and_facts_survive_copies_and_pickling(travel):
    again = travel(_note())
    assert isinstance(again, Note) and (again, again.key, dict(again.facts)) == (
        _note(), KEPT, {"layers": ("features.7",)}
    )  # fmt: skip


def test_a_stage_row_keeps_its_keys_through_asdict_and_writes_sentences_to_json():
    row = StageRecord("accuracy_budget", "pass", 1, 1, 1, notes=[_note(), "a plain sentence"])
    assert note_keys(dataclasses.asdict(row)["notes"]) == [KEPT]
    assert json.loads(json.dumps(row.notes)) == [
        "accuracy_budget: kept in fp32: features.7",
        "a plain sentence",
    ]


def test_queries_read_reports_rows_and_lists_and_skip_plain_sentences():
    report = Report("M", "generic-fp32", notes=["plain", _note(), Note("search:reused", "reused")])
    assert note_keys(report) == [KEPT, "search:reused"]
    assert notes_with(report, KEPT) == [_note()] and notes_with(report.notes, "probe_int8:faster") == []
    assert the_note(report, "search:reused") == "reused"
    with pytest.raises(KeyError, match=r"probe_int8:faster.*search:reused"):
        the_note(report, "probe_int8:faster")
    with pytest.raises(TypeError, match="expected something with notes"):
        notes_with("a sentence is not a list of notes", KEPT)


def test_a_bench_note_names_its_pipeline_and_keeps_its_key():
    moved = for_pipeline(_note(), "x86-int8+prune=0.5")
    assert moved == "x86-int8+prune=0.5: accuracy_budget: kept in fp32: features.7"
    assert moved.key == KEPT and moved.facts == {"layers": ("features.7",), "pipeline": "x86-int8+prune=0.5"}
    assert for_pipeline("plain", "p") == "p: plain" and not isinstance(for_pipeline("plain", "p"), Note)
