"""Lowering to ONNX and running the result in ONNX Runtime.

A GraphModule made only of the ops :mod:`graphopt.backends.onnx_lowering` covers (edge CNNs, int8 included)
is written directly from the IR, which is about 50x faster. Anything else uses
``torch.onnx.export(dynamo=True)`` (torch.export underneath), with a dynamic batch dimension
where the graph allows one, into one self-contained file
(weights inlined; models over 2 GB, the protobuf limit, keep external data next to the file). The file is
checked with ``onnx.checker`` and its outputs compared with the model's on the example inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from graphopt.artifacts.destination import write_failure
from graphopt.backends.dynamic import dynamic_example, named_dims_example
from graphopt.backends.onnx_lowering import PRODUCER, UnsupportedNode, lower_to_onnx
from graphopt.backends.onnx_names import output_names, rename_outputs
from graphopt.backends.onnx_subgraphs import sink_initializers
from graphopt.backends.onnx_transformer import LOWERING_KEY, export_fused_transformer
from graphopt.backends.quiet import quiet_export
from graphopt.backends.timing import LatencyStats, measure
from graphopt.data.dims import DynamicDims
from graphopt.errors import ExportError, first_line
from graphopt.ir.shapes import propagate_shapes
from graphopt.quant.dynamic import onnx_translations
from graphopt.quant.storage import packed_int4_weights

log = logging.getLogger("graphopt")

_PROTOBUF_LIMIT = 2**31 - 1

#: ONNX metadata marking a file graphopt wrote through an outside exporter (its direct lowering sets the
#: producer, the fused transformer route ``LOWERING_KEY``): only such files are graphopt's bug to report.
WRITER_KEY = "graphopt.writer"

try:  # private to torch.onnx: its step-1 failure, "torch.export could not capture the model"
    from torch.onnx._internal.exporter._errors import TorchExportError as _TORCH_EXPORT_FAILED
except ImportError:  # another torch: every failure then reads as a translation failure
    _TORCH_EXPORT_FAILED = ()  # type: ignore[assignment,misc]


def export_onnx(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    opset: int = 18,
    dynamic: DynamicDims | None = None,
    fused_transformer: bool = True,
) -> Path:
    """Export ``model`` to ``path`` and check the file; raise :class:`ExportError` naming the cause.
    Dimension 0 of every input is dynamic, and so are the dimensions ``dynamic`` names. Transformers with
    dynamic int8 layers go through ONNX Runtime's fused kernels (:mod:`.onnx_transformer`) unless
    ``fused_transformer`` is False (benchmarks measure the other route with it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    big = sum(p.numel() * p.element_size() for p in model.state_dict().values()) > _PROTOBUF_LIMIT
    direct = isinstance(model, fx.GraphModule) and not big
    if direct and _export_direct(model, example_inputs, path, opset, dynamic):
        return path
    fused = direct and fused_transformer
    if fused and export_fused_transformer(model, example_inputs, path, dynamic=dynamic) is not None:
        _name_dict_outputs_in(path, model, example_inputs)
        return path

    def run_exporter(inputs: tuple[torch.Tensor, ...], dynamic_shapes: object) -> None:
        with quiet_export(), torch.no_grad():
            torch.onnx.export(
                model,
                inputs,
                str(path),
                dynamo=True,
                opset_version=opset,
                external_data=big,
                dynamic_shapes=dynamic_shapes,
                verbose=False,
                custom_translation_table=onnx_translations(),
            )

    failure = _first_failure(run_exporter, _exporter_attempts(example_inputs, dynamic))
    if failure is not None:  # a disk that refused the file is said as such, not as the model's fault
        raise write_failure(failure, Path(path), "ONNX model") or ExportError(
            exporter_failure(failure, opset)
        ) from failure
    if not big:
        _finish_exported(path, model, example_inputs)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX file fails onnx.checker: {first_line(exc)}") from exc
    return path


def _exporter_attempts(
    example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims | None
) -> list[tuple[tuple[torch.Tensor, ...], object]]:
    """Example inputs and ``dynamic_shapes`` to try in turn: the batch and the named dims dynamic, then,
    for a graph that fixes the batch size, the batch static (the named dims stay dynamic: a file that
    dropped them would fail at every other length)."""
    first = dynamic_example(example_inputs, dynamic)
    if dynamic is not None and dynamic.named():
        return [first, named_dims_example(example_inputs, dynamic)]
    return [first, (example_inputs, None)]


def _first_failure(
    run: Callable[[tuple[torch.Tensor, ...], object], None],
    attempts: list[tuple[tuple[torch.Tensor, ...], object]],
) -> Exception | None:
    """None as soon as one attempt exports; else the first attempt's exception (the form the caller asked
    for: the later ones only relax it)."""
    first: Exception | None = None
    for inputs, shapes in attempts:
        try:
            run(inputs, shapes)
        except Exception as exc:  # the exporter raises many types; each means "try the next form"
            first = first or exc
        else:
            return None
    return first


def exporter_failure(exc: BaseException, opset: int) -> str:
    """What went wrong in ``torch.onnx.export(dynamo=True)`` and what to do, by where it failed: a missing
    onnxscript; torch.export's capture (step 1; data-dependent control flow there is exported by no
    backend as it is, TorchScript tracing would bake one branch in); the translation to ONNX (steps 2-3,
    after a capture without such control flow: TorchScript, which runs every PyTorch op, works)."""
    chain = exception_chain(exc)
    missing = next((e for e in chain if isinstance(e, ImportError) and _names_onnxscript(e)), None)
    if missing is not None:
        return (
            "ONNX export needs the onnxscript package, which torch.onnx's exporter imports and is not "
            f"installed ({type(missing).__name__}: {first_line(missing)}): pip install onnxscript"
        )
    in_capture = [i for i, e in enumerate(chain) if isinstance(e, _TORCH_EXPORT_FAILED)]
    cause = chain[in_capture[-1] + 1] if in_capture and in_capture[-1] + 1 < len(chain) else exc
    said = f"{type(cause).__name__}: {first_line(cause)}"
    if any(isinstance(e, GuardOnDataDependentSymNode) for e in chain):
        return (
            f"ONNX export failed: torch.export cannot capture the model ({said}). Data-dependent Python "
            "control flow (an if or a loop on tensor values) is exported by no backend as it is "
            "(TorchScript's tracing would bake one branch in): rewrite it with torch.where or torch.cond."
        )
    if in_capture:
        return (
            f"ONNX export failed: torch.export cannot capture the model ({said}). Make that code "
            "torch.export-friendly (https://pytorch.org/docs/stable/export.html), or optimize the part of "
            "the model that computes tensors and run the rest outside it."
        )
    return (
        f"ONNX export failed ({said}): the model was captured but could not be translated to ONNX opset "
        f"{opset}; export with backend='torchscript' (.pt), which runs every PyTorch operator."
    )


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (each once: torch re-raises)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _names_onnxscript(exc: ImportError) -> bool:
    return (exc.name or "").split(".")[0] == "onnxscript" or "onnxscript" in str(exc)


def _finish_exported(path: Path, model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> None:
    """One load and save of what torch.onnx wrote: the weights of ``If`` branches (early exits) moved
    inside them (:mod:`.onnx_subgraphs`), dict outputs named after their keys, and graphopt's mark."""
    proto = onnx.load(str(path))
    sink_initializers(proto.graph)
    name_dict_outputs(proto, model, example_inputs)
    mark_written(proto, "torch.onnx")
    onnx.save(proto, str(path))


def _name_dict_outputs_in(
    path: Path, model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]
) -> None:
    proto = onnx.load(str(path))
    if name_dict_outputs(proto, model, example_inputs):
        onnx.save(proto, str(path))


def name_dict_outputs(
    proto: onnx.ModelProto, model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]
) -> bool:
    """Name ``proto``'s outputs after the keys of ``model``'s output dict or ``ModelOutput`` fields, as
    the README promises, whichever exporter wrote it (:mod:`.onnx_names`); False when nothing changed."""
    with torch.no_grad():
        names = output_names(model(*example_inputs))
    return names is not None and rename_outputs(proto, names)


def mark_written(proto: onnx.ModelProto, exporter: str) -> None:
    """Record in the file that graphopt wrote it (through ``exporter``): a runtime that refuses the file
    then points at graphopt (:class:`OnnxRunner`)."""
    kept = [p for p in proto.metadata_props if p.key != WRITER_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=WRITER_KEY, value=exporter)


def written_by_graphopt(path: Path) -> bool:
    """Whether graphopt wrote the ONNX file at ``path``: its own lowering, or an exporter it ran."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not an ONNX file at all (protobuf's errors vary): not one graphopt wrote
        return False
    keys = {p.key for p in model.metadata_props}
    return model.producer_name == PRODUCER or bool(keys & {WRITER_KEY, LOWERING_KEY})


def check_onnx_dtypes(model: torch.nn.Module) -> None:
    """ONNX Runtime's CPU kernels for Conv (and most others) are float32 (float16 on some builds): a
    float64 model is refused before anything is written, with the remedy."""
    doubles = sorted({str(p.dtype) for p in model.parameters() if p.dtype == torch.float64})
    if doubles:
        raise ExportError(
            "the model's weights are float64, which ONNX Runtime has no CPU Conv/Gemm kernels for: "
            "optimize model.float() (or export with backend='torchscript', which runs float64)"
        )


def _export_direct(
    gm: fx.GraphModule,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    dynamic: DynamicDims | None,
) -> bool:
    """Write ``gm`` with the direct lowering; False (nothing written) when it has an op it does not cover."""
    if any("dtype" not in n.meta for n in gm.graph.nodes if n.op != "output"):
        propagate_shapes(gm, example_inputs)
    try:
        model = lower_to_onnx(gm, opset, dynamic=dynamic, check=False)
    except UnsupportedNode as exc:
        log.debug("direct ONNX lowering not used: %s", exc)
        return False
    name_dict_outputs(model, gm, example_inputs)  # a lifted graph returns its dict (ModelOutput) flat
    onnx.save(model, str(path))
    del model  # the file is the model now: the check reads it rather than serializing a copy in memory
    onnx.checker.check_model(str(path))
    return True


def exporter_of(path: Path) -> str:
    """Which exporter wrote an artifact: graphopt's direct lowering, torch.onnx, or (not ONNX) torch.jit."""
    if path.suffix != ".onnx":
        return "torch.jit"
    model = onnx.load(str(path), load_external_data=False)
    lowering = {p.key: p.value for p in model.metadata_props}.get(LOWERING_KEY)
    if lowering:
        return lowering
    producer = model.producer_name
    if producer != PRODUCER:
        return f"torch.onnx ({producer or 'unknown'})"
    int4 = packed_int4_weights(path)  # how those run: the artifact:weight_storage note (quant/storage.py)
    return "graphopt's direct lowering" + (f", INT4 weights in {int4} layers" if int4 else "")


class OnnxRunner:
    """Loads an ONNX file into an ORT session with pinned threads and runs or times it."""

    def __init__(self, path: str | Path, *, threads: int = 1, optimization: str = "all"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT's own exception types: an invalid graph, an op it lacks
            raise ExportError(_refused(self.path, exc)) from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        first_dims = [i.shape[0] if i.shape else None for i in self.session.get_inputs()]
        #: The batch size the file was exported with when its batch dimension is static, else None.
        self.fixed_batch: int | None = first_dims[0] if all(isinstance(d, int) for d in first_dims) else None

    def run_batched(self, *inputs: torch.Tensor | np.ndarray) -> list[np.ndarray]:
        """Like :meth:`run`, for any batch size: a static-batch file is fed in slices of its batch size."""
        if self.fixed_batch is None:
            return self.run(*inputs)
        n, step = len(inputs[0]), self.fixed_batch
        parts = [self.run(*(x[i : i + step] for x in inputs)) for i in range(0, n, step)]
        return [np.concatenate(outs) for outs in zip(*parts, strict=True)]

    def run(self, *inputs: torch.Tensor | np.ndarray) -> list[np.ndarray]:
        feeds = {name: _to_numpy(x) for name, x in zip(self.input_names, inputs, strict=True)}
        return self.session.run(None, feeds)

    def time(self, *inputs: torch.Tensor | np.ndarray, warmup: int = 10, repeat: int = 100) -> LatencyStats:
        feeds = {name: _to_numpy(x) for name, x in zip(self.input_names, inputs, strict=True)}
        return measure(lambda: self.session.run(None, feeds), warmup=warmup, repeat=repeat)


def _refused(path: Path, exc: Exception) -> str:
    """Why ONNX Runtime refused ``path``: a graphopt bug to report only when graphopt wrote the file."""
    said = f"ONNX Runtime {ort.__version__} cannot load {path.name}: {first_line(exc).rstrip('.')}"
    if written_by_graphopt(path):
        return f"{said}; please report it with the model (graphopt wrote a graph this runtime refuses)"
    return (
        f"{said}. graphopt did not write this file: check that it is a complete ONNX model whose opset and "
        f"operators this onnxruntime supports (upgrade onnxruntime, or re-export it for this version)"
    )


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
