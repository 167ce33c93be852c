"""The tables that lift an ATen graph (torch.export) to graphopt's module-level IR.

Two kinds of rule, both data:

- :data:`LAYER_RULES`: an ATen op whose weight is a parameter becomes a real ``nn`` layer (``call_module``),
  built from the op's arguments and sharing the exported tensors. The layer is named after its weight's
  qualified name (``encoder.layer.0.attention.self.query.weight`` -> ``...query``), so reports, pruning
  tables and ``protect=`` names read like the user's model.
- :data:`FUNCTION_RULES` / :data:`METHOD_RULES`: an ATen op with the same positional arguments as a torch
  function or tensor method becomes that call, which the pruning, int8 and ONNX tables know.

Anything else stays an ATen ``call_function`` (it runs; unknown ops fail closed in pruning and int8).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

aten = torch.ops.aten


def _arg(args: tuple[Any, ...], index: int, default: Any) -> Any:
    return args[index] if len(args) > index else default


def _conv(dims: int) -> Callable[[tuple[Any, ...], torch.Tensor, torch.Tensor | None], nn.Module | None]:
    kinds = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}

    def build(args: tuple[Any, ...], weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module | None:
        stride, padding = _arg(args, 3, 1), _arg(args, 4, 0)
        dilation, groups = _arg(args, 5, 1), _arg(args, 6, 1)
        if isinstance(padding, str):
            return None  # "same" / "valid": rare in exported graphs, left functional
        layer = kinds[dims](
            weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
            stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias is not None,
        )  # fmt: skip
        return _adopt(layer, weight, bias)

    return build


def _linear(args: tuple[Any, ...], weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    return _adopt(layer, weight, bias)


def _layer_norm(args: tuple[Any, ...], weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    layer = nn.LayerNorm(
        tuple(args[1]), eps=_arg(args, 4, 1e-5), elementwise_affine=weight is not None, bias=bias is not None
    )
    return _adopt(layer, weight, bias)


def _group_norm(args: tuple[Any, ...], weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    layer = nn.GroupNorm(args[1], weight.shape[0], eps=_arg(args, 4, 1e-5))
    return _adopt(layer, weight, bias)


def _embedding(args: tuple[Any, ...], weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    padding_idx = _arg(args, 2, -1)
    layer = nn.Embedding(
        weight.shape[0], weight.shape[1], padding_idx=None if padding_idx < 0 else padding_idx
    )
    return _adopt(layer, weight, None)


def _batch_norm(args: tuple[Any, ...], weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module | None:
    mean, var = args[3], args[4]
    if not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor) or _arg(args, 5, False):
        return None  # training-mode or statistics-free batch norm: left functional
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
    rank = args[0].meta.get("val").dim() if hasattr(args[0], "meta") and "val" in args[0].meta else 4
    layer = kind.get(rank, nn.BatchNorm2d)(mean.shape[0], eps=_arg(args, 7, 1e-5), affine=weight is not None)
    layer = _adopt(layer, weight, bias)
    layer.running_mean, layer.running_var = mean, var
    return layer


def _adopt(layer: nn.Module, weight: torch.Tensor | None, bias: torch.Tensor | None) -> nn.Module:
    """Put the exported tensors into ``layer`` (shared, not copied)."""
    if weight is not None:
        layer.weight = nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach(), requires_grad=bias.requires_grad)
    return layer.eval()


@dataclass(frozen=True)
class LayerRule:
    """Which argument positions hold the weight, the bias and the layer's input, and how to build it."""

    build: Callable[[tuple[Any, ...], torch.Tensor, torch.Tensor | None], nn.Module | None]
    weight: int
    bias: int | None
    data: int
    #: Argument positions that must be tensors the layer owns (BatchNorm's running statistics).
    owned: tuple[int, ...] = ()


LAYER_RULES: dict[Any, LayerRule] = {
    aten.conv1d.default: LayerRule(_conv(1), weight=1, bias=2, data=0),
    aten.conv2d.default: LayerRule(_conv(2), weight=1, bias=2, data=0),
    aten.conv3d.default: LayerRule(_conv(3), weight=1, bias=2, data=0),
    aten.linear.default: LayerRule(_linear, weight=1, bias=2, data=0),
    aten.layer_norm.default: LayerRule(_layer_norm, weight=2, bias=3, data=0),
    aten.group_norm.default: LayerRule(_group_norm, weight=2, bias=3, data=0),
    aten.embedding.default: LayerRule(_embedding, weight=0, bias=None, data=1),
    aten.batch_norm.default: LayerRule(_batch_norm, weight=1, bias=2, data=0, owned=(3, 4)),
}


def _hardtanh(args: tuple[Any, ...]) -> nn.Module:
    low, high = _arg(args, 1, -1.0), _arg(args, 2, 1.0)
    return nn.ReLU6() if (low, high) == (0.0, 6.0) else nn.Hardtanh(low, high)


def _max_pool(args: tuple[Any, ...]) -> nn.Module:
    kernel = args[1]
    stride = _arg(args, 2, []) or kernel
    return nn.MaxPool2d(kernel, stride, _arg(args, 3, 0), _arg(args, 4, 1), _arg(args, 5, False))


#: ATen op -> the parameterless ``nn`` module that computes it, when the op is all a leaf module of the
#: user's model did (``stem.2``, an ``nn.ReLU``): lifted as ``call_module`` under that name, as fx traces
#: it, so exit points, int8 fusion and reports can name it.
MODULE_RULES: dict[Any, Callable[[tuple[Any, ...]], nn.Module]] = {
    aten.relu.default: lambda args: nn.ReLU(),
    aten.relu_.default: lambda args: nn.ReLU(),
    aten.hardtanh.default: _hardtanh,
    aten.hardtanh_.default: _hardtanh,
    aten.gelu.default: lambda args: nn.GELU(),
    aten.silu.default: lambda args: nn.SiLU(),
    aten.silu_.default: lambda args: nn.SiLU(),
    aten.sigmoid.default: lambda args: nn.Sigmoid(),
    aten.tanh.default: lambda args: nn.Tanh(),
    aten.hardswish.default: lambda args: nn.Hardswish(),
    aten.hardswish_.default: lambda args: nn.Hardswish(),
    aten.adaptive_avg_pool2d.default: lambda args: nn.AdaptiveAvgPool2d(tuple(args[1])),
    aten.max_pool2d.default: _max_pool,
    aten.flatten.using_ints: lambda args: nn.Flatten(_arg(args, 1, 0), _arg(args, 2, -1)),
}

#: ATen op -> torch function taking the same positional arguments.
FUNCTION_RULES: dict[Any, Callable[..., Any]] = {
    aten.relu.default: torch.relu,
    aten.relu_.default: torch.relu,
    aten.sigmoid.default: torch.sigmoid,
    aten.tanh.default: torch.tanh,
    aten.gelu.default: F.gelu,
    aten.silu.default: F.silu,
    aten.silu_.default: F.silu,
    aten.hardswish.default: F.hardswish,
    aten.hardswish_.default: F.hardswish,
    aten.hardsigmoid.default: F.hardsigmoid,
    aten.hardtanh.default: F.hardtanh,
    aten.hardtanh_.default: F.hardtanh,
    aten.add.Tensor: operator.add,
    aten.add_.Tensor: operator.add,
    aten.sub.Tensor: operator.sub,
    aten.mul.Tensor: operator.mul,
    aten.mul_.Tensor: operator.mul,
    aten.div.Tensor: operator.truediv,
    aten.matmul.default: torch.matmul,
    aten.cat.default: torch.cat,
    aten.flatten.using_ints: torch.flatten,
    aten.transpose.int: torch.transpose,
    aten.permute.default: torch.permute,
    aten.softmax.int: torch.softmax,
    aten.mean.dim: torch.mean,
    aten.sum.dim_IntList: torch.sum,
    aten.split.Tensor: torch.split,
    aten.split_with_sizes.default: torch.split,
    aten.chunk.default: torch.chunk,
    aten.adaptive_avg_pool1d.default: F.adaptive_avg_pool1d,
    aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
    aten.max_pool2d.default: F.max_pool2d,
    aten.avg_pool2d.default: F.avg_pool2d,
    aten.scaled_dot_product_attention.default: F.scaled_dot_product_attention,
    aten.arange.default: torch.arange,
    aten.arange.start: torch.arange,
}

#: FUNCTION_RULES entries whose ATen keyword names are the torch function's too (kwargs carried over).
KEYWORDS_MATCH = frozenset(
    {
        aten.scaled_dot_product_attention.default,
        aten.gelu.default,
        aten.arange.default,
        aten.arange.start,
    }
)

#: ATen op -> tensor method with the same positional arguments.
METHOD_RULES: dict[Any, str] = {
    aten.view.default: "view",
    aten.reshape.default: "reshape",
    aten.unsqueeze.default: "unsqueeze",
    aten.squeeze.dim: "squeeze",
    aten.contiguous.default: "contiguous",
    aten.clone.default: "clone",
    aten.sym_size.int: "size",
}

#: ATen ops that only assert metadata the example already satisfied: dropped from the IR.
DROPPED = frozenset({aten._assert_tensor_metadata.default})


def dropout_call(args: tuple[Any, ...]) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """``aten.dropout(x, p, train)`` as ``F.dropout(x, p, training=train)`` (``remove_identity`` knows it)."""
    return F.dropout, (args[0], args[1]), {"training": bool(args[2])}


SPECIAL_RULES: dict[Any, Callable[[tuple[Any, ...]], tuple[Callable[..., Any], tuple[Any, ...], dict]]] = {
    aten.dropout.default: dropout_call,
}
