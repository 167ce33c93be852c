"""Lowering an int8 IR to PyTorch's quantized kernels, for TorchScript artifacts that compute in integers.

The IR simulates int8 in float (``quantize -> dequantize`` pairs, int8 weights dequantized in forward), which
is right for ONNX (Runtime fuses the pairs into integer kernels) but slow in PyTorch. This lowering rewrites
the graph onto quantized tensors:

- a frozen :class:`~graphopt.quant.ActivationQuantizer` on a float value becomes ``quantize_per_tensor``;
  on a value that a quantized op already produced with its scale, it disappears;
- a frozen :class:`~graphopt.quant.QuantizedLayer` whose input is quantized becomes
  ``torch.ao.nn.quantized`` Conv / Linear (with ReLU fused when the policy quantized after a ReLU) whose
  output scale and zero point are those of the quantizer after it; weights are the same int8 values, the
  bias is requantized by the kernel with ``s_in * s_w`` exactly as the IR's int32 bias;
- residual adds become ``quantized.add`` (``add_relu``), channel concat ``quantized.cat``; pooling, flatten,
  ReLU, zero padding and space-to-depth run on quantized tensors as they are;
- any other op gets its quantized inputs dequantized first, and outputs leave as float.

Activations are ``quint8``: an s8 activation with zero point ``z`` (arm-int8) is the same set of values as
u8 with zero point ``z + 128``, so both targets use the same kernels. ``engine`` is ``x86`` (FBGEMM/oneDNN,
AVX2 u8 x s8) or ``qnnpack`` (the ARM engine).
"""

from __future__ import annotations

import contextlib
import operator
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.fx as fx
from torch import nn

from graphopt.ir.extensions import ActivationQuantizer, QuantizedLayer, SpaceToDepth
from graphopt.ir.graph import deep_copy, module_of

Engine = Literal["x86", "qnnpack"]
_RELU = (nn.ReLU,)
_RELU_FUNCTIONS = (torch.relu, nn.functional.relu)
_ADD = (operator.add, torch.add)
#: Functions that run on quantized tensors and keep their scale.
_Q_FUNCTIONS = (*_RELU_FUNCTIONS, torch.flatten, nn.functional.adaptive_avg_pool2d, nn.functional.max_pool2d)


def quint8_qparams(q: ActivationQuantizer) -> tuple[float, int]:
    """The quantizer's (scale, zero point) as quint8 (s8 zero points shift by 128: same values)."""
    assert q.scale is not None and q.zero_point is not None
    shift = 128 if q.scheme.activations == "int8" else 0
    return q.scale, q.zero_point + shift


@contextlib.contextmanager
def quantized_engine(engine: Engine) -> Iterator[None]:
    """Make ``engine`` current for a while: weights are packed (and unpacked from a file) for the engine
    current at that moment; running them does not depend on it."""
    saved = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # quantized tensors are deprecated upstream (2.13)
            yield
    finally:
        torch.backends.quantized.engine = saved


def lower_to_quantized_kernels(gm: fx.GraphModule, engine: Engine) -> fx.GraphModule:
    """A new GraphModule computing ``gm`` with PyTorch's quantized kernels (``gm`` is not modified)."""
    gm = deep_copy(gm)
    with quantized_engine(engine):
        _Rewriter(gm).run()
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


class _Rewriter:
    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        #: Nodes whose value is a quantized tensor after the rewrite, with its (scale, zero point).
        self.qparams: dict[fx.Node, tuple[float, int]] = {}

    def run(self) -> None:
        for node in list(self.gm.graph.nodes):
            module = module_of(self.gm, node)
            if isinstance(module, ActivationQuantizer) and module.frozen:
                self._quantizer(node, module)
            elif isinstance(module, QuantizedLayer) and _has_kernel(module) and self._is_q(node.args[0]):
                self._layer(node, module)
            elif node.op == "call_function" and node.target in _ADD and self._all_q(node.args[:2]):
                self._binary(node, "add")
            elif node.op == "call_function" and node.target is torch.cat and self._all_q(node.args[0]):
                self._cat(node)
            elif node.op in ("call_module", "call_function", "call_method") and self._keeps_q(node, module):
                self.qparams[node] = self.qparams[node.args[0]]
            elif node.op != "placeholder":
                self._dequantize_inputs(node)

    # --- predicates ---------------------------------------------------------------------------------------

    def _is_q(self, value: object) -> bool:
        return isinstance(value, fx.Node) and value in self.qparams

    def _all_q(self, values: object) -> bool:
        return isinstance(values, (list, tuple)) and len(values) > 0 and all(self._is_q(v) for v in values)

    def _keeps_q(self, node: fx.Node, module: nn.Module | None) -> bool:
        """Ops that take and return quantized tensors unchanged in meaning (same scale)."""
        if not node.args or not self._is_q(node.args[0]):
            return False
        if node.args[1:] and any(isinstance(a, fx.Node) for a in node.args[1:]):
            return False
        pooling = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout)
        if module is not None:  # zero padding pads with the zero point; space-to-depth permutes: same scale
            return isinstance(module, (*_RELU, *pooling, nn.ZeroPad2d, SpaceToDepth))
        functions = (
            *_RELU_FUNCTIONS,
            torch.flatten,
            nn.functional.adaptive_avg_pool2d,
            nn.functional.max_pool2d,
        )
        if node.op == "call_function":
            return node.target in functions
        return node.op == "call_method" and node.target in ("flatten", "relu", "mean", "view", "reshape")

    # --- rewrites -------------------------------------------------------------------------------------------

    def _quantizer(self, node: fx.Node, q: ActivationQuantizer) -> None:
        source, qparams = node.args[0], quint8_qparams(q)
        if self._is_q(source) and self.qparams[source] == qparams:  # produced at this scale (_output_qparams)
            node.replace_all_uses_with(source)
            return
        with self.gm.graph.inserting_before(node):
            if self._is_q(source):  # quantized at another scale upstream (e.g. before a max-pool): requantize
                source = self.gm.graph.call_method("dequantize", (source,))
            if len(node.meta.get("shape", ())) == 4:  # the int8 conv kernels are NHWC; NCHW costs a copy each
                source = self.gm.graph.call_method(
                    "contiguous", (source,), {"memory_format": torch.channels_last}
                )
            quantized = self.gm.graph.call_function(
                torch.quantize_per_tensor, (source, *qparams, torch.quint8)
            )
        node.replace_all_uses_with(quantized)
        self.qparams[quantized] = qparams

    def _output_qparams(self, node: fx.Node) -> tuple[tuple[float, int], bool] | None:
        """The (scale, zero point) the op must produce and whether a ReLU between is fused, from the quantizer
        that follows it alone (directly, or after a ReLU that is its only user)."""
        users = list(node.users)
        if len(users) != 1:
            return None
        user, relu = users[0], False
        if _is_relu(self.gm, user) and len(user.users) == 1:
            user, relu = next(iter(user.users)), True
        q = module_of(self.gm, user)
        if isinstance(q, ActivationQuantizer) and q.frozen:
            return quint8_qparams(q), relu
        return None

    def _integer_output(self, node: fx.Node) -> tuple[tuple[float, int], bool] | None:
        """:meth:`_output_qparams`, or None after giving ``node`` float inputs (it then runs in float)."""
        target = self._output_qparams(node)
        if target is None:
            self._dequantize_inputs(node)
        return target

    def _layer(self, node: fx.Node, layer: QuantizedLayer) -> None:
        target = self._integer_output(node)
        if target is None:
            return
        (scale, zero_point), relu = target
        kernel = _quantized_module(layer, relu)
        kernel.scale, kernel.zero_point = scale, zero_point
        self.gm.add_submodule(f"{node.target}_int8".replace(".", "_"), kernel)
        node.target = f"{node.target}_int8".replace(".", "_")
        self._finish(node, (scale, zero_point), relu)

    def _binary(self, node: fx.Node, op: str) -> None:
        target = self._integer_output(node)
        if target is None:
            return
        (scale, zero_point), relu = target
        kernel = getattr(torch.ops.quantized, f"{op}_relu" if relu else op)
        node.target, node.args, node.kwargs = kernel, (*node.args[:2], scale, zero_point), {}
        self._finish(node, (scale, zero_point), relu)

    def _cat(self, node: fx.Node) -> None:
        target = self._output_qparams(node)
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if target is None or target[1]:
            self._dequantize_inputs(node)
            return
        (scale, zero_point), _ = target
        args = (list(node.args[0]), dim, scale, zero_point)
        node.target, node.args, node.kwargs = torch.ops.quantized.cat, args, {}
        self._finish(node, (scale, zero_point), relu=False)

    def _finish(self, node: fx.Node, qparams: tuple[float, int], relu: bool) -> None:
        """``node`` now yields the quantizer's scale; a fused ReLU after it becomes a pass-through."""
        self.qparams[node] = qparams
        if relu:
            activation = next(iter(node.users))
            activation.replace_all_uses_with(node)
            self.gm.graph.erase_node(activation)

    def _dequantize_inputs(self, node: fx.Node) -> None:
        def dequantize(value: Any) -> Any:
            if not self._is_q(value):
                return value
            with self.gm.graph.inserting_before(node):
                return self.gm.graph.call_method("dequantize", (value,))

        node.args = fx.node.map_arg(node.args, dequantize)
        node.kwargs = fx.node.map_arg(node.kwargs, dequantize)


def _has_kernel(layer: QuantizedLayer) -> bool:
    return layer.frozen and type(layer.mac_layer) in (nn.Linear, nn.Conv2d)


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(module_of(gm, node), _RELU) or (
        node.op == "call_function" and node.target in _RELU_FUNCTIONS
    )


def _quantized_module(layer: QuantizedLayer, relu: bool) -> nn.Module:
    geometry = layer.mac_layer
    weight = torch.quantize_per_channel(
        layer._dequantized_weight(), layer.weight_scale.double(), torch.zeros_like(layer.channel_zero_points),
        0, torch.qint8,
    )  # fmt: skip
    bias = layer._dequantized_bias()
    if isinstance(geometry, nn.Linear):
        kernel = (nniq.LinearReLU if relu else nnq.Linear)(geometry.in_features, geometry.out_features)
    else:  # Conv2d (see _has_kernel)
        cls = nniq.ConvReLU2d if relu else nnq.Conv2d
        kernel = cls(
            geometry.in_channels, geometry.out_channels, geometry.kernel_size, geometry.stride,
            geometry.padding, geometry.dilation, geometry.groups,
        )  # fmt: skip
    kernel.set_weight_bias(weight, bias)
    return kernel
