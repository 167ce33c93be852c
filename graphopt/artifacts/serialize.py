"""Save and load an optimized model without unpickling arbitrary code.

The GraphModule is exported with ``torch.export`` and written as a ``.pt2`` archive: the graph as serialized
ATen ops, the weights as tensors, and a small JSON header. Loading rebuilds a module from that description
after checking every member (:mod:`graphopt.artifacts.safe_pt2`); no user class is imported and nothing is
unpickled or evaluated, so a pruned model whose shapes changed round-trips as it is. The batch dimension
is exported as dynamic when the graph allows it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
from torch import nn

from graphopt.artifacts.destination import StagedFile, check_destination
from graphopt.artifacts.safe_pt2 import HEADER_MEMBER, load_program, parse_json, read_checked
from graphopt.backends.quiet import quiet_export
from graphopt.errors import SerializationError, first_line
from graphopt.frontend.batch_dims import dynamic_batch_example

FORMAT = "graphopt.pt2"
FORMAT_VERSION = 1
_HEADER = HEADER_MEMBER.removeprefix("extra/")


def save(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], path: str | Path, **header: str) -> Path:
    """Write ``model`` to ``path`` (``.pt2``)."""
    if isinstance(path, (str, Path)) and Path(path).suffix != ".pt2":
        raise SerializationError(f"graphopt saves to a .pt2 file, got {Path(path).name!r}")
    path = check_destination(path, "save path")
    try:
        with quiet_export():
            program = _export(model, example_inputs)
    except Exception as exc:  # torch.export raises many types; all mean the same to the user
        raise SerializationError(
            f"could not capture the model with torch.export ({type(exc).__name__}: {first_line(exc)}); "
            "data-dependent Python control flow must be expressed with torch.cond to be saved"
        ) from exc
    meta = {"format": FORMAT, "version": FORMAT_VERSION, **header}
    archive = _archive_bytes(program, meta)
    try:  # StagedFile turns a refused write (full disk, quota, size limit, read-only) into our error
        with StagedFile(path, "model archive", SerializationError) as staged:
            _write(staged.path, archive)
            return staged.commit()
    except OSError as exc:  # any other failure of the file system
        raise SerializationError(
            f"cannot write model archive {path}: {exc.strerror or exc}; nothing was written there, check the "
            "folder and save again"
        ) from exc


def _archive_bytes(program: torch.export.ExportedProgram, meta: dict[str, object]) -> bytes:
    """The archive, written by torch into memory: torch's C++ zip writer aborts the whole process when a
    write to a file fails (a full disk), so graphopt writes the file itself (:func:`_write`)."""
    buffer = io.BytesIO()
    try:
        torch.export.save(program, buffer, extra_files={_HEADER: json.dumps(meta)})
    except Exception as exc:  # torch's serializer raises many types; all mean the same to the user
        raise SerializationError(
            f"torch.export could not serialize the model ({type(exc).__name__}: {first_line(exc)})"
        ) from exc
    return buffer.getvalue()


def _write(staged: Path, data: bytes) -> None:
    """Write ``data`` and flush it to the disk, so a full disk fails here rather than after the commit."""
    with open(staged, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def load(path: str | Path) -> nn.Module:
    """Load a model written by :func:`save` (or ``OptimizeResult.save``), running nothing from the file.

    The archive is checked member by member before torch reads it (see :mod:`graphopt.artifacts.safe_pt2`): a
    tampered or corrupt archive (pickled members, code in its program, a malformed zip) raises
    :class:`SerializationError`, whatever went wrong, and nothing in it is unpickled or evaluated.
    """
    path = Path(path)
    if not path.is_file():
        raise SerializationError(f"no such file: {path}")
    try:
        checked = read_checked(path.read_bytes(), str(path))
        _check_header(checked.header, path)
        with quiet_export():
            program = load_program(checked)
            return program.module()
    except (SerializationError, KeyboardInterrupt):
        raise
    # BaseException: a SystemExit or GeneratorExit raised inside torch's reader must not end the caller's
    # process; a corrupt archive makes torch raise many types, and all mean the same to the user.
    except BaseException as exc:
        raise SerializationError(
            f"{path} is not a loadable graphopt .pt2 archive ({type(exc).__name__}: {first_line(exc)}); "
            "re-save the model with OptimizeResult.save"
        ) from exc


def _check_header(text: str, path: Path) -> None:
    try:
        meta = parse_json((text or "{}").encode("utf-8"), HEADER_MEMBER, str(path))
    except SerializationError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SerializationError(
            f"{path} was not written by OptimizeResult.save (no valid {HEADER_MEMBER} header)"
        )
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SerializationError(f"{path}: its header's version is {version!r}, not an integer")
    if version < 1:
        raise SerializationError(
            f"{path}: its header's version is {version}; OptimizeResult.save writes versions from 1: the "
            "header is corrupt, re-save the model with OptimizeResult.save"
        )
    if version > FORMAT_VERSION:
        raise SerializationError(
            f"{path} has format version {version}; this graphopt reads <= {FORMAT_VERSION}: upgrade graphopt"
        )


def _export(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    widened, dynamic = dynamic_batch_example(example_inputs)
    try:
        return torch.export.export(model, widened, dynamic_shapes=dynamic, strict=False)
    except Exception:  # a graph that fixes the batch size (e.g. x.view(1, -1)) exports with static shapes
        return torch.export.export(model, example_inputs, strict=False)
