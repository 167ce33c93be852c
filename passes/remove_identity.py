"""Remove ops that return their input unchanged at inference time.

- ``nn.Identity`` calls;
- dropout in eval (``nn.Dropout*``, ``nn.AlphaDropout``, ``F.dropout*(..., training=False)``): the identity,
  since inverted dropout scales at training time only;
- ``x.contiguous()`` where ``x`` already is contiguous (shape propagation records it): same values, same
  layout. After a ``transpose`` or ``permute`` it is kept (``skipped:layout_needed``): a later ``view``
  needs the copy (ShuffleNet's channel shuffle ``x.view(...).transpose(1, 2).contiguous().view(...)``);
  on a graph input it is kept too (``skipped:graph_input``: the caller may pass any layout);
- reshapes that keep the shape: ``flatten`` over a single dimension (a no-op for any input of that rank),
  ``view`` / ``reshape`` / ``torch.reshape`` whose output shape equals the input shape, provided the batch
  dimension is not a hard-coded size (``x.view(1, 64)`` is a no-op only at batch 1, so it stays).

Skipped, with the reason counted in ``stats``: ``skipped:dropout_active`` (functional dropout called with
``training=True``, the default of ``F.dropout``, which is live even in eval), ``skipped:batch_specific``,
``skipped:layout_needed`` and ``skipped:graph_input``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from graphopt.ir.graph import module_of, shape_of
from graphopt.pipeline.pass_base import Pass, PassOptions, PassResult

_DROPOUT_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_DROPOUT_FUNCTIONS = (
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
)
_RESHAPE_METHODS = ("view", "reshape")
_RESHAPE_FUNCTIONS = (torch.reshape,)


@dataclass(frozen=True)
class RemoveIdentityOptions(PassOptions):
    """remove_identity has no options."""


class RemoveIdentity(Pass):
    name = "remove_identity"
    slot = "cleanup"
    description = "Remove Identity, eval-mode dropout, contiguous() and shape-preserving reshapes."
    exact = True
    Options = RemoveIdentityOptions

    def call(self, gm: fx.GraphModule) -> PassResult:
        stats: Counter[str] = Counter()
        for node in list(gm.graph.nodes):
            kind = _identity_kind(gm, node)
            if kind is None:
                continue
            if kind.startswith("skipped:"):
                stats[kind] += 1
                continue
            source = node.args[0]
            if not isinstance(source, fx.Node):
                continue
            node.replace_all_uses_with(source)
            gm.graph.erase_node(node)
            stats[kind] += 1
        modified = any(not k.startswith("skipped:") for k in stats)
        return PassResult(gm, modified=modified, stats=dict(stats))


def _identity_kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """What kind of identity ``node`` is (a stats key), a ``skipped:`` reason, or None."""
    module = module_of(gm, node)
    if module is not None:
        if isinstance(module, nn.Identity) and len(node.args) == 1 and not node.kwargs:
            return "identity"
        if isinstance(module, _DROPOUT_MODULES) and not module.training:
            return "dropout"
        if isinstance(module, nn.Flatten):
            return _flatten_kind(node, module.start_dim, module.end_dim)
        return None
    if node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS:
        training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
        return "dropout" if training is False else "skipped:dropout_active"
    if node.op == "call_method" and node.target == "contiguous" and len(node.args) == 1:
        return _contiguous_kind(node.args[0])
    is_flatten = (node.op == "call_method" and node.target == "flatten") or (
        node.op == "call_function" and node.target is torch.flatten
    )
    if is_flatten:
        start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
        end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
        return _flatten_kind(node, start, end)
    is_reshape = (node.op == "call_method" and node.target in _RESHAPE_METHODS) or (
        node.op == "call_function" and node.target in _RESHAPE_FUNCTIONS
    )
    if is_reshape:
        return _reshape_kind(node)
    return None


def _contiguous_kind(source: object) -> str | None:
    if not isinstance(source, fx.Node):
        return None
    if source.op == "placeholder":
        return "skipped:graph_input"
    return "contiguous" if source.meta.get("contiguous") is True else "skipped:layout_needed"


def _flatten_kind(node: fx.Node, start: object, end: object) -> str | None:
    shape = shape_of(node.args[0])
    if shape is None or not isinstance(start, int) or not isinstance(end, int):
        return None
    rank = max(len(shape), 1)
    # Flattening one dimension (start == end after wrapping) leaves any input of this rank unchanged.
    return "noop_reshape" if start % rank == end % rank else None


def _reshape_kind(node: fx.Node) -> str | None:
    source_shape, out_shape = shape_of(node.args[0]), shape_of(node)
    if source_shape is None or out_shape is None or source_shape != out_shape:
        return None
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    if "shape" in node.kwargs:
        sizes = tuple(node.kwargs["shape"])
    if not sizes:
        return None
    batch = sizes[0]
    if isinstance(batch, int) and batch != -1:
        return "skipped:batch_specific"
    return "noop_reshape"
