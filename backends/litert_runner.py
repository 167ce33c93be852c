"""Running and timing a ``.tflite`` with LiteRT's interpreter (``ai_edge_litert.interpreter``).

The interpreter applies its default XNNPACK delegate on CPU; ``threads`` is its ``num_threads``. A file's
inputs have the example input's shapes: a larger batch runs in slices of the file's batch. Integer inputs and
outputs (``integer_io=True``, or any fully int8 file) are quantized and dequantized here with
the scale and zero point the file declares,

    q = clamp(round(x / s) + z, -128, 127),   y = (q_out - z_out) * s_out

so the generic artifact check, accuracy rows and the latency guard call every ``.tflite`` with float
tensors. Timing binds the converted inputs once and times ``invoke`` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from graphopt.backends.litert_backend import quiet_litert, require_litert
from graphopt.backends.tflite_file import not_loadable
from graphopt.backends.timing import LatencyStats, measure
from graphopt.errors import InvalidInputError, first_line

#: Bytes 4..8 of a ``.tflite``: the flatbuffer's file identifier.
TFLITE_IDENTIFIER = b"TFL3"


def check_tflite_header(path: Path) -> None:
    """An :class:`ExportError` unless ``path`` starts like a ``.tflite`` (before the interpreter reads it)."""
    try:
        with path.open("rb") as file:
            head = file.read(8)
    except OSError as exc:
        raise not_loadable(path, exc.strerror or type(exc).__name__) from exc
    if head[4:8] != TFLITE_IDENTIFIER:
        raise not_loadable(path, f"no TFLite file identifier: bytes 4-8 are {head[4:8]!r}, not b'TFL3'")


class LiteRTRunner:
    """Loads a ``.tflite`` with ``ai_edge_litert``'s interpreter and runs or times it (module docstring)."""

    def __init__(self, path: str | Path, *, threads: int = 1):
        require_litert()
        self.path = Path(path)
        self.threads = threads
        check_tflite_header(self.path)
        with quiet_litert():
            from ai_edge_litert.interpreter import Interpreter

            try:
                self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
                self.interpreter.allocate_tensors()
                # The details decode tensor names from the file: a damaged name is a UnicodeDecodeError.
                self.inputs: list[dict[str, Any]] = self.interpreter.get_input_details()
                self.outputs: list[dict[str, Any]] = self.interpreter.get_output_details()
            except (ValueError, RuntimeError) as exc:  # UnicodeDecodeError is a ValueError
                raise not_loadable(self.path, first_line(exc)) from exc

    @property
    def batch(self) -> int:
        """The batch size the file was converted with (its first input's leading dimension)."""
        shape = self.inputs[0]["shape"]
        return int(shape[0]) if len(shape) else 1

    def run(self, *inputs: Tensor | np.ndarray) -> list[np.ndarray]:
        arrays = [np.asarray(torch.as_tensor(x).detach()) for x in inputs]
        self._check_arity(arrays)
        if arrays and arrays[0].ndim and arrays[0].shape[0] != self.batch:
            return self._run_sliced(arrays)
        self._set(arrays)
        self.interpreter.invoke()
        return [self._get(detail) for detail in self.outputs]

    run_batched = run  # a batch larger than the file's runs in slices (see _run_sliced)

    def bind(self, inputs: tuple[Tensor, ...]) -> Callable[[], object]:
        """A no-argument call on ``inputs``, converted and set once (what interleaved timing calls)."""
        arrays = [np.asarray(torch.as_tensor(x).detach()) for x in inputs]
        self._check_arity(arrays)
        self._set(arrays)
        return self.interpreter.invoke

    def time(self, *inputs: Tensor | np.ndarray, warmup: int = 10, repeat: int = 100) -> LatencyStats:
        return measure(self.bind(inputs), warmup=warmup, repeat=repeat)

    def _check_arity(self, arrays: list[np.ndarray]) -> None:
        if len(arrays) != len(self.inputs):
            raise InvalidInputError(
                f"{self.path.name} takes {len(self.inputs)} input(s), got {len(arrays)}: pass one array per "
                "model input, in the model's argument order"
            )

    def _run_sliced(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        total, step = arrays[0].shape[0], self.batch
        if total % step:
            raise InvalidInputError(
                f"{self.path.name} was converted for batch {step}; a batch of {total} is not a multiple of "
                "it: pad the batch, or export with an example input of batch 1"
            )
        parts = [self.run(*(a[i : i + step] for a in arrays)) for i in range(0, total, step)]
        return [np.concatenate(chunks) for chunks in zip(*parts, strict=True)]

    def _set(self, arrays: list[np.ndarray]) -> None:
        for detail, array in zip(self.inputs, arrays, strict=True):
            if tuple(array.shape) != tuple(detail["shape"]):
                raise InvalidInputError(
                    f"{self.path.name} input {detail['name']!r} has shape {tuple(detail['shape'])}, got "
                    f"{tuple(array.shape)}: .tflite files keep the example input's shapes"
                )
            self.interpreter.set_tensor(detail["index"], _quantized(array, detail))

    def _get(self, detail: dict[str, Any]) -> np.ndarray:
        value = self.interpreter.get_tensor(detail["index"])
        scale, zero = detail["quantization"]
        if np.issubdtype(value.dtype, np.integer) and scale:
            return ((value.astype(np.float32) - zero) * scale).astype(np.float32)
        return value


def _quantized(array: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """``array`` in the input's dtype; float into an int8 input: quantized with its scale and zero point."""
    dtype = detail["dtype"]
    scale, zero = detail["quantization"]
    if np.issubdtype(dtype, np.integer) and scale and np.issubdtype(array.dtype, np.floating):
        info = np.iinfo(dtype)
        return np.clip(np.round(array / scale) + zero, info.min, info.max).astype(dtype)
    return array.astype(dtype, copy=False)
