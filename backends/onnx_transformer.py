"""Transformers with dynamic int8 lowered the way ONNX Runtime runs them fastest: its own fused kernels.

ONNX Runtime's transformer optimizer (``onnxruntime.transformers.optimizer``) fuses a BERT-style encoder
into ``Attention``, ``SkipLayerNormalization``, ``EmbedLayerNormalization`` and ``BiasGelu``, and its
``quantize_dynamic`` turns ``Attention`` into ``QAttention`` and each MatMul into ``DynamicQuantizeMatMul``.
Its pattern matcher recognises the graphs of the TorchScript exporter with explicit attention
(``softmax(QK^T * s + mask) V``), not torch.export's graphs and not ``scaled_dot_product_attention``: on
all-MiniLM-L6-v2 the torch.export file got no Attention fusion and ran 0.88x the fused one
(``graphopt bench minilm``, README). So a graph with graphopt's dynamic int8 layers is lowered as:

1. an fp32 twin of the IR: each int8 Linear becomes an fp32 Linear holding exactly its dequantized
   weights ``W_q[j] * s[j]`` (int8 embeddings stay as they are: an int8 ``Gather`` and a per-row scale),
   each ``scaled_dot_product_attention`` the explicit form above, each module called under its full
   dotted name (so every ONNX node names the layer it came from);
2. ``torch.onnx.export(dynamo=False)`` of the twin, then ORT's optimizer (fusions recorded in the file);
3. ORT's ``quantize_dynamic`` on exactly the layers graphopt made int8: per-channel s8 weights with the
   same range, so ORT's re-quantization of ``W_q * s`` gives back ``W_q``; layers graphopt kept fp32
   (fall-back) stay fp32, and an ``Attention`` stays fp32 when any of its Q, K, V projections did.

The graph is expected cleaned up (``remove_identity``: eval-mode dropouts and no-op reshapes between the
matmuls hide the pattern), as every target's pipeline does. When the optimizer fuses no ``Attention``
this route is not taken (:func:`export_fused_transformer`
returns None) and the caller lowers through torch.export as for any other model.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
import torch.fx as fx
from torch import nn

from graphopt.backends.quiet import quiet_export, quiet_ort
from graphopt.data.dims import DynamicDims
from graphopt.ir.extensions import DynamicInt8Linear
from graphopt.ir.shapes import propagate_shapes

log = logging.getLogger("graphopt")
LOWERING_KEY = "graphopt.lowering"  # ONNX metadata: how the file was written (read by exporter_of)
_SDPA = (
    torch.nn.functional.scaled_dot_product_attention,
    torch.ops.aten.scaled_dot_product_attention.default,
)


def explicit_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):  # type: ignore[no-untyped-def]
    """``softmax(Q K^T * s + M) V`` written out, the form ORT's optimizer fuses into ``Attention``; a
    boolean mask becomes the additive ``0 / finfo.min`` mask transformers' eager attention adds."""
    s = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query, key.transpose(2, 3)) * s
    if is_causal:
        n, m = query.shape[-2], key.shape[-2]
        attn_mask = torch.ones(n, m, dtype=torch.bool, device=query.device).tril(m - n)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            zero = torch.zeros((), dtype=scores.dtype)
            lowest = torch.full((), torch.finfo(scores.dtype).min, dtype=scores.dtype)
            attn_mask = torch.where(attn_mask, zero, lowest)
        scores = scores + attn_mask
    return torch.matmul(torch.softmax(scores, dim=-1), value)


def _slice(x: torch.Tensor, dim: int = 0, start: int | None = None, end: int | None = None, step: int = 1):  # type: ignore[no-untyped-def]
    return x[(slice(None),) * (dim % x.dim()) + (slice(start, end, step),)]


#: aten ops whose size arguments the TorchScript tracer would bake in as constants when called through
#: ``torch.ops.aten`` (its sizes are traced values only in the Tensor-method and indexing bindings): the
#: twin calls the method form, so a file traced at 128 tokens runs at 16 or 256.
_SIZED = {
    torch.ops.aten.slice.Tensor: _slice,
    torch.ops.aten.expand.default: torch.Tensor.expand,
    torch.ops.aten.view.default: torch.Tensor.view,
    torch.ops.aten.reshape.default: torch.Tensor.reshape,
}


def export_fused_transformer(
    gm: fx.GraphModule,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    *,
    opset: int = 17,
    dynamic: DynamicDims | None = None,
) -> dict[str, int] | None:
    """Write ``gm`` to ``path`` by the fused route (module docstring) and return the fusions that fired;
    None, writing nothing, when ``gm`` has no dynamic int8 layer, has per-token ones, or ORT fuses no
    ``Attention``."""
    int8 = {name for name, m in gm.named_modules() if isinstance(m, DynamicInt8Linear)}
    if not int8 or any(m.per_token for m in gm.modules() if isinstance(m, DynamicInt8Linear)):
        return None  # ORT's fused kernels take one activation scale per call, not one per token
    size = attention_size(gm, example_inputs)  # propagates shapes, which the twin's scale folding reads
    twin, flat = fp32_twin(gm)
    with tempfile.TemporaryDirectory() as tmp:
        exported, fused = Path(tmp) / "fp32.onnx", Path(tmp) / "fused.onnx"
        try:
            _torchscript_onnx(twin, example_inputs, exported, opset, dynamic)
            fusions = ort_transformer_fusions(exported, fused, *size)
        except Exception as exc:  # either tool raises many types; torch.export is the fallback
            log.debug("fused transformer lowering not used: %s: %s", type(exc).__name__, exc)
            return None
        if not fusions.get("Attention"):
            log.debug("fused transformer lowering not used: ORT fused no Attention (%s)", fusions)
            return None
        model = onnx.load(str(exported))
        chosen = _nodes_to_quantize(onnx.load(str(fused)), model, {flat[n] for n in int8 if n in flat})
        if not chosen:  # ORT would read an empty list as "quantize everything"
            log.debug("fused transformer lowering not used: no fused node carries an int8 layer")
            return None
        reduce_range = any(m.reduce_range for m in gm.modules() if isinstance(m, DynamicInt8Linear))
        quantized = Path(tmp) / "int8.onnx"
        quantize_fused(fused, quantized, chosen, reduce_range)
        final = onnx.load(str(quantized))
        described = describe_fusions(fusions)
        final.metadata_props.add(
            key=LOWERING_KEY,
            value=(
                f"torch.onnx (TorchScript) + ONNX Runtime's transformer optimizer ({described}) + its "
                f"quantize_dynamic on graphopt's {len(chosen)} int8 nodes"
            ),
        )
        onnx.save(final, str(path))
    return fusions


def attention_size(gm: fx.GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """``(heads, hidden)`` from the first attention's query ``[batch, heads, seq, head_dim]``; ORT's
    optimizer, left to read them from the graph (0, 0), found no Attention in MiniLM's graph."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in _SDPA:
            if "shape" not in node.args[0].meta:
                propagate_shapes(gm, example_inputs)
            _, heads, _, head_dim = node.args[0].meta["shape"]
            return heads, heads * head_dim
    return 0, 0


def fp32_twin(gm: fx.GraphModule) -> tuple[fx.GraphModule, dict[str, str]]:
    """The fp32 twin (module docstring, step 1) and the map from each module's name to its flat name."""
    with warnings.catch_warnings():  # pytree's deprecation notice from copying the graph's output spec
        warnings.simplefilter("ignore", FutureWarning)
        graph = copy.deepcopy(gm.graph)
    root: dict[str, object] = {}
    flat: dict[str, str] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            flat[node.target] = name = node.target.replace(".", "__")
            root[name] = _dequantized(gm.get_submodule(node.target))
            node.target = name
        elif node.op == "get_attr":
            root[node.target] = _attribute(gm, node.target)
        elif node.op == "call_function" and node.target in _SDPA:
            node.target = explicit_attention
        elif node.op == "call_function" and node.target in _SIZED:
            node.target = _SIZED[node.target]
    for node in graph.nodes:
        if node.op == "call_function" and node.target is explicit_attention:
            _fold_attention_scale(node, root)
    twin = fx.GraphModule(root, graph)
    twin.recompile()
    return twin, flat


def _fold_attention_scale(node: fx.Node, root: dict[str, object]) -> None:
    """Move an attention's explicit ``scale`` into its query projection: ORT's fused (Q)Attention scales by
    ``1 / sqrt(head_dim)`` of the weights it is given and takes no other scale, while a model whose head
    width was pruned keeps the scale of its original width (MiniLM pruned from 32 to 24 channels a head:
    ``1/sqrt(32)``; the fused file computed ``1/sqrt(24)``, cosine 0.988 to the model). Exact in fp32:

        softmax(s q k^T) = softmax((r q) k^T / sqrt(d)),   r = s sqrt(d),   r q = (r W) x + r b

    and int8 weights scaled by ``r`` quantize to the same integers with ``r`` times the scale. Left as it
    is where the query does not come from one Linear through reshapes alone."""
    scale, shape = node.kwargs.get("scale"), getattr(node.args[0], "meta", {}).get("shape")
    if scale is None or shape is None:
        return
    ratio = float(scale) * math.sqrt(shape[-1])
    if abs(ratio - 1) < 1e-6:
        return
    source = node.args[0]
    while isinstance(source, fx.Node) and source.op in ("call_method", "call_function") and source.args:
        if len(source.users) != 1:
            return
        source = source.args[0]
    if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
        return
    query = root[str(source.target)]
    if not isinstance(query, nn.Linear):
        return
    scaled = copy.deepcopy(query)  # the twin's own: the optimized model keeps its layer
    with torch.no_grad():
        scaled.weight.mul_(ratio)
        if scaled.bias is not None:
            scaled.bias.mul_(ratio)
    root[str(source.target)] = scaled
    node.kwargs = {k: v for k, v in node.kwargs.items() if k != "scale"}


def _attribute(gm: fx.GraphModule, target: str) -> object:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def _dequantized(module: nn.Module) -> nn.Module:
    if isinstance(module, DynamicInt8Linear):
        layer = nn.Linear(module.in_features, module.out_features)
        layer.weight.data = (module.weight_t.float() * module.weight_scale).t().contiguous()
        layer.bias.data = module.bias.clone()
        return layer
    return module  # int8 embeddings export as they are: int8 Gather, Cast, Mul by the row's scale


class _Call(nn.Module):
    """The TorchScript exporter reads ``model.graph`` as a TorchScript graph: a GraphModule's own fx
    ``graph`` attribute must not be the exported module's."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__()
        self.g = gm

    def forward(self, *inputs: torch.Tensor) -> object:
        return self.g(*inputs)


def _torchscript_onnx(
    twin: fx.GraphModule,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    dynamic: DynamicDims | None,
) -> None:
    names = [n.target for n in twin.graph.nodes if n.op == "placeholder"]
    torchscript_onnx(_Call(twin), inputs, path, names, dynamic, opset=opset)


def torchscript_onnx(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    names: list[str],
    dynamic: DynamicDims | None,
    *,
    opset: int = 17,
) -> None:
    """``torch.onnx.export(dynamo=False)``, quietly: the exporter whose graphs ORT's transformer optimizer
    recognises. Inputs are called ``names``; dimension 0 and the dimensions ``dynamic`` names are symbolic."""
    dims = dynamic.dims if dynamic is not None else tuple({} for _ in names)
    axes = {name: {0: "batch", **extra} for name, extra in zip(names, dims, strict=True)}
    with quiet_export(), torch.no_grad():
        torch.onnx.export(
            model, inputs, str(path), dynamo=False, opset_version=opset, input_names=names, dynamic_axes=axes
        )


def describe_fusions(fusions: dict[str, int]) -> str:
    return ", ".join(f"{op} x{n}" for op, n in sorted(fusions.items())) or "none fired"


def ort_transformer_fusions(
    source: Path, target: Path, heads: int = 0, hidden: int = 0, *, right_padding_only: bool = False
) -> dict[str, int]:
    """Run ONNX Runtime's transformer optimizer (``model_type="bert"``, graph fusions only: ``opt_level=0``
    leaves ORT's own session optimizations to the session; ``heads = hidden = 0`` reads them from the
    graph), write ``target`` and return the fusions that fired.

    The fused ``Attention`` reads the raw 2D attention mask, as the model does. ORT's own default for BERT
    (``right_padding_only=True``, what Optimum's flow gets) replaces the mask by ``ReduceSum(mask)``, one
    length per sequence, which is the model only when every mask is ones then zeros: a left-padded batch,
    or zeros anywhere else, attends to the wrong tokens."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.use_raw_attention_mask(not right_padding_only)
    source, target = Path(source).absolute(), Path(target).absolute()  # quiet_ort runs in a scratch folder
    with quiet_ort():
        optimized = optimize_model(
            str(source),
            model_type="bert",
            num_heads=heads,
            hidden_size=hidden,
            opt_level=0,
            optimization_options=options,
        )
        optimized.save_model_to_file(str(target))
    return {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}


def _nodes_to_quantize(fused: onnx.ModelProto, exported: onnx.ModelProto, int8: set[str]) -> list[str]:
    """The fused graph's nodes that carry graphopt's int8 Linear layers (flat names): their MatMul or
    Gemm, and each ``Attention`` whose Q, K and V projections are all int8."""

    def layer_of(node: onnx.NodeProto) -> str | None:
        parts = node.name.split("/")  # "/g/<flat module name>/MatMul"
        return parts[-2] if len(parts) >= 2 and node.op_type in ("MatMul", "Gemm") else None

    # An Attention replaced the Q, K, V MatMuls that read its input: which layers each input fed.
    projections: dict[str, set[str]] = {}
    for node in exported.graph.node:
        if (layer := layer_of(node)) is not None:
            projections.setdefault(node.input[0], set()).add(layer)
    chosen = []
    for node in fused.graph.node:
        attention_int8 = node.op_type == "Attention" and projections.get(node.input[0], {""}) <= int8
        if layer_of(node) in int8 or attention_int8:
            chosen.append(node.name)
            if (
                node.op_type == "Gemm"
            ):  # quantize_dynamic rewrites a Gemm to a MatMul named so, then quantizes
                chosen.append(node.name + "_MatMul")
    return chosen


def quantize_fused(source: Path, target: Path, nodes: list[str] | None, reduce_range: bool) -> None:
    """ORT's ``quantize_dynamic`` on a file its transformer optimizer fused: s8 per-channel weights, on
    ``nodes`` (None: every node ORT quantizes)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_ort():
        # The fused ops are in ORT's contrib domain, which ONNX shape inference cannot type: say float.
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            nodes_to_quantize=nodes,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
