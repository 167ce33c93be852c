"""Fold an inference-mode BatchNorm into the conv / linear that produces its input.

BatchNorm in eval computes ``y = gamma * (x - mean) / sqrt(var + eps) + beta``, an affine map per channel
``y = s * x + t`` with ``s = gamma / sqrt(var + eps)`` and ``t = beta - s * mean``. When ``x = W * u + b``
comes from a conv or linear, ``y = (s W) * u + (s b + t)``: scale the producer's output-channel weights by
``s`` and replace its bias by ``s b + t``, then drop the BatchNorm. Arithmetic is done in float64.

Output channels sit on weight axis 0 for ``Conv*d`` and ``Linear`` and on axis 1 (per group) for
``ConvTranspose*d``, whose weight is ``[C_in, C_out / groups, *k]``.

Handled: ``nn.BatchNorm{1,2,3}d`` modules and ``F.batch_norm(..., training=False)`` with running statistics,
after ``nn.Conv{1,2,3}d``, ``nn.ConvTranspose{1,2,3}d`` or ``nn.Linear`` (rank-2 output, BatchNorm1d).
Skipped, with the reason counted in ``stats``:

- ``skipped:no_foldable_producer``: the input is not a conv/linear module call;
- ``skipped:shared_output``: the producer's output has other users, which need the un-normalised value;
- ``skipped:shared_module``: the producer module is called at several sites, so editing it would change them;
- ``skipped:no_running_stats``: the BatchNorm normalises with batch statistics (no running mean/var);
- ``skipped:layout``: a linear whose output is not ``[N, C]``, or channel counts that do not match.
"""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from graphopt.ir.graph import call_sites, get_attr_value, is_metadata_read, module_of, shape_of
from graphopt.pipeline.pass_base import Pass, PassOptions, PassResult
from graphopt.quant.bias_correction import record_batchnorm_stats

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCH_NORM_SIGNATURE = inspect.signature(F.batch_norm)


@dataclass(frozen=True)
class BatchNormStats:
    """The affine map an inference BatchNorm applies: ``y = scale * x + shift`` per channel (float64)."""

    scale: torch.Tensor
    shift: torch.Tensor

    @classmethod
    def from_tensors(
        cls,
        mean: torch.Tensor,
        var: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> BatchNormStats:
        mean, var = mean.detach().double(), var.detach().double()
        gamma = weight.detach().double() if weight is not None else torch.ones_like(mean)
        beta = bias.detach().double() if bias is not None else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + eps)
        return cls(scale=scale, shift=beta - scale * mean)


@dataclass(frozen=True)
class FoldBatchNormOptions(PassOptions):
    """fold_batchnorm has no options: every foldable BatchNorm is folded."""


class FoldBatchNorm(Pass):
    name = "fold_batchnorm"
    slot = "cleanup"
    description = "Fold inference BatchNorm into the preceding conv, transposed conv or linear."
    exact = True
    Options = FoldBatchNormOptions

    def call(self, gm: fx.GraphModule) -> PassResult:
        record_batchnorm_stats(gm)  # what analytic bias correction reads once the BatchNorms are gone
        stats: Counter[str] = Counter()
        sites = call_sites(gm)
        for bn_node in list(gm.graph.nodes):
            if not _is_batch_norm(gm, bn_node):
                continue
            bn = _batch_norm_stats(gm, bn_node)
            producer = bn_node.args[0]
            reason = "no_running_stats" if bn is None else _why_not_foldable(gm, producer, sites)
            if reason is None:
                assert bn is not None and isinstance(producer, fx.Node)
                reason = _fold_into(module_of(gm, producer), bn, shape_of(producer))
            if reason is not None:
                stats[f"skipped:{reason}"] += 1
                continue
            bn_node.replace_all_uses_with(producer)
            gm.graph.erase_node(bn_node)
            stats["folded"] += 1
        if stats["folded"]:
            # The running-stat get_attr nodes of folded functional BatchNorms; nothing else is dead here.
            gm.graph.eliminate_dead_code(is_impure_node=lambda node: node.op != "get_attr")
            gm.delete_all_unused_submodules()
        return PassResult(gm, modified=stats["folded"] > 0, stats=dict(stats))


def _is_batch_norm(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function" and node.target is F.batch_norm:
        return True
    return isinstance(module_of(gm, node), nn.modules.batchnorm._BatchNorm)


def _batch_norm_stats(gm: fx.GraphModule, node: fx.Node) -> BatchNormStats | None:
    """The per-channel affine map of an inference BatchNorm node, or None when it uses batch statistics."""
    module = module_of(gm, node)
    if module is not None:
        if module.training or module.running_mean is None or module.running_var is None:
            return None
        return BatchNormStats.from_tensors(
            module.running_mean, module.running_var, module.weight, module.bias, module.eps
        )
    bound = _BATCH_NORM_SIGNATURE.bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    args = bound.arguments
    tensors = {}
    for key in ("running_mean", "running_var", "weight", "bias"):
        value = args[key]
        if isinstance(value, fx.Node):
            if value.op != "get_attr":
                return None  # computed at run time: not a constant we can fold
            value = get_attr_value(gm, value)
        tensors[key] = value
    if args["training"] is not False or tensors["running_mean"] is None or tensors["running_var"] is None:
        return None
    return BatchNormStats.from_tensors(
        tensors["running_mean"], tensors["running_var"], tensors["weight"], tensors["bias"], args["eps"]
    )


def _why_not_foldable(gm: fx.GraphModule, producer: object, sites: Counter[str]) -> str | None:
    if not isinstance(producer, fx.Node) or not isinstance(
        module_of(gm, producer), (*_CONVS, *_CONV_TRANSPOSES, nn.Linear)
    ):
        return "no_foldable_producer"
    if len([u for u in producer.users if not is_metadata_read(u)]) > 1:
        return "shared_output"  # reads of its shape or ndim alone do not see the fold
    if sites[str(producer.target)] > 1:
        return "shared_module"
    return None


def _fold_into(layer: nn.Module, bn: BatchNormStats, out_shape: tuple[int, ...] | None) -> str | None:
    """Fold ``bn`` into ``layer`` in place; return a skip reason instead when the layout does not fit."""
    channels = bn.scale.numel()
    weight = layer.weight.detach().double()
    if isinstance(layer, nn.Linear):
        if out_shape is None or len(out_shape) != 2 or layer.out_features != channels:
            return "layout"
        new_weight = weight * bn.scale[:, None]
    elif isinstance(layer, _CONV_TRANSPOSES):
        if layer.out_channels != channels:
            return "layout"
        groups, c_in = layer.groups, weight.shape[0]
        grouped = weight.reshape(groups, c_in // groups, channels // groups, *weight.shape[2:])
        scale = bn.scale.reshape(groups, 1, channels // groups, *([1] * (weight.dim() - 2)))
        new_weight = (grouped * scale).reshape(weight.shape)
    else:
        if layer.out_channels != channels:
            return "layout"
        new_weight = weight * bn.scale.reshape(-1, *([1] * (weight.dim() - 1)))
    old_bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(bn.shift)
    dtype = layer.weight.dtype
    layer.weight = nn.Parameter(new_weight.to(dtype), requires_grad=layer.weight.requires_grad)
    layer.bias = nn.Parameter((old_bias * bn.scale + bn.shift).to(dtype))
    return None
