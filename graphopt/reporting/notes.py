"""Keyed report notes: the sentence a person reads, plus a stable key and typed facts a program reads.

A note explains a number in the report (why a rewrite did not fire, what was reused, what a check found).
Its sentence is free to change; its *key* and *facts* are the contract that tests, the bench and outside
tools rely on, so rewording a sentence breaks nothing while losing a fact does:

    note = Note("insert_early_exit:exit_paths_timed", "insert_early_exit: exit paths timed in ...",
                runtime="onnxruntime", dropped=("features.6",))
    notes_with(res.report, "insert_early_exit:exit_paths_timed")[0].facts["dropped"]  # ("features.6",)

Key grammar: ``<source>:<fact>`` in lower snake case, where ``source`` is the pass or the area that wrote
it (``probe_int8``, ``search``, ``capture``, ``artifact``) and ``fact`` names what it says, not how
(``int8_not_faster``, ``cache_entry_ignored``). A fact that belongs to one pass's row and is a number is
better a stats key on that row (``record.stats["shipped_fp32"]``); a note is for what has no number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

_KEY = re.compile(r"[a-z0-9_]+(?::[a-z0-9_]+)+")


class Note(str):
    """A report note that is also its sentence.

    A ``str`` subclass, not a dataclass, on purpose: notes flow through ``list[str]`` fields written by many
    modules (``PassContext.notes``, ``Report.notes``, ``StageRecord.notes``, the stage cache, the bench),
    into f-strings, ``str(report)`` and JSON. As a string a keyed note fits every one of them unchanged, so
    each module moves from a plain sentence to a keyed note on its own, and a plain ``str`` note still
    works meanwhile (it has no key: :func:`note_keys` skips it). Equality and hashing are the sentence's.
    """

    key: str
    facts: Mapping[str, Any]

    def __new__(cls, key: str, text: str, /, **facts: Any) -> Note:
        if not _KEY.fullmatch(key):
            raise ValueError(
                f"note key {key!r} is not '<source>:<fact>' in lower snake case (e.g. 'search:reused'); "
                "name the pass or area that writes it and the fact it states"
            )
        note = super().__new__(cls, text)
        note.key = key
        note.facts = MappingProxyType(dict(facts))  # read-only: a note states what was, once
        return note

    def __reduce__(self) -> tuple[Any, ...]:
        # str's own reduction would rebuild from the sentence alone and lose the key and the facts
        # (pickle and copy.deepcopy, e.g. dataclasses.asdict of a StageRecord, go through here).
        return (_rebuild, (self.key, str(self), dict(self.facts)))

    def __repr__(self) -> str:
        return f"Note({self.key!r}, {str.__repr__(self)})"


def _rebuild(key: str, text: str, facts: dict[str, Any]) -> Note:
    return Note(key, text, **facts)


def for_pipeline(note: str, label: str) -> str:
    """``note`` prefixed with the pipeline it came from (a bench result gathers every pipeline's report
    notes), keeping its key and facts, with the label as the fact ``pipeline``."""
    text = f"{label}: {note}"
    return Note(note.key, text, **{**note.facts, "pipeline": label}) if isinstance(note, Note) else text


def _notes_of(source: object) -> Iterable[str]:
    """The notes of a report, a stage row, a pass context, a search store... or a list of notes itself."""
    notes = getattr(source, "notes", source)
    if isinstance(notes, str) or not isinstance(notes, Iterable):
        raise TypeError(f"expected something with notes (a Report, a StageRecord, a list), got {source!r}")
    return notes


def notes_with(source: object, key: str) -> list[Note]:
    """Every note filed under ``key`` in ``source`` (an object with ``.notes`` or an iterable of notes)."""
    return [n for n in _notes_of(source) if isinstance(n, Note) and n.key == key]


def note_keys(source: object) -> list[str]:
    """The keys of the keyed notes in ``source``, in order (plain ``str`` notes have none)."""
    return [n.key for n in _notes_of(source) if isinstance(n, Note)]


def the_note(source: object, key: str) -> Note:
    """The one note filed under ``key``; a ``KeyError`` naming the keys present when none or several are."""
    found = notes_with(source, key)
    if len(found) != 1:
        raise KeyError(f"{len(found)} notes with key {key!r} (one expected); keys: {note_keys(source)}")
    return found[0]
