"""What a ``.pte`` stores for its XNNPACK weights, read from the file (nothing in it is run).

An XNNPACK delegate's payload is an ``XNNHeader`` (magic ``XH00`` at bytes 4..8, then the offset and size
of its flatbuffer) followed by the ``XNNGraph`` flatbuffer (``executorch/backends/xnnpack/serialization/
schema.fbs``) and the constant data. Each tensor of the graph is an ``XValue`` whose ``datatype`` says how
it is stored: ``xnn_datatype_qcint4`` is a weight with 4-bit values, two per byte, one scale per output
channel (XNNPACK's "qc4w"); ``xnn_datatype_qcint8`` one with 8-bit values. Counting those in the file is
how the export note knows which layers really went 4-bit, instead of trusting what the lowering meant to
do.

The flatbuffer is decoded by the ``flatc`` ExecuTorch ships (the way ExecuTorch reads its own programs).
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from graphopt.quant.storage import StorageUnreadable

#: Where an XNNPACK delegate payload keeps its magic and its flatbuffer's offset and size (XNNHeader).
_MAGIC, _FLATBUFFER_AT = slice(4, 8), slice(10, 18)


def xnnpack_weight_storage(path: Path) -> Counter[str]:
    """How many tensors of each XNNPACK datatype the ``.pte`` at ``path`` holds in its delegates
    (``{"xnn_datatype_qcint4": 2, "xnn_datatype_qcint8": 3, "xnn_datatype_fp32": 9, ...}``)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(path.read_bytes())
    program = getattr(pte, "program", pte)
    counts: Counter[str] = Counter()
    for payload in program.backend_delegate_data:
        graph = _xnn_graph(bytes(payload.data))
        if graph is not None:
            counts += Counter(_datatype(value) for value in graph.get("xvalues", []))
    return counts


def qc4w_weights(path: Path) -> int:
    """How many weights the ``.pte`` at ``path`` stores as XNNPACK 4-bit per-channel (qcint4) tensors;
    :class:`StorageUnreadable` when ExecuTorch's private reader fails (it may change with ExecuTorch)."""
    try:
        return xnnpack_weight_storage(path)["xnn_datatype_qcint4"]
    except (ImportError, OSError, subprocess.SubprocessError, ValueError, KeyError, AttributeError) as exc:
        raise StorageUnreadable(f"ExecuTorch's .pte reader failed: {type(exc).__name__}: {exc}") from exc


def _xnn_graph(payload: bytes) -> dict | None:
    """The decoded ``XNNGraph`` of one delegate payload; None for another backend's payload."""
    if payload[_MAGIC] != b"XH00":
        return None
    offset, size = struct.unpack("<II", payload[_FLATBUFFER_AT])
    return _decode(payload[offset : offset + size])


def _decode(flatbuffer: bytes) -> dict:
    from importlib import resources

    from executorch.exir._serialize._flatbuffer import _flatc_decompile

    schema = resources.files("executorch.backends.xnnpack.serialization").joinpath("schema.fbs")
    with tempfile.TemporaryDirectory() as folder, resources.as_file(schema) as schema_path:
        binary = Path(folder) / "graph.bin"
        binary.write_bytes(flatbuffer)
        _flatc_decompile(folder, str(schema_path), str(binary), ["--raw-binary"])
        return json.loads(_NON_FINITE.sub(_python_literal, (Path(folder) / "graph.json").read_text()))


#: flatc writes a fused ReLU's output bound as ``inf`` (and could write ``nan``): not JSON; Python's json
#: reads them as ``Infinity`` / ``NaN``.
_NON_FINITE = re.compile(r"(?<=[\s:\[,])(-?)(inf|nan)(?=[\s,\]}])")


def _python_literal(match: re.Match[str]) -> str:
    return match.group(1) + ("Infinity" if match.group(2) == "inf" else "NaN")


def _datatype(value: dict) -> str:
    union = value.get("xvalue_union", {})
    tensor = union.get("tensor_value", union)  # a quantized tensor wraps its tensor value
    return str(tensor.get("datatype", "unknown"))
