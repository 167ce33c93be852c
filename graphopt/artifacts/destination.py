"""Where an artifact, archive or report goes: checked before any work, written only once it is verified.

:func:`check_destination` runs first (before the latency guard, calibration or training), so a path that
cannot work fails in a second with its cause: not a path, a folder, an unwritable or non-folder ancestor.
:class:`StagedFile` then writes into a private folder beside the destination (same file system, so the
final move is one ``os.replace``); the caller verifies the staged file and commits it, and on any failure
nothing is left at the destination, not even a partly written or unverified file. Files the writer puts
next to the artifact (ONNX external data of models over 2 GB) move with it.

A write the disk or the folder refuses (full disk, quota, file-size limit, read-only file system,
permissions) leaves the ``with`` block as the caller's :class:`GraphoptError` class naming the destination,
the cause and what to do (:func:`write_failure`), not as a bare ``OSError`` from deep inside an exporter.

A process killed outright (``kill -9``, the OOM killer) cannot clean up, so a staging folder's name says
whose it is, ``.NAME.graphopt-<host>-<pid>-<random>``: the next :class:`StagedFile` or
:func:`check_destination` in that folder removes the ones whose process is gone on this host.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from graphopt.errors import ConfigError, ExportError, GraphoptError

#: What a refused write means to the user, by errno: (the cause, what to do).
_WRITE_FAILURES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", "free some space or choose a folder on another disk"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or choose a folder on another disk"),
    errno.EFBIG: (
        "the file is larger than this file system or the process's file-size limit (ulimit -f) allows",
        "raise the limit or choose a folder on another file system",
    ),
    errno.EROFS: ("the file system is read-only", "choose a writable folder"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to"),
}


def write_failure(
    error: BaseException, destination: Path, what: str, kind: type[GraphoptError] = ExportError
) -> GraphoptError | None:
    """A ``kind`` error naming ``destination``, the cause and the remedy when ``error`` is (or was caused
    by) a write the disk or the folder refused; None for any other error."""
    refused = _refused_write(error)
    if refused is None:
        return None
    cause, remedy = _WRITE_FAILURES[refused.errno]
    where = "" if _is_staged_for(refused.filename, destination) else f" (writing {refused.filename})"
    return kind(f"cannot write {what} {destination}: {cause}{where}; {remedy}")


def _is_staged_for(filename: object, destination: Path) -> bool:
    """Whether the file a refused write names is the destination, or is beside it or in its staging
    folder (so naming it would only repeat the destination)."""
    if not isinstance(filename, (str, os.PathLike)):
        return True  # no file named: the destination is all there is to say
    folder = destination.absolute().parent
    return folder in Path(filename).absolute().parents[:2]


def _refused_write(error: BaseException) -> OSError | None:
    """The refused-write ``OSError`` in ``error``'s chain: exporters wrap it (``raise ... from``) or raise
    another error while handling it, so the cause and the context are followed too."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _WRITE_FAILURES:
            return current
        pending += [current.__cause__, current.__context__]
    return None


def write_bytes(path: Path, data: bytes, what: str, kind: type[GraphoptError] = ExportError) -> Path:
    """Write ``data`` to ``path``; a refused write removes the partial file and raises ``kind``
    (:func:`write_failure`)."""
    try:
        path.write_bytes(data)
    except OSError as exc:
        path.unlink(missing_ok=True)
        _raise_as_write_failure(exc, path, what, kind)
    return path


def _raise_as_write_failure(
    error: OSError, destination: Path, what: str, kind: type[GraphoptError]
) -> NoReturn:
    """Raise :func:`write_failure`'s error for a refused write, else ``error`` itself."""
    failure = write_failure(error, destination, what, kind)
    if failure is None:
        raise error
    raise failure from error


def save_file(
    destination: Path, data: bytes | str, what: str, kind: type[GraphoptError] = ExportError
) -> Path:
    """Write a whole small file (a report, a cache entry) atomically: all of it or, on any failure,
    nothing at ``destination`` (a previous file there is kept)."""
    payload = data.encode() if isinstance(data, str) else data
    with StagedFile(destination, what, kind) as staged:
        staged.path.write_bytes(payload)
        return staged.commit()


def check_destination(path: object, what: str, suffix: str | None = None) -> Path:
    """``path`` as a :class:`Path` a file can be written to, or :class:`ConfigError` naming why not."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise ConfigError(f"{what} must be a file path (str or pathlib.Path), got {type(path).__name__}")
    path = Path(path)
    if str(path) in ("", "."):
        raise ConfigError(f"{what} is empty: give a file path")
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder: give a file path inside it")
    if suffix is not None and path.suffix != suffix:
        raise ConfigError(f"{what} {path} must end in {suffix}")
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise ConfigError(f"{what} {path} cannot be created: {ancestor} is a file, not a folder")
    try:  # permissions alone do not tell (root, read-only mounts, /proc): try it
        os.rmdir(tempfile.mkdtemp(prefix=_staging_prefix(".probe"), dir=ancestor))
    except OSError as exc:
        raise ConfigError(
            f"{what} {path} cannot be written: {ancestor} refuses new files ({exc.strerror}); choose a "
            "writable folder"
        ) from exc
    remove_stale_staging(ancestor)
    return path


def _nearest_existing(folder: Path) -> Path:
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


# -- staging folders and their owners ---------------------------------------------------------------------
#: ``tempfile.mkdtemp`` draws 8 characters from this alphabet after the prefix.
_STAGING = re.compile(r"\..+\.graphopt-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[a-z0-9_]{8}")


def _host_tag() -> str:
    """This machine, in a staging folder's name: a folder shared between machines or containers holds
    other hosts' folders, whose process ids mean nothing here, so they are never judged stale."""
    return hashlib.sha256(f"{socket.gethostname()} {_pid_namespace()}".encode()).hexdigest()[:8]


def _pid_namespace() -> str:
    """Which process-id space this process lives in: containers sharing a hostname and a volume have their
    own, and a process id of one means nothing in another."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux, or /proc hidden: the hostname alone tells machines apart
        return ""


def _staging_prefix(name: str) -> str:
    return f"{name}.graphopt-{_host_tag()}-{os.getpid()}-"


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, another user's
        return False
    except OverflowError:  # a pid no process can have
        return True
    return False


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging folders in ``folder`` left by a graphopt process of this host that no longer
    runs (killed before its ``with`` block could clean up); return them. Anything not named like one of
    graphopt's staging folders, a live process's folder, or another host's is left alone."""
    host, removed = _host_tag(), []
    try:
        entries = list(folder.iterdir())
    except OSError:  # an unreadable folder: nothing graphopt can tidy there
        return removed
    for entry in entries:
        match = _STAGING.fullmatch(entry.name)
        if match is None or match["host"] != host or entry.is_symlink() or not entry.is_dir():
            continue
        if _process_is_gone(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


class StagedFile:
    """``with StagedFile(dest) as staged:`` write to ``staged.path``, verify it, then ``staged.commit()``.

    Leaving the block without ``commit`` (an exception included) removes everything staged. A write the
    disk or folder refused leaves the block as ``kind`` naming ``what`` was written where, and why
    (:func:`write_failure`).
    """

    def __init__(self, destination: Path, what: str = "artifact", kind: type[GraphoptError] = ExportError):
        self.destination, self.what, self.kind = destination, what, kind
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(destination.parent)
            prefix = _staging_prefix(f".{destination.name}")
            self._folder = Path(tempfile.mkdtemp(prefix=prefix, dir=destination.parent))
        except OSError as exc:
            _raise_as_write_failure(exc, destination, what, kind)
        self.path = self._folder / destination.name
        self._committed = False

    def __enter__(self) -> StagedFile:
        return self

    def commit(self) -> Path:
        """Move the staged file (and any file written beside it) to the destination."""
        for staged in self._folder.iterdir():
            os.replace(staged, self.destination.parent / staged.name)
        self._committed = True
        return self.destination

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)
        if error is None or not isinstance(error, Exception):
            return  # KeyboardInterrupt and SystemExit go on as they are
        failure = write_failure(error, self.destination, self.what, self.kind)
        if failure is not None:
            raise failure from error
