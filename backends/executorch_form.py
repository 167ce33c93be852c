"""The XNNPACK form of graphopt's IR: int8 modules rewritten into the pattern XNNPACK's partitioner delegates
(see :mod:`graphopt.backends.executorch_backend` for the rules and why)."""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import Tensor, nn

from graphopt.backends.executorch_exits import requantize_stage_inputs
from graphopt.backends.xnnpack_int4 import has_group_scales, weight_form
from graphopt.backends.xnnpack_qdq import Int8RoundTrip, quantize_then_dequantize_per_user
from graphopt.errors import ExportError
from graphopt.ir.extensions import ActivationQuantizer, DynamicInt8Linear, EarlyExitNetwork, QuantizedLayer
from graphopt.ir.graph import deep_copy, set_module

_qd = torch.ops.quantized_decomposed


class XnnpackInt8Layer(nn.Module):
    """A frozen int8 conv / linear as XNNPACK's partitioner matches it (module docstring); a linear of
    2..4-bit weights declares the range -8..7, which XNNPACK stores as 4-bit (backends/xnnpack_int4.py)."""

    def __init__(self, layer: QuantizedLayer):
        super().__init__()
        self.functional, self.kwargs = layer.functional, dict(layer.kwargs)
        self.quant_min, self.quant_max = weight_form(layer).quant_range
        self.register_buffer("weight_int8", layer.weight_int8.detach().clone())
        self.register_buffer("weight_scale", layer.weight_scale.detach().clone())
        self.register_buffer("zero_points", torch.zeros(len(layer.weight_scale), dtype=torch.int64))
        self.register_buffer("bias", layer.bias.detach().clone())  # frozen: the dequantized int32 bias

    def forward(self, x: Tensor) -> Tensor:
        zero, scale = self.zero_points, self.weight_scale
        low, high = self.quant_min, self.quant_max
        weight = _qd.dequantize_per_channel(self.weight_int8, scale, zero, 0, low, high, torch.int8)
        return self.functional(x, weight, self.bias, **self.kwargs)


def xnnpack_form(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every int8 module in the form XNNPACK delegates; fp32 models as they are."""
    unsupported = [n for n, m in model.named_modules() if isinstance(m, DynamicInt8Linear)]
    if unsupported:
        raise ExportError(
            f"dynamic int8 layers ({', '.join(unsupported[:3])}) are not lowered to ExecuTorch yet: export "
            "them to ONNX (.onnx), or use a static int8 target (x86-int8, arm-int8) for .pte"
        )
    _refuse_group_scales(model)
    form = deep_copy(model) if isinstance(model, fx.GraphModule) else copy.deepcopy(model)
    for name, module in list(form.named_modules()):
        if isinstance(module, QuantizedLayer) and module.frozen:
            set_module(form, name, XnnpackInt8Layer(module))  # type: ignore[arg-type]
        elif isinstance(module, ActivationQuantizer) and module.frozen:
            set_module(form, name, Int8RoundTrip(module))  # type: ignore[arg-type]
        elif isinstance(module, (QuantizedLayer, ActivationQuantizer)):
            raise ExportError(f"{name} is not calibrated: run calibrate before exporting int8 to ExecuTorch")
    for graph in [m for m in form.modules() if isinstance(m, fx.GraphModule)]:  # exit segments are graphs too
        _keepdim_spatial_means(graph)
        _dequantize_per_user(graph)
        graph.recompile()
    for network in [m for m in form.modules() if isinstance(m, EarlyExitNetwork)]:
        requantize_stage_inputs(network)
    return form.eval()


def _refuse_group_scales(model: nn.Module) -> None:
    grouped = [n for n, m in model.named_modules() if isinstance(m, QuantizedLayer) and m.frozen
               and has_group_scales(m)]  # fmt: skip
    if grouped:
        raise ExportError(
            f"{', '.join(grouped[:3])} have weight scales per group of input channels: XNNPACK takes "
            "group-wise weights only with dynamically quantized activations, not graphopt's static int8 ones "
            "(ExecuTorch 1.5.1 fails to lower them); export to ONNX (.onnx), or quantize without group_size "
            "for .pte"
        )


def _dequantize_per_user(gm: fx.GraphModule) -> None:
    """Each consumer of a quantized value gets its own dequantize, as PT2E's convert leaves them: XNNPACK's
    partitioner takes ``dq -> op -> q`` groups, and one dequantize shared by ops of different partitions
    (a residual input read by a conv and by the add) makes partitions depend on each other in a cycle."""
    for node in list(gm.graph.nodes):
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if not isinstance(module, Int8RoundTrip) or len(node.users) < 2:
            continue
        quantize_then_dequantize_per_user(gm.graph, node.args[0], node, (module.scale, module.zero_point))
        gm.graph.erase_node(node)


def _is_spatial_mean(node: fx.Node) -> bool:
    """``x.mean((2, 3))`` / ``torch.mean(x, dim=(-2, -1))`` on a 4-D value, keepdim False."""
    if not (node.op == "call_method" and node.target == "mean") and node.target is not torch.mean:
        return False
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    shape = getattr(node.args[0], "meta", {}).get("shape")
    if dims is None or shape is None or len(shape) != 4 or node.kwargs.get("keepdim", False):
        return False
    return sorted(d % 4 for d in (dims if isinstance(dims, (tuple, list)) else (dims,))) == [2, 3]


def _global_mean(x: Tensor) -> Tensor:
    return x.mean((2, 3), keepdim=True).flatten(1)


def _keepdim_spatial_means(gm: fx.GraphModule) -> None:
    """XNNPACK takes a global average only with ``keepdim=True`` (its global-pooling form): the classifier
    head's ``mean((2, 3))`` becomes that and a flatten, the same values."""
    for node in gm.graph.nodes:
        if _is_spatial_mean(node):
            node.op, node.target, node.args, node.kwargs = "call_function", _global_mean, node.args[:1], {}
