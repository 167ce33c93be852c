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
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.fx as fx

from graphopt.backends.dynamic import DynamicDims, dynamic_example
from graphopt.backends.onnx_lowering import PRODUCER, UnsupportedNode, lower_to_onnx
from graphopt.backends.onnx_names import output_names, rename_outputs
from graphopt.backends.onnx_subgraphs import sink_initializers
from graphopt.backends.onnx_transformer import LOWERING_KEY, export_fused_transformer
from graphopt.backends.quiet import quiet_export
from graphopt.backends.timing import LatencyStats, measure
from graphopt.errors import ExportError, first_line
from graphopt.quant.dynamic import onnx_translations
from graphopt.shapes import propagate_shapes

log = logging.getLogger("graphopt")

_PROTOBUF_LIMIT = 2**31 - 1


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
        _name_dict_outputs(path, model, example_inputs)
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

    try:
        try:
            run_exporter(*dynamic_example(example_inputs, dynamic))
        except Exception:  # a graph that fixes the batch size exports with static shapes
            run_exporter(example_inputs, None)
    except Exception as exc:  # the exporter raises many types; all mean the same to the user
        raise ExportError(
            f"ONNX export failed ({type(exc).__name__}: {first_line(exc)}). Data-dependent Python control "
            "flow cannot be exported: rewrite it with torch.where or torch.cond, or export with "
            "backend='torchscript'."
        ) from exc
    if not big:
        _sink_branch_weights(path)
        _name_dict_outputs(path, model, example_inputs)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX file fails onnx.checker: {first_line(exc)}") from exc
    return path


def _name_dict_outputs(path: Path, model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> None:
    """Dict outputs keep their keys as ONNX output names (:mod:`.onnx_names`)."""
    with torch.no_grad():
        names = output_names(model(*example_inputs))
    if names is None:
        return
    proto = onnx.load(str(path))
    if rename_outputs(proto, names):
        onnx.save(proto, str(path))


def check_onnx_dtypes(model: torch.nn.Module) -> None:
    """ONNX Runtime's CPU kernels for Conv (and most others) are float32 (float16 on some builds): a
    float64 model is refused before anything is written, with the remedy."""
    doubles = sorted({str(p.dtype) for p in model.parameters() if p.dtype == torch.float64})
    if doubles:
        raise ExportError(
            "the model's weights are float64, which ONNX Runtime has no CPU Conv/Gemm kernels for: "
            "optimize model.float() (or export with backend='torchscript', which runs float64)"
        )


def _sink_branch_weights(path: Path) -> None:
    """Put the weights of ``If`` branches (early exits) inside them: see :mod:`.onnx_subgraphs`."""
    model = onnx.load(str(path))
    if sink_initializers(model.graph):
        onnx.save(model, str(path))


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
        model = lower_to_onnx(gm, opset, dynamic=dynamic)
    except UnsupportedNode as exc:
        log.debug("direct ONNX lowering not used: %s", exc)
        return False
    onnx.save(model, str(path))
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
    return "graphopt's direct lowering" if producer == PRODUCER else f"torch.onnx ({producer or 'unknown'})"


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
            raise ExportError(
                f"ONNX Runtime {ort.__version__} cannot load {self.path.name}: {first_line(exc)}; "
                "please report it with the model (graphopt wrote a graph this runtime refuses)"
            ) from exc
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


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
