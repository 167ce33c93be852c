"""The op table of the direct ONNX lowering: one function per module type, function or tensor method.

Each lowering reads the node's arguments and its module's attributes and appends ONNX nodes with exactly
the module's semantics; anything it does not cover (an unusual padding mode, ``return_indices``, a
non-default ``divisor_override``) raises :class:`UnsupportedNode` so that the general exporter handles it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import onnx
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from graphopt.backends.onnx_blocked import blocked_conv_weight, blocked_linear, float_bias
from graphopt.backends.onnx_branches import lower_early_exit
from graphopt.backends.onnx_builder import ModuleLowering, OnnxGraphBuilder, UnsupportedNode
from graphopt.ir.extensions import ActivationQuantizer, EarlyExitNetwork, QuantizedLayer, SpaceToDepth
from graphopt.ir.graph import module_of


def lower_module(b: OnnxGraphBuilder, node: fx.Node, module: nn.Module | None) -> str:
    if isinstance(module, EarlyExitNetwork):
        return lower_early_exit(b, node, module)
    for kind, lowering in _MODULES.items():
        if type(module) is kind:
            return lowering(b, node, module)
    raise UnsupportedNode(f"module {type(module).__name__} at {node.target}")


def lower_function(b: OnnxGraphBuilder, node: fx.Node) -> str:
    lowering = _FUNCTIONS.get(node.target)
    if lowering is None:
        raise UnsupportedNode(f"function {getattr(node.target, '__name__', node.target)}")
    return lowering(b, node)


def lower_method(b: OnnxGraphBuilder, node: fx.Node) -> str:
    lowering = _METHODS.get(str(node.target))
    if lowering is None:
        raise UnsupportedNode(f"tensor method .{node.target}()")
    return lowering(b, node)


def _only_input(b: OnnxGraphBuilder, node: fx.Node) -> str:
    if node.kwargs or len(node.args) != 1:
        raise UnsupportedNode(f"{node.name} has arguments besides its input")
    return b.input_of(node.args[0])


# Layers ---------------------------------------------------------------------------------------------------


def _conv_attrs(conv: nn.Module) -> dict[str, object]:
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise UnsupportedNode(f"{type(conv).__name__} is not a convolution")
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise UnsupportedNode(f"conv padding {conv.padding!r} / {conv.padding_mode}")
    return {
        "kernel_shape": list(conv.kernel_size),
        "strides": list(conv.stride),
        "pads": list(conv.padding) * 2,
        "dilations": list(conv.dilation),
        "group": conv.groups,
    }


def _float_layer(b: OnnxGraphBuilder, node: fx.Node, layer: nn.Module) -> str:
    def parameter(tensor: torch.Tensor, hint: str) -> str:
        return _pinned_float(b, tensor, hint) if b.quantized else b.constant(tensor, hint)

    weight = parameter(layer.weight, f"{node.target}.weight")
    bias = [parameter(layer.bias, f"{node.target}.bias")] if layer.bias is not None else []
    return _apply_layer(b, node, layer, weight, bias)


#: 2^24: integers up to this are exact in float32, so int32 values this large carry a float's precision.
_PINNED_LEVELS = float(1 << 24)


def _pinned_float(b: OnnxGraphBuilder, tensor: torch.Tensor, hint: str) -> str:
    """A float parameter of a layer that stays fp32 inside an int8 graph, as ``DequantizeLinear(int32 q,
    per-channel scale)`` with ``|q| <= 2^24``: float32 precision (relative error <= 2^-25 of the channel's
    largest value).

    Why not a float initializer: onnxruntime 1.21+ (WeightBiasQuantization) quantizes the float weight of any
    Conv/Gemm whose input comes from a DequantizeLinear to per-tensor int8 by itself, silently undoing a
    decision to keep the layer in fp32. It leaves weights that already come from a DequantizeLinear alone,
    and int32 weights are not fused into integer kernels, so the layer really computes in fp32.
    """
    values = tensor.detach().float()
    peak = values.reshape(values.shape[0], -1).abs().amax(dim=1) if values.dim() else values.abs()
    scale = (peak / _PINNED_LEVELS).clamp(min=1e-30)
    q = torch.round(values / scale.reshape(-1, *([1] * (values.dim() - 1)))).to(torch.int32)
    return _dequantize_per_channel(b, q, scale, hint)


def _quantized_layer(b: OnnxGraphBuilder, node: fx.Node, layer: QuantizedLayer) -> str:
    """int8 weight and int32 bias initializers feeding DequantizeLinear (axis 0): ONNX's canonical QDQ.
    Weights of 2..4 bits are an INT4 initializer (two per byte; opset 21), and per-tensor scales are one
    scalar scale (what a per-tensor kernel reads), the bias's too (``s_in * s_w`` is then one number).

    Zero points: weights and biases are symmetric, and an omitted zero point is 0 of the input's type, so
    one is written only where ONNX Runtime needs it to fuse: the weight of a Linear (its QGemm fusion
    requires the weight's zero point; QLinearConv's does not; neither needs the bias's). A zero per output
    channel is 4 bytes for a bias: on a 4-bit network they were 3-10 % of the file."""
    if not layer.frozen:
        assert layer.float_layer is not None
        return _float_layer(b, node, layer.float_layer)
    if layer.group_size is not None:
        return _per_group_layer(b, node, layer)
    name = str(node.target)
    per_tensor = not layer.scheme.per_channel
    weight_scale, bias_scale = layer.weight_scale, layer.bias_scale
    if per_tensor:
        weight_scale, bias_scale = weight_scale[0], bias_scale[0]
    lower_weight = _dequantize_int4 if layer.scheme.sub_byte else _dequantize_per_channel
    scale = b.constant(weight_scale, f"{name}.weight_scale")
    zero = None
    if isinstance(layer.mac_layer, nn.Linear):
        zero = b.constant(torch.zeros(weight_scale.shape, dtype=torch.int8), f"{name}.weight_zero_point")
    weight = lower_weight(b, layer.weight_int8, scale, f"{name}.weight", zero)
    scale = _bias_scale(b, layer, bias_scale, scale, name)
    bias = _dequantize(b, b.constant(layer.bias_int32, f"{name}.bias_int32"), scale, f"{name}.bias", None)
    return _apply_layer(b, node, layer.mac_layer, weight, [bias])


def _per_group_layer(b: OnnxGraphBuilder, node: fx.Node, layer: QuantizedLayer) -> str:
    """A layer with per-group weight scales: INT4 weights read by a blocked DequantizeLinear
    (:mod:`.onnx_blocked`)."""
    name = str(node.target)
    if isinstance(layer.mac_layer, nn.Linear):
        return blocked_linear(b, _only_input(b, node), layer, name)
    weight = blocked_conv_weight(b, layer, name)
    return _apply_layer(b, node, layer.mac_layer, weight, [float_bias(b, layer, name)])


def _bias_scale(
    b: OnnxGraphBuilder, layer: QuantizedLayer, scale: torch.Tensor, weight_scale: str, name: str
) -> str:
    """The bias's scale ``s_b = s_x * s_w`` (per output channel): ``Mul(s_x, s_w)`` of the input's scale
    (the same initializer as the activation quantizer's, being the same float32) and the weight's scale
    initializer, rather than a third vector of C floats. ONNX Runtime's constant folding computes it once at
    load, before the QDQ fusions look at the graph (which then fuse exactly as with a stored scale), and
    unoptimized runs compute the same IEEE float32 product. Written so only when ``float32(s_w) *
    float32(s_x)`` reproduces the layer's bias scale bit for bit; otherwise (and per tensor: one number)
    the scale is stored."""
    s_x = torch.tensor(layer.input_scale, dtype=torch.float32)
    if scale.dim() == 0 or not torch.equal(layer.weight_scale * s_x, scale):
        return b.constant(scale, f"{name}.bias_scale")
    return b.op("Mul", [b.constant(s_x, f"{name}.input_scale"), weight_scale], f"{name}.bias_scale")


def _dequantize_per_channel(
    b: OnnxGraphBuilder, values: torch.Tensor, scale: torch.Tensor | str, name: str, zero: str | None = None
) -> str:
    """``DequantizeLinear(values, scale[, zero], axis=0)`` from the initializer ``<name>_int8`` (or
    ``_int32``) and ``scale``: an initializer's name, or values for one named ``<name>_scale`` (0-d: per
    tensor)."""
    bits = "int8" if values.dtype == torch.int8 else "int32"
    stored = b.constant(values, f"{name}_{bits}")
    scale_name = scale if isinstance(scale, str) else b.constant(scale, f"{name}_scale")
    return _dequantize(b, stored, scale_name, name, zero)


def _dequantize_int4(
    b: OnnxGraphBuilder, values: torch.Tensor, scale: str, name: str, zero: str | None
) -> str:
    """``DequantizeLinear(Cast<int8>(<name>_int4), scale[, 0], axis=0)``: the file holds the weights as an
    INT4 initializer (values in [-7, 7], packed two per byte, low nibble first, by
    ``numpy_helper.from_array``).

    Why the Cast, rather than DequantizeLinear reading INT4 directly: ONNX Runtime 1.32 has no int4 Conv or
    Gemm kernel, and its QDQ-aware constant folding never folds a DequantizeLinear, so ``DQ(int4) -> Conv``
    dequantizes the weights on every run and computes the conv in float (digits CNN: 6.1x slower than fp32).
    A Cast of an initializer is folded once at load, leaving ``DQ(int8 constant) -> Conv``, which ORT fuses
    into QLinearConv / QGemm like any int8 layer: the file is half the int8 one, the speed is int8's, and
    the values (and outputs) are exactly the same."""
    assert int(values.abs().max()) <= 7, f"{name}: int4 weights must lie in [-7, 7]"
    widened = b.op(
        "Cast", [b.int4_constant(values, f"{name}_int4")], f"{name}_as_int8", to=onnx.TensorProto.INT8
    )
    return _dequantize(b, widened, scale, name, zero)


def _dequantize(b: OnnxGraphBuilder, x: str, scale: str, name: str, zero: str | None) -> str:
    return b.op("DequantizeLinear", [x, scale, *([zero] if zero is not None else [])], name, axis=0)


def _apply_layer(b: OnnxGraphBuilder, node: fx.Node, layer: nn.Module, weight: str, bias: list[str]) -> str:
    x = _only_input(b, node)
    if isinstance(layer, nn.Linear):
        # Gemm (what ORT fuses into QGemm) takes 2-D input only; other ranks use MatMul + Add.
        if len(node.args[0].meta.get("shape", ())) == 2:
            return b.op("Gemm", [x, weight, *bias], "linear", transB=1)
        out = b.op("MatMul", [x, b.op("Transpose", [weight], "weight_t", perm=[1, 0])], "matmul")
        return b.op("Add", [out, *bias], "linear") if bias else out
    attrs = _conv_attrs(layer)
    padded = node.args[0]
    # (an exit branch's nodes belong to their segment's module, not to b.gm)
    padding = module_of(b.gm, padded) if isinstance(padded, fx.Node) and padded.graph is b.gm.graph else None
    if isinstance(padding, nn.ZeroPad2d) and len(padded.users) == 1 and len(attrs["pads"]) == 4:
        # Fold the padding into the conv (the Pad then has no reader and is dropped): ORT fuses
        # DQ -> Conv -> Q into QLinearConv only when the conv reads the DequantizeLinear directly.
        left, right, top, bottom = padding.padding
        x = b.input_of(padded.args[0])
        attrs["pads"] = [p + q for p, q in zip(attrs["pads"], (top, left, bottom, right), strict=True)]
    if b.quantized:  # attributes at their ONNX defaults omitted (see .onnx_compact)
        attrs = {k: v for k, v in attrs.items() if not _conv_default(k, v)}
    return b.op("Conv", [x, weight, *bias], "conv", **attrs)


def _conv_default(key: str, value: object) -> bool:
    """Whether a Conv attribute holds ONNX's default (strides and dilations 1, pads 0, group 1)."""
    if key == "group":
        return value == 1
    if key in ("strides", "dilations"):
        return all(v == 1 for v in value)  # type: ignore[attr-defined]
    return key == "pads" and not any(value)  # type: ignore[call-overload]


def _activation_quantizer(b: OnnxGraphBuilder, node: fx.Node, q: ActivationQuantizer) -> str:
    x = _only_input(b, node)
    if not q.frozen:  # observing or never calibrated: passes values through
        return b.op("Identity", [x], "passthrough")
    dtype = torch.uint8 if q.scheme.activations == "uint8" else torch.int8
    scale = b.constant(torch.tensor(q.scale, dtype=torch.float32), f"{node.target}.scale")
    zero = b.constant(torch.tensor(q.zero_point, dtype=dtype), f"{node.target}.zero_point")
    quantized = b.op("QuantizeLinear", [x, scale, zero], "q")
    return b.op("DequantizeLinear", [quantized, scale, zero], "dq")


def _space_to_depth(b: OnnxGraphBuilder, node: fx.Node, m: SpaceToDepth) -> str:
    x = _only_input(b, node)
    if any(m.pads):
        right, bottom = m.pads
        x = _pad_spatial(b, x, top=0, left=0, bottom=bottom, right=right)
    return b.op("SpaceToDepth", [x], "space_to_depth", blocksize=m.block)


def _zero_pad(b: OnnxGraphBuilder, node: fx.Node, m: nn.ZeroPad2d) -> str:
    left, right, top, bottom = m.padding
    return _pad_spatial(b, _only_input(b, node), top=top, left=left, bottom=bottom, right=right)


def _pad_spatial(b: OnnxGraphBuilder, x: str, *, top: int, left: int, bottom: int, right: int) -> str:
    """Zero-pad the two spatial axes of an NCHW tensor (ONNX pads: all begins, then all ends)."""
    pads = b.constant(torch.tensor([0, 0, top, left, 0, 0, bottom, right], dtype=torch.int64), "pads")
    return b.op("Pad", [x, pads], "pad")


_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


def _batchnorm(b: OnnxGraphBuilder, node: fx.Node, bn: nn.Module) -> str:
    if bn.running_mean is None or not bn.affine:
        raise UnsupportedNode("BatchNorm without running statistics or affine parameters")
    params = [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    names = [b.constant(p, f"{node.target}.{kind}") for p, kind in zip(params, _BN_PARAMS, strict=True)]
    return b.op("BatchNormalization", [_only_input(b, node), *names], "bn", epsilon=float(bn.eps))


# Activations and pooling ----------------------------------------------------------------------------------


def _clip(b: OnnxGraphBuilder, x: str, low: float, high: float) -> str:
    bounds = [b.constant(torch.tensor(v, dtype=torch.float32), "clip") for v in (low, high)]
    return b.op("Clip", [x, *bounds], "clip")


def _hardtanh(b: OnnxGraphBuilder, node: fx.Node, m: nn.Module) -> str:
    return _clip(b, _only_input(b, node), float(m.min_val), float(m.max_val))


def _unary(op_type: str) -> ModuleLowering:
    return lambda b, node, _module: b.op(op_type, [_only_input(b, node)], op_type.lower())


def _identity(b: OnnxGraphBuilder, node: fx.Node, _module: nn.Module | None = None) -> str:
    return b.op("Identity", [_only_input(b, node)], "identity")


def _pool_geometry(m: nn.Module) -> dict[str, object]:
    rank = 2 if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) else 1

    def expand(value: object) -> list[int]:
        return list(value) if isinstance(value, (tuple, list)) else [int(value)] * rank

    return {
        "kernel_shape": expand(m.kernel_size),
        "strides": expand(m.stride if m.stride is not None else m.kernel_size),
        "pads": expand(m.padding) * 2,
        "ceil_mode": int(m.ceil_mode),
    }


def _max_pool(b: OnnxGraphBuilder, node: fx.Node, m: nn.Module) -> str:
    if m.return_indices:
        raise UnsupportedNode("MaxPool with return_indices")
    geometry = _pool_geometry(m)
    rank = len(geometry["strides"])
    dilation = list(m.dilation) if isinstance(m.dilation, (tuple, list)) else [m.dilation] * rank
    return b.op("MaxPool", [_only_input(b, node)], "maxpool", dilations=dilation, **geometry)


def _avg_pool(b: OnnxGraphBuilder, node: fx.Node, m: nn.Module) -> str:
    if m.divisor_override is not None:
        raise UnsupportedNode("AvgPool with divisor_override")
    return b.op(
        "AveragePool",
        [_only_input(b, node)],
        "avgpool",
        count_include_pad=int(m.count_include_pad),
        **_pool_geometry(m),
    )


def _is_global(output_size: object) -> bool:
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
    return all(s == 1 for s in sizes)


def _adaptive_avg_pool_module(b: OnnxGraphBuilder, node: fx.Node, m: nn.Module) -> str:
    return _adaptive_avg_pool(b, node.args[0], m.output_size)


def _adaptive_avg_pool(b: OnnxGraphBuilder, x: fx.Node, output_size: object) -> str:
    """Adaptive average pooling of ``x`` (static spatial sizes): global, a plain AveragePool when every
    output size divides its input size (kernel = stride = in / out), else a MatMul per spatial axis with
    :func:`pooling_matrix` (torch's windows overlap or differ in size then, which no ONNX pool expresses)."""
    if _is_global(output_size):
        return b.op("GlobalAveragePool", [b.input_of(x)], "gap")
    shape = list(x.meta.get("shape") or ())
    spatial = shape[2:]
    sizes = list(output_size) if isinstance(output_size, (tuple, list)) else [output_size] * len(spatial)
    if not spatial or len(sizes) != len(spatial) or not all(isinstance(d, int) for d in spatial):
        raise UnsupportedNode(f"adaptive average pooling to {output_size} of shape {shape}")
    sizes = [d if s is None else s for d, s in zip(spatial, sizes, strict=True)]  # None keeps the size
    if all(d % s == 0 for d, s in zip(spatial, sizes, strict=True)):
        kernel = [d // s for d, s in zip(spatial, sizes, strict=True)]
        return b.op("AveragePool", [b.input_of(x)], "pool", kernel_shape=kernel, strides=kernel)
    if len(spatial) > 2:
        raise UnsupportedNode(f"adaptive average pooling to {output_size} over {len(spatial)} axes")
    # The last axis: x [.., W] @ P_w^T [W, w_out]; the one before: P_h [h_out, H] @ y [.., H, w_out].
    pooled = b.op("MatMul", [b.input_of(x), b.constant(pooling_matrix(spatial[-1], sizes[-1]).T, "pool_w")],
                  "pool_w")  # fmt: skip
    if len(spatial) == 2:
        rows = b.constant(pooling_matrix(spatial[0], sizes[0]), "pool_h")
        pooled = b.op("MatMul", [rows, pooled], "pool_h")
    return pooled


def pooling_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """Adaptive average pooling along one axis as a ``[size_out, size_in]`` matrix: row ``i`` averages
    inputs ``floor(i * in / out)`` to ``ceil((i + 1) * in / out) - 1``, torch's window for output ``i``."""
    matrix = torch.zeros(size_out, size_in)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -(-(i + 1) * size_in // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _flatten_module(b: OnnxGraphBuilder, node: fx.Node, m: nn.Flatten) -> str:
    return _flatten(b, node, _only_input(b, node), m.start_dim, m.end_dim)


_MODULES: dict[type[nn.Module], ModuleLowering] = {
    nn.Conv1d: _float_layer,
    nn.Conv2d: _float_layer,
    nn.Conv3d: _float_layer,
    nn.Linear: _float_layer,
    QuantizedLayer: _quantized_layer,
    ActivationQuantizer: _activation_quantizer,
    SpaceToDepth: _space_to_depth,
    nn.ZeroPad2d: _zero_pad,
    nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
    nn.ReLU: _unary("Relu"),
    nn.Sigmoid: _unary("Sigmoid"),
    nn.Tanh: _unary("Tanh"),
    nn.ReLU6: lambda b, node, _m: _clip(b, _only_input(b, node), 0.0, 6.0),
    nn.Hardtanh: _hardtanh,
    nn.Identity: _identity,
    nn.Dropout: _identity,  # the IR is in eval mode
    nn.MaxPool1d: _max_pool,
    nn.MaxPool2d: _max_pool,
    nn.AvgPool1d: _avg_pool,
    nn.AvgPool2d: _avg_pool,
    nn.AdaptiveAvgPool1d: _adaptive_avg_pool_module,
    nn.AdaptiveAvgPool2d: _adaptive_avg_pool_module,
    nn.Flatten: _flatten_module,
}


# Functions and tensor methods -----------------------------------------------------------------------------


def _flatten(b: OnnxGraphBuilder, node: fx.Node, x: str, start: int, end: int) -> str:
    """``flatten(start_dim=1)``: ONNX Flatten(axis=1) gives the same [N, rest]; other spans do not match."""
    rank = len(node.args[0].meta.get("shape", ()))
    if start % max(rank, 1) != 1 or end % max(rank, 1) != rank - 1:
        raise UnsupportedNode(f"flatten({start}, {end}) of a rank-{rank} tensor")
    return b.op("Flatten", [x], "flatten", axis=1)


def _flatten_call(b: OnnxGraphBuilder, node: fx.Node) -> str:
    args = list(node.args[1:])
    start = int(node.kwargs.get("start_dim", args[0] if args else 0))
    end = int(node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1))
    return _flatten(b, node, b.input_of(node.args[0]), start, end)


def _binary(op_type: str) -> Callable[[OnnxGraphBuilder, fx.Node], str]:
    def lower(b: OnnxGraphBuilder, node: fx.Node) -> str:
        if node.kwargs or len(node.args) != 2:
            raise UnsupportedNode(f"{op_type} with alpha or extra arguments")
        return b.op(op_type, [b.input_of(a) for a in node.args], op_type.lower())

    return lower


def _relu_call(b: OnnxGraphBuilder, node: fx.Node) -> str:
    x = node.args[0]
    inplace = node.kwargs.get("inplace", node.args[1] if len(node.args) > 1 else False)
    if inplace and isinstance(x, fx.Node) and len(x.users) > 1:
        raise UnsupportedNode(f"in-place relu {node.name} whose input is read elsewhere")
    return b.op("Relu", [b.input_of(node.args[0])], "relu")


def _cat(b: OnnxGraphBuilder, node: fx.Node) -> str:
    tensors = node.args[0]
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    if not isinstance(tensors, (tuple, list)) or not isinstance(dim, int):
        raise UnsupportedNode("cat of a non-list")
    return b.op("Concat", [b.input_of(t) for t in tensors], "concat", axis=dim)


def _adaptive_avg_pool_call(b: OnnxGraphBuilder, node: fx.Node) -> str:
    size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
    return _adaptive_avg_pool(b, node.args[0], size)


def _mean_call(b: OnnxGraphBuilder, node: fx.Node) -> str:
    """``x.mean(dim=(2, 3))`` of an NCHW tensor: GlobalAveragePool, then Flatten (or kept as N,C,1,1)."""
    x = node.args[0]
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    rank = len(x.meta.get("shape", ())) if isinstance(x, fx.Node) else 0
    spatial = tuple(range(2, rank))
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    if rank < 3 or tuple(d % rank for d in dims) != spatial or node.kwargs.get("dtype") is not None:
        raise UnsupportedNode(f"mean over dims {dims} of a rank-{rank} tensor")
    pooled = b.op("GlobalAveragePool", [b.input_of(x)], "gap")
    return pooled if keepdim else b.op("Flatten", [pooled], "flatten", axis=1)


_FUNCTIONS: dict[object, Callable[[OnnxGraphBuilder, fx.Node], str]] = {
    operator.add: _binary("Add"),
    torch.add: _binary("Add"),
    operator.mul: _binary("Mul"),
    torch.mul: _binary("Mul"),
    torch.cat: _cat,
    torch.flatten: _flatten_call,
    torch.relu: _relu_call,
    F.relu: _relu_call,
    torch.sigmoid: lambda b, node: b.op("Sigmoid", [b.input_of(node.args[0])], "sigmoid"),
    F.adaptive_avg_pool2d: _adaptive_avg_pool_call,
    torch.mean: _mean_call,
}

_METHODS: dict[str, Callable[[OnnxGraphBuilder, fx.Node], str]] = {
    "flatten": _flatten_call,
    "relu": _relu_call,
    "mean": _mean_call,
    "sigmoid": lambda b, node: b.op("Sigmoid", [b.input_of(node.args[0])], "sigmoid"),
}
