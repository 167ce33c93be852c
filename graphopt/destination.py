"""Where an artifact, archive or report goes: checked before any work, written only once it is verified.

:func:`check_destination` runs first (before the latency guard, calibration or training), so a path that
cannot work fails in a second with its cause: not a path, a folder, an unwritable or non-folder ancestor.
:class:`StagedFile` then writes into a private folder beside the destination (same file system, so the
final move is one ``os.replace``); the caller verifies the staged file and commits it, and on any failure
nothing is left at the destination, not even a partly written or unverified file. Files the writer puts
next to the artifact (ONNX external data of models over 2 GB) move with it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from graphopt.errors import ConfigError


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
        os.rmdir(tempfile.mkdtemp(prefix=".graphopt-probe.", dir=ancestor))
    except OSError as exc:
        raise ConfigError(
            f"{what} {path} cannot be written: {ancestor} refuses new files ({exc.strerror}); choose a "
            "writable folder"
        ) from exc
    return path


def _nearest_existing(folder: Path) -> Path:
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


class StagedFile:
    """``with StagedFile(dest) as staged:`` write to ``staged.path``, verify it, then ``staged.commit()``.

    Leaving the block without ``commit`` (an exception included) removes everything staged.
    """

    def __init__(self, destination: Path):
        self.destination = destination
        destination.parent.mkdir(parents=True, exist_ok=True)
        self._folder = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
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
