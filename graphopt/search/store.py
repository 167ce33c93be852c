"""Measured candidates kept on disk (``SearchConfig(cache_dir=...)``), so a rerun or a wider search from the
command line measures only what it has not measured before.

A candidate is stored under the SHA-256 of everything its measurement depends on:

    scope (model weights, data, target) | backend | scoring-data digest | repr of every pass of its plan

(pass options carry the seeds, epochs, ratios and budgets), as ``<key><suffix>`` (the artifact, compared
byte for byte with the rebuilt one when its candidate is returned) and ``<key>.json`` (the measurement,
plain JSON: nothing in the folder is ever executed or unpickled). When a stored candidate is the one
returned, its plan runs again to rebuild the result (optimize is deterministic given its options) and the
artifact is checked to be the same file.

The folder is input like any other: an entry is used only when it is whole and agrees with itself.

    entry_sha256     = SHA-256 of the entry's JSON without this field (keys sorted): a hand edit or a
                       torn write of the JSON shows
    artifact_sha256  = SHA-256 of the artifact's bytes, and ``bytes`` = the artifact's size: an edited,
                       truncated or swapped artifact shows, and so does a size that is not the file's

Every field is checked for its type and range (finite positive latencies, whole byte counts, a known
backend); the artifact's name is derived from the key and the backend, never read from the JSON. An entry
failing any check is a cache *miss*: the candidate is measured again, and a note says which entry was
ignored and why. The digests catch corruption and edits, not an adversary who recomputes them: so nothing
in the folder is ever loaded or run, the stored artifacts included (finalists from the cache are not timed
again; a returned candidate is rebuilt from its plan and compared byte for byte before it is returned).

Entries are written atomically: the artifact, then the JSON, each to a temporary file in the folder moved
into place with ``os.replace``, so a crash or a full disk never leaves an entry that names a partial
artifact. A failed write (no space, file too large, no permission) removes what it wrote and is a note: the
search goes on without caching that candidate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphopt.errors import ConfigError
from graphopt.reporting.notes import Note
from graphopt.reporting.numerics import finite_number
from graphopt.search.measure import Measured

SCHEMA = 3  # 3: Measured.cosine
_CHUNK = 1 << 20
#: An entry larger than this is not a measurement graphopt wrote (one is under 1 kB): not even parsed.
MAX_ENTRY_BYTES = 64 * 1024

#: Note keys (graphopt.reporting.notes). An ignored entry's note has the facts ``entry`` (its file name),
#: ``check`` (which check it failed, one of ``CHECKS``) and, where one field or file is at fault, ``field``
#: or ``part`` ("entry" or "artifact"); a failed write's note has ``label`` and ``errno``.
CACHE_ENTRY_IGNORED = "search:cache_entry_ignored"
CACHE_WRITE_FAILED = "search:cache_write_failed"
CHECKS = (
    "schema", "entry_digest", "other_candidate", "artifact_size", "artifact_digest", "unreadable",
    "entry_too_large", "not_json", "not_an_object", "not_plain_file", "fields", "bad_value",
)  # fmt: skip


@dataclass(frozen=True)
class StoredMeasurement:
    """A stored candidate that passed every check, with the digest of its artifact as it was checked."""

    measured: Measured
    accuracy_drop: float | None
    test_drop: float | None
    artifact_sha256: str


class _Rejected(Exception):
    """Why a stored entry is not used (internal: turned into a note, never raised to the caller): the
    sentence, the check it failed (one of ``CHECKS``) and the facts that locate it."""

    def __init__(self, check: str, why: str, **facts: object):
        super().__init__(why)
        self.check, self.facts = check, facts


class CandidateStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.notes: list[Note] = []  # entries ignored, candidates not cached: the search's report says so
        _check_writable(self.folder)

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

    def load(self, key: str, workdir: Path) -> StoredMeasurement | None:
        """The stored measurement, its artifact copied into ``workdir`` as it was checked (what a rebuild is
        compared with), or None: absent, or failing a check (module docstring; then a note)."""
        path = self.folder / f"{key}.json"
        if not path.exists():
            return None
        try:
            return self._checked(key, path, workdir)
        except _Rejected as why:
            self.notes.append(Note(
                CACHE_ENTRY_IGNORED,
                f"search cache: ignored {path.name} in {self.folder} ({why}); "
                "the candidate was measured again",
                entry=path.name, check=why.check, **why.facts,
            ))  # fmt: skip
            return None

    def save(
        self, key: str, measured: Measured, accuracy_drop: float | None, test_drop: float | None,
        label: str = "a candidate",
    ) -> None:  # fmt: skip
        """Store ``measured`` and a copy of its artifact atomically; a failed write is only a note."""
        artifact = self.folder / f"{key}{measured.path.suffix}"
        try:
            digest = _atomic_copy(measured.path, artifact)
            stored = dataclasses.replace(measured, path=artifact)
            entry = {
                "schema": SCHEMA, "key": key,
                "measured": {**dataclasses.asdict(stored), "path": artifact.name},
                "accuracy_drop": accuracy_drop, "test_drop": test_drop, "artifact_sha256": digest,
            }  # fmt: skip
            entry["entry_sha256"] = _entry_digest(entry)
            # the JSON last: until it is in place, no entry names the artifact
            _atomic_write(self.folder / f"{key}.json", json.dumps(entry, indent=1).encode())
        except OSError as exc:
            _remove_quietly(artifact)  # a copied artifact without its entry is only clutter
            self.notes.append(Note(
                CACHE_WRITE_FAILED,
                f"search cache: could not cache {label} in {self.folder} ({exc.strerror or exc}); "
                "the search went on without caching it (free space or give another --search-cache folder)",
                label=label, errno=exc.errno,
            ))  # fmt: skip

    def _checked(self, key: str, path: Path, workdir: Path) -> StoredMeasurement:
        entry = _read_entry(path)
        if entry.get("schema") != SCHEMA:
            schema = _short(entry.get("schema"))
            raise _Rejected("schema", f"written by another graphopt version (schema {schema})")
        if entry.get("entry_sha256") != _entry_digest(entry):
            raise _Rejected("entry_digest", "its content does not match its entry_sha256: edited or damaged")
        if entry.get("key") != key:
            raise _Rejected("other_candidate", "it was written for another candidate (renamed or copied)")
        measured = _measured_of(entry.get("measured"))
        drops = [_optional_number(entry.get(k), k, -100.0, 100.0) for k in ("accuracy_drop", "test_drop")]
        artifact = self.folder / f"{key}{_suffix(measured.backend)}"
        measured.path = workdir / f"cached-{artifact.name}"
        size = _check_regular(artifact, f"its artifact {artifact.name}", "artifact")
        if size != measured.bytes:
            raise _Rejected(
                "artifact_size", f"bytes={measured.bytes} but its artifact has {size} bytes",
                stored_bytes=measured.bytes, artifact_bytes=size,
            )  # fmt: skip
        digest = _private_copy(artifact, measured.path, limit=measured.bytes + 1)
        if digest != entry.get("artifact_sha256"):
            measured.path.unlink()
            why = f"its artifact {artifact.name} does not match artifact_sha256: edited or damaged"
            raise _Rejected("artifact_digest", why)
        return StoredMeasurement(measured, drops[0], drops[1], digest)


def _check_writable(folder: Path) -> None:
    """Up front, before any candidate is measured: a folder that cannot take an entry is a ConfigError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".graphopt-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"the search cache folder {folder} cannot be written ({exc.strerror or exc}): give a folder you "
            "can write to (SearchConfig(cache_dir=...), --search-cache), or none to measure every candidate"
        ) from exc


def _read_entry(path: Path) -> dict[str, Any]:
    _check_regular(path, "it", "entry")
    try:
        with _open_regular(path, "it", "entry") as f:
            data = f.read(MAX_ENTRY_BYTES + 1)  # bounded, should the file grow while it is read
    except OSError as exc:
        raise _Rejected("unreadable", f"unreadable: {exc.strerror or exc}", part="entry") from None
    if len(data) > MAX_ENTRY_BYTES:
        why = f"larger than {MAX_ENTRY_BYTES} bytes: not an entry graphopt wrote"
        raise _Rejected("entry_too_large", why)
    try:
        entry = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _Rejected("not_json", "not valid JSON: truncated or damaged") from None
    if not isinstance(entry, dict):
        raise _Rejected("not_an_object", f"a JSON {type(entry).__name__}, not an object")
    return entry


def _open_regular(path: Path, what: str, part: str) -> Any:
    """``path`` opened for reading only if it is, once open, a plain file: a pipe or device swapped in
    after :func:`_check_regular` could block the reader forever (no wait to open: O_NONBLOCK; no link:
    O_NOFOLLOW)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _Rejected("not_plain_file", f"{what} is not a plain file", part=part)
    return os.fdopen(fd, "rb")


def _check_regular(path: Path, what: str, part: str) -> int:
    """The size of ``path``, a plain file: a link to a device or a pipe (which could block a reader or never
    end) is rejected."""
    try:
        info = path.stat()
    except OSError as exc:
        raise _Rejected("unreadable", f"{what} is unreadable: {exc.strerror or exc}", part=part) from None
    if not stat.S_ISREG(info.st_mode):
        raise _Rejected("not_plain_file", f"{what} is not a plain file", part=part)
    return info.st_size


def _entry_digest(entry: dict[str, Any]) -> str:
    """The SHA-256 of the entry without its own digest, in one canonical JSON form (a NaN digests like any
    value; the field checks refuse it)."""
    body = {k: v for k, v in entry.items() if k != "entry_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _measured_of(fields: object) -> Measured:
    if not isinstance(fields, dict):
        raise _Rejected("not_an_object", "'measured' is not an object", field="measured")
    expected = {f.name for f in dataclasses.fields(Measured)}
    if set(fields) != expected:
        why = f"'measured' has fields {sorted(fields)}, expected {sorted(expected)}"
        raise _Rejected("fields", why, field="measured")
    values = {
        "path": Path("unset"),
        "latency_ms": _positive_number(fields["latency_ms"], "latency_ms"),
        "baseline_ms": _positive_number(fields["baseline_ms"], "baseline_ms"),
        "bytes": _count(fields["bytes"], "bytes"),
        "params": _count(fields["params"], "params"),
        "macs": _count(fields["macs"], "macs"),
        "accuracy": _optional_number(fields["accuracy"], "accuracy", 0.0, 100.0),
        "test_accuracy": _optional_number(fields["test_accuracy"], "test_accuracy", 0.0, 100.0),
        "cosine": _optional_number(fields["cosine"], "cosine", -1.0, 1.0),
        "shipped_fp32": _flag(fields["shipped_fp32"], "shipped_fp32"),
        "exits": _flag(fields["exits"], "exits"),
        "backend": fields["backend"],
    }
    _suffix(values["backend"])
    return Measured(**values)


def _suffix(backend: object) -> str:
    from graphopt.backends import BACKENDS

    if not isinstance(backend, str) or backend not in BACKENDS:
        raise _Rejected("bad_value", f"unknown backend {_short(backend)}", field="backend")
    return BACKENDS[backend].suffix


def _positive_number(value: object, name: str) -> float:
    number = finite_number(value)
    if number is None or number <= 0:
        raise _Rejected("bad_value", f"{name}={_short(value)} is not a finite number > 0", field=name)
    return number


def _optional_number(value: object, name: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    number = finite_number(value)
    if number is None or not low <= number <= high:
        why = f"{name}={_short(value)} is not a number in [{low:g}, {high:g}]"
        raise _Rejected("bad_value", why, field=name)
    return number


def _count(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        why = f"{name}={_short(value)} is not a whole number in [0, 2**63)"
        raise _Rejected("bad_value", why, field=name)
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise _Rejected("bad_value", f"{name}={_short(value)} is not true or false", field=name)
    return value


def _private_copy(artifact: Path, destination: Path, limit: int) -> str:
    """Copy a stored artifact out of the folder, at most ``limit`` bytes of it (should it grow meanwhile):
    the SHA-256 of the bytes copied."""
    try:
        with destination.open("wb") as f:
            return _copy_hashing(artifact, f, limit)[0]
    except OSError as exc:
        destination.unlink(missing_ok=True)
        why = f"its artifact {artifact.name} is unreadable: {exc.strerror or exc}"
        raise _Rejected("unreadable", why, part="artifact") from None


def _copy_hashing(source: Path, f: Any, limit: int | None = None) -> tuple[str, int]:
    """Copy ``source`` (its first ``limit`` bytes) into the open file ``f``: the SHA-256 and size of exactly
    the bytes written."""
    digest, size = hashlib.sha256(), 0
    with _open_regular(source, f"the artifact {source.name}", "artifact") as src:
        while chunk := src.read(_CHUNK if limit is None else min(_CHUNK, limit - size)):
            digest.update(chunk)
            size += len(chunk)
            f.write(chunk)
    return digest.hexdigest(), size


def _atomic_copy(source: Path, destination: Path) -> str:
    """Copy ``source`` to ``destination`` through a temporary file beside it: the SHA-256 of what was
    copied (hashed as written, so the digest is of exactly the bytes stored)."""
    digests: list[str] = []
    _atomic(destination, lambda f: digests.append(_copy_hashing(source, f)[0]))
    return digests[0]


def _atomic_write(destination: Path, data: bytes) -> None:
    _atomic(destination, lambda f: f.write(data))


def _atomic(destination: Path, write: Any) -> None:
    """``write(file)`` into a temporary file in ``destination``'s folder, flushed to disk, then moved into
    place; on any error the temporary file is removed and the error raised (``destination`` untouched)."""
    fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, destination)
    except BaseException:  # a full disk, or an interrupt: either way no partial file stays
        _remove_quietly(Path(tmp))
        raise


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):  # nothing more to do: the note about the failed write says enough
        path.unlink(missing_ok=True)
