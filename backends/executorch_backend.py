"""Lowering to ExecuTorch (``.pte``, XNNPACK delegate) and running the result with ``executorch.runtime``.

ExecuTorch is PyTorch's own edge runtime (Android, iOS, embedded Linux); its XNNPACK delegate runs fp32 and
int8 convs, linears, adds and pooling. The flow is upstream's: ``torch.export`` ->
``to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])`` -> ``to_executorch()``.

int8 reuses graphopt's own calibration (QAT, accuracy budget and power-of-two scales included) instead of
recalibrating with PT2E: the IR is rewritten into the pattern XNNPACK's partitioner delegates, which is what
PT2E's ``convert_pt2e`` emits for ``XNNPACKQuantizer``:

- a frozen :class:`~graphopt.quant.ActivationQuantizer` becomes ``quantize_per_tensor`` ->
  ``dequantize_per_tensor`` on **int8** (XNNPACK's QS8); a u8 quantizer (x86-int8) with zero point ``z`` is
  the same set of values as s8 with zero point ``z - 128``, so the values are unchanged;
- a frozen :class:`~graphopt.quant.QuantizedLayer` becomes its conv / linear on ``dequantize_per_channel``
  of the same int8 weights (range -127..127, symmetric, axis 0) with the fp32 bias ``s_in * s_c * b_q``
  (XNNPACK requantizes the bias itself; the int32 values are what graphopt computed);
- a linear layer of 2..4-bit weights declares the range -8..7 instead, which XNNPACK stores as 4-bit
  (qc4w, two weights per byte); 4-bit convs keep int8 storage, named in the report row's notes
  (:mod:`graphopt.backends.xnnpack_int4` has the measurements behind that rule).

On the digits CNN the delegated program reproduces graphopt's eager int8 simulation bit for bit.

Every conv and linear must end up inside an XNNPACK delegate: one left outside is an :class:`ExportError`
naming it; other ops left outside (a mean XNNPACK does not take) are listed in the file's description and
so in the report row. The program has the example input's shapes; :class:`ExecuTorchRunner` runs a batch
one sample at a time.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor, nn

from graphopt.artifacts.destination import write_bytes, write_failure
from graphopt.backends.executorch_exits import exit_network_of, run_stages, stage_programs
from graphopt.backends.executorch_form import xnnpack_form
from graphopt.backends.quiet import quiet_export, quiet_native
from graphopt.backends.timing import LatencyStats, measure
from graphopt.early_exit.measure import has_exits
from graphopt.errors import ConfigError, ExportError, first_line

INSTALL = "pip install 'graphopt[executorch]'  (executorch beside torch 2.13.0)"
#: Ops that must be delegated: an int8 conv or linear run outside XNNPACK would be a float fallback.
MUST_DELEGATE = ("convolution", "linear", "addmm", "mm")


def require_executorch() -> None:
    """A :class:`ConfigError` naming the extra when ExecuTorch is not installed."""
    import importlib.util

    if importlib.util.find_spec("executorch") is None:
        raise ConfigError(f"the executorch backend needs ExecuTorch: {INSTALL}")


def export_executorch(model: nn.Module, example_inputs: tuple[Tensor, ...], path: str | Path) -> Path:
    """Lower ``model`` to an XNNPACK-delegated ``.pte`` at ``path`` (module docstring)."""
    require_executorch()
    path = Path(path)
    form = xnnpack_form(model)
    try:
        with quiet_export(), quiet_native(), torch.no_grad():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower

            if has_exits(form):  # one method per stage (backends/executorch_exits.py)
                exported = stage_programs(exit_network_of(form), tuple(example_inputs))
            else:
                exported = {"forward": torch.export.export(form, tuple(example_inputs))}
            edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
            _check_delegated(edge, list(exported))
            program = edge.to_executorch()
    except ExportError:
        raise
    except Exception as exc:  # torch.export and exir raise many types; all mean the same to the user
        # exir writes its flatbuffer schema to a temporary folder: a full disk there is the disk's fault
        failure = write_failure(exc, path, "ExecuTorch program")
        raise failure or ExportError(
            f"ExecuTorch export failed ({type(exc).__name__}: {first_line(exc)})"
        ) from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes(path, program.buffer, "ExecuTorch program")


def _check_delegated(edge: Any, methods: list[str]) -> None:
    """An :class:`ExportError` naming every conv / linear XNNPACK did not take, before anything is written."""
    outside: Counter[str] = Counter()
    for name in methods:
        outside += ops_outside_delegates(edge.exported_program(name).graph_module)
    undelegated = [op for op in outside if any(k in op for k in MUST_DELEGATE)]
    if undelegated:
        raise ExportError(
            f"XNNPACK did not take {', '.join(undelegated)}: they would run as portable (float or reference) "
            "kernels; export to ONNX (.onnx) instead"
        )


def ops_outside_delegates(gm: fx.GraphModule) -> Counter[str]:
    """The ops of a lowered edge program that run outside every delegate, by name (``aten.mean.dim``)."""
    skip = ("executorch_call_delegate", "getitem")
    names = (_op_name(n.target) for n in gm.graph.nodes if n.op == "call_function")
    return Counter(name for name in names if not any(s in name for s in skip))


def _op_name(target: Any) -> str:
    name = getattr(target, "__name__", None) or str(target)
    return str(name).split(":")[0].replace("<EdgeOpOverload ", "").strip("<> ")


#: Bytes 4..8 of a ``.pte``: its flatbuffer's file identifier, ``ET`` and the schema version (``ET12``).
PTE_IDENTIFIER = re.compile(rb"ET[0-9]{2}")


def not_loadable(path: Path, why: str) -> ExportError:
    return ExportError(
        f"{path} is not a loadable ExecuTorch program ({why}); give a complete .pte written by an ExecuTorch "
        "exporter (graphopt export m.pte, or executorch's to_executorch()) of a matching version"
    )


def check_pte_header(path: Path) -> None:
    """An :class:`ExportError` unless ``path`` starts like an ExecuTorch program. The runtime's own check
    logs the identifier it found and, when those bytes are not UTF-8 (random bytes, another format),
    aborts the whole process (SIGABRT) from inside its logger: this check comes first."""
    try:
        with path.open("rb") as file:
            head = file.read(8)
    except OSError as exc:
        raise not_loadable(path, exc.strerror or type(exc).__name__) from exc
    if len(head) < 8:
        raise not_loadable(path, f"{len(head)} bytes, shorter than any program")
    if not PTE_IDENTIFIER.fullmatch(head[4:8]):
        raise not_loadable(path, f"no ExecuTorch file identifier: bytes 4-8 are {head[4:8]!r}, not b'ET12'")


def describe_pte(path: Path) -> str:
    """How a ``.pte`` runs: its XNNPACK delegates and the operators outside them, read from the file's
    flatbuffer (nothing in it is run)."""
    require_executorch()
    check_pte_header(path)
    with quiet_native():
        from executorch.exir._serialize._program import deserialize_pte_binary

        try:
            program = deserialize_pte_binary(path.read_bytes())
        except Exception as exc:  # struct.error, ValueError, flatbuffer errors: all mean a damaged file
            raise not_loadable(path, f"{type(exc).__name__}: {first_line(exc)}") from exc
    program = getattr(program, "program", program)
    plans = program.execution_plan
    delegates = Counter(d.id for plan in plans for d in plan.delegates)
    outside = sorted(
        {op.name + (f".{op.overload}" if op.overload else "") for p in plans for op in p.operators}
    )
    inside = ", ".join(f"{count} {name}" for name, count in delegates.items()) or "no delegate"
    methods = f"methods {', '.join(p.name for p in plans)}; " if len(plans) > 1 else ""
    return f"ExecuTorch ({methods}{inside} delegates; ops outside them: {', '.join(outside) or 'none'})"


class ExecuTorchRunner:
    """Loads a ``.pte`` with ``executorch.runtime`` and runs or times it.

    ``threads`` sets ExecuTorch's process-wide thread pool (there is one per process): the last runner made
    decides. The program has the example input's batch size; :meth:`run_batched` runs a larger batch one
    sample at a time.
    """

    def __init__(self, path: str | Path, *, threads: int = 1):
        require_executorch()
        self.path = Path(path)
        self.threads = threads
        check_pte_header(self.path)
        with quiet_native():
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime

            portable_lib._unsafe_reset_threadpool(threads)
            try:
                program = Runtime.get().load_program(self.path)
                #: Each method of the program by name: ``forward``, or an exit network's stages.
                self.methods = {name: program.load_method(name) for name in program.method_names}
            except (
                RuntimeError
            ) as exc:  # the runtime's only error type: "Failed to load program, error: 0x.."
                raise not_loadable(self.path, first_line(exc)) from exc
        self.exits = "forward" not in self.methods

    def _execute(self, tensors: list[Tensor]) -> list[Tensor]:
        if self.exits:
            return run_stages(self.methods, tensors)
        return list(self.methods["forward"].execute(tensors))

    def run(self, *inputs: Tensor | np.ndarray) -> list[np.ndarray]:
        tensors = [torch.as_tensor(x).contiguous() for x in inputs]
        with torch.no_grad():
            outputs = self._execute(tensors)
        return [torch.as_tensor(o).numpy() for o in outputs]

    def run_batched(self, *inputs: Tensor | np.ndarray) -> list[np.ndarray]:
        tensors = [torch.as_tensor(x) for x in inputs]
        rows = [self.run(*(t[i : i + 1] for t in tensors)) for i in range(len(tensors[0]))]
        return [np.concatenate(parts) for parts in zip(*rows, strict=True)]

    def bind(self, inputs: tuple[Tensor, ...]) -> Callable[[], object]:
        """A no-argument call on ``inputs``, converted once (what interleaved timing calls)."""
        tensors = [torch.as_tensor(x).contiguous() for x in inputs]
        return lambda: self._execute(tensors)

    def time(self, *inputs: Tensor | np.ndarray, warmup: int = 10, repeat: int = 100) -> LatencyStats:
        return measure(self.bind(inputs), warmup=warmup, repeat=repeat)


def pt2e_executorch(
    model: nn.Module, example_inputs: tuple[Tensor, ...], calibration: list[tuple[Tensor, ...]], path: Path
) -> Path:
    """ExecuTorch's own int8 flow, the peer graphopt's ``.pte`` is measured against: ``torch.export`` ->
    torchao ``prepare_pt2e`` with ``XNNPACKQuantizer`` (per-channel symmetric weights, int8 activations)
    -> calibration -> ``convert_pt2e`` -> XNNPACK lowering."""
    require_executorch()
    with quiet_export(), quiet_native(), torch.no_grad():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from executorch.exir import to_edge_transform_and_lower
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        captured = torch.export.export(copy.deepcopy(model).eval(), tuple(example_inputs)).module()
        prepared = prepare_pt2e(captured, quantizer)  # type: ignore[arg-type]
        for inputs in calibration:
            prepared(*inputs)
        converted = convert_pt2e(prepared)
        exported = torch.export.export(converted, tuple(example_inputs))
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        program = edge.to_executorch()
    return write_bytes(path, program.buffer, "ExecuTorch program")
