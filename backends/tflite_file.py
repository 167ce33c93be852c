"""Reading and editing ``.tflite`` flatbuffers: operator lists, tensor types, int8 layer constants, float I/O.

Everything goes through ``ai_edge_litert``'s generated schema (object API) and ``flatbuffer_utils``; nothing
here runs a model. Only the first subgraph (``main``) is read: graphopt writes one.

Float I/O: litert_torch's STATIC (PT2E) conversion folds the boundary quantize / dequantize into int8 graph
inputs and outputs. :func:`with_float_io` puts them back as TFLite ops, a ``QUANTIZE`` (float32 -> int8)
before each int8 input and a ``DEQUANTIZE`` after each int8 output, using the boundary tensors' own scale
and zero point, and re-points the signature at the new float tensors. The graph between stays integer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import ExportError, first_line

#: Integer tensor types a fully integer graph computes in (int32: biases, shapes, indices).
INTEGER_TYPES = ("INT8", "UINT8", "INT16", "INT32", "INT64")
#: The ops a conv / linear lowers to, whose weight (input 1) must be int8 in an int8 file.
WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _names(enum: type) -> dict[int, str]:
    return {value: name for name, value in vars(enum).items() if not name.startswith("_")}


#: What a message calls ``.tflite`` bytes whose file the caller did not name.
UNNAMED = "the .tflite data"


def not_loadable(source: str | Path, why: str) -> ExportError:
    return ExportError(
        f"{source} is not a loadable LiteRT model ({why}); give a complete .tflite written by a LiteRT "
        "converter (graphopt export m.tflite, or litert_torch.convert(...).export())"
    )


@contextmanager
def damaged_file_errors(source: str | Path) -> Iterator[None]:
    """Any exception inside as :func:`not_loadable`. Broad on purpose: the generated flatbuffer reader
    follows offsets and lengths from the file itself, so damaged bytes fail anywhere in it with whatever the
    step at hand raises (struct.error, IndexError, TypeError, ValueError, UnicodeDecodeError, ...), and
    walking a damaged graph indexes tensors and operator codes out of range the same way."""
    try:
        yield
    except Exception as exc:
        raise not_loadable(source, f"damaged: {type(exc).__name__}: {first_line(exc)}") from exc


def read_model(data: bytes, source: str | Path = UNNAMED) -> Any:
    """The flatbuffer as ``schema_py_generated.ModelT`` (mutable lists, buffers resolved); damaged bytes are
    an :class:`ExportError` naming ``source``."""
    from ai_edge_litert.tools import flatbuffer_utils

    with damaged_file_errors(source):
        return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


def write_model(model: Any) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _op_name(model: Any, op: Any) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    name = _names(_schema().BuiltinOperator).get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")
    return f"CUSTOM:{code.customCode.decode()}" if name == "CUSTOM" and code.customCode else name


def _type_name(tensor: Any) -> str:
    return _names(_schema().TensorType).get(tensor.type, str(tensor.type))


@dataclass(frozen=True)
class TfliteSummary:
    """What a ``.tflite`` computes in: its operators in order, its I/O types, and every operator that
    reads or writes a float tensor (what a fully integer graph must not have)."""

    ops: tuple[str, ...]
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]
    float_ops: tuple[str, ...]
    #: The weight type of each conv / depthwise conv / fully connected, in graph order.
    weight_types: tuple[str, ...]

    def histogram(self) -> str:
        """``3 CONV_2D, 1 ADD, ...`` in order of first appearance."""
        return ", ".join(f"{n} {op}" for op, n in Counter(self.ops).items())


def summarize(data: bytes, source: str | Path = UNNAMED) -> TfliteSummary:
    """The file's :class:`TfliteSummary`; damaged bytes are an :class:`ExportError` naming ``source``."""
    model = read_model(data, source)
    with damaged_file_errors(source):
        return _summary(model)


def _summary(model: Any) -> TfliteSummary:
    graph = model.subgraphs[0]
    tensors = graph.tensors
    ops, floats, weights = [], [], []
    for op in graph.operators:
        name = _op_name(model, op)
        ops.append(name)
        touched = [tensors[i] for i in (*op.inputs, *op.outputs) if i >= 0]
        if any(_type_name(t) not in INTEGER_TYPES for t in touched):
            floats.append(name)
        if name in WEIGHTED_OPS:
            weights.append(_type_name(tensors[op.inputs[1]]))
    return TfliteSummary(
        ops=tuple(ops),
        input_types=tuple(_type_name(tensors[i]) for i in graph.inputs),
        output_types=tuple(_type_name(tensors[i]) for i in graph.outputs),
        float_ops=tuple(floats),
        weight_types=tuple(weights),
    )


@dataclass(frozen=True)
class LayerConstants:
    """A conv / linear of the file: its op, int8 weight (TFLite layout), int32 bias and weight scales."""

    op: str
    weight: np.ndarray
    bias: np.ndarray | None
    scales: np.ndarray


def layer_constants(data: bytes) -> list[LayerConstants]:
    """The constants of every conv / depthwise conv / fully connected, in graph order. TFLite layouts:
    ``CONV_2D`` OHWI, ``DEPTHWISE_CONV_2D`` 1HWO, ``FULLY_CONNECTED`` [out, in]."""
    model = read_model(data)
    graph = model.subgraphs[0]
    dtypes = {"INT8": np.int8, "INT32": np.int32, "FLOAT32": np.float32}

    def constant(index: int) -> np.ndarray | None:
        if index < 0 or model.buffers[graph.tensors[index].buffer].data is None:
            return None
        tensor = graph.tensors[index]
        raw = np.asarray(model.buffers[tensor.buffer].data, dtype=np.uint8).tobytes()
        return np.frombuffer(raw, dtypes[_type_name(tensor)]).reshape(tensor.shape)

    layers = []
    for op in graph.operators:
        name = _op_name(model, op)
        if name not in WEIGHTED_OPS:
            continue
        weight = constant(op.inputs[1])
        bias = constant(op.inputs[2]) if len(op.inputs) > 2 else None
        quantization = graph.tensors[op.inputs[1]].quantization
        scales = np.asarray(quantization.scale if quantization is not None else [], dtype=np.float32)
        if weight is not None:
            layers.append(LayerConstants(name, weight, bias, scales))
    return layers


def with_float_io(data: bytes) -> bytes:
    """The file with float32 inputs and outputs around its int8 ones (module docstring)."""
    schema = _schema()
    model = read_model(data)
    integer = (schema.TensorType.INT8, schema.TensorType.UINT8)
    quantize = _opcode(model, schema.BuiltinOperator.QUANTIZE)
    dequantize = _opcode(model, schema.BuiltinOperator.DEQUANTIZE)
    for index, graph in enumerate(model.subgraphs):
        remap: dict[int, int] = {}
        front, back = [], []
        for tensor in [t for t in graph.inputs if graph.tensors[t].type in integer]:
            remap[tensor] = _float_twin(model, graph, tensor)
            front.append(_operator(quantize, remap[tensor], tensor))
        for tensor in [t for t in graph.outputs if graph.tensors[t].type in integer]:
            remap[tensor] = _float_twin(model, graph, tensor)
            back.append(_operator(dequantize, tensor, remap[tensor]))
        graph.inputs = [remap.get(t, t) for t in graph.inputs]
        graph.outputs = [remap.get(t, t) for t in graph.outputs]
        graph.operators = [*front, *graph.operators, *back]
        for signature in model.signatureDefs or []:
            if signature.subgraphIndex == index:
                for entry in [*(signature.inputs or []), *(signature.outputs or [])]:
                    entry.tensorIndex = remap.get(entry.tensorIndex, entry.tensorIndex)
    return write_model(model)


def _opcode(model: Any, builtin: int) -> int:
    """The index of ``builtin`` in the model's operator codes, added when missing."""
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = _schema().OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _float_twin(model: Any, graph: Any, index: int) -> int:
    """A new float32 tensor of the same shape as tensor ``index``, with an empty buffer of its own."""
    schema = _schema()
    source = graph.tensors[index]
    twin = schema.TensorT()
    twin.shape, twin.type = list(source.shape), schema.TensorType.FLOAT32
    twin.name = (source.name or b"") + b"_float"
    twin.shapeSignature = None if source.shapeSignature is None else list(source.shapeSignature)
    model.buffers.append(schema.BufferT())
    twin.buffer = len(model.buffers) - 1
    graph.tensors.append(twin)
    return len(graph.tensors) - 1


def _operator(opcode: int, source: int, result: int) -> Any:
    op = _schema().OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode, [source], [result]
    return op
