"""Convolutions whose weight is computed from parameters at every call, baked into plain ``nn.Conv2d``.

Weight-standardized convolutions (timm's ``StdConv2d`` / ``ScaledStdConv2d``, the convs of NFNets and BiT
ResNets) subclass ``nn.Conv2d`` and compute, in their forward,

    W' = gain * (W - mean_o(W)) / sqrt(var_o(W) + eps)      (statistics per output channel o)

through ``F.batch_norm(W.reshape(1, C_out, -1), None, None, training=True)``, then call ``F.conv2d(x, W')``.
Traced through, the graph holds that computation on ``get_attr`` reads, which no pass understands as a
convolution: pruning finds no producer (``eca_nfnet_l0`` pruned nothing), int8 finds no layer. In an
inference graph ``W'`` is a constant (it depends on parameters only), so the call becomes a plain
``nn.Conv2d`` holding ``W'`` at the owner's name: exact, and from then on an ordinary conv (pruning its
input channels no longer changes the statistics of the others; training fine-tunes ``W'`` directly).

Only the unambiguous case is rewritten: ``F.conv2d`` whose weight is computed from the owner's tensors
alone (no graph input upstream), the owner an ``nn.Conv2d`` in the traced model that the graph does not
call, and no other node reading the owner's tensors.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from graphopt.ir.graph import set_module


def _conv2d_parameters(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """F.conv2d's signature (a builtin: ``inspect`` cannot read it)."""


_SIGNATURE = inspect.signature(_conv2d_parameters)


def bake_computed_conv_weights(gm: fx.GraphModule, traced: nn.Module) -> list[str]:
    """Rewrite every eligible computed-weight ``F.conv2d`` of ``gm`` in place; return the owners' names."""
    called = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    baked: list[tuple[str, nn.Conv2d]] = []
    for node in list(gm.graph.nodes):
        found = _eligible(gm, traced, node, called)
        if found is None:
            continue
        owner_name, arguments, upstream = found
        conv = _plain_conv(gm, arguments, upstream)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(owner_name, (arguments["input"],))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        baked.append((owner_name, conv))
    if not baked:
        return []
    for node in reversed(list(gm.graph.nodes)):  # the weight computations, now unused
        if not node.users and node.op in ("get_attr", "call_function", "call_method"):
            gm.graph.erase_node(node)
    for owner_name, conv in baked:
        set_module(gm, owner_name, conv)
    gm.recompile()
    return [name for name, _ in baked]


def _eligible(
    gm: fx.GraphModule, traced: nn.Module, node: fx.Node, called: set[str]
) -> tuple[str, dict[str, Any], list[fx.Node]] | None:
    if node.op != "call_function" or node.target not in (F.conv2d, torch.conv2d):
        return None
    try:
        arguments = dict(_SIGNATURE.bind(*node.args, **node.kwargs).arguments)
    except TypeError:
        return None
    weight = arguments.get("weight")
    if not isinstance(weight, fx.Node) or weight.op == "get_attr":
        return None  # a parameter read as it is: the ordinary functional conv, not this rewrite's case
    upstream = _upstream(weight)
    if upstream is None:
        return None
    owners = {str(n.target).rpartition(".")[0] for n in upstream if n.op == "get_attr"}
    bias = arguments.get("bias")
    if isinstance(bias, fx.Node):
        if bias.op != "get_attr":
            return None
        owners.add(str(bias.target).rpartition(".")[0])
    if len(owners) != 1:
        return None
    (owner_name,) = owners
    if not owner_name or owner_name in called or not isinstance(_submodule(traced, owner_name), nn.Conv2d):
        return None
    reads = {n for n in upstream if n.op == "get_attr"} | ({bias} if isinstance(bias, fx.Node) else set())
    for other in gm.graph.nodes:
        if other.op == "get_attr" and other not in reads and str(other.target).startswith(owner_name + "."):
            return None  # other tensors of the owner are read elsewhere: it must stay as it is
    if any(user is not node and user not in upstream for n in upstream for user in n.users):
        return None  # part of the weight computation feeds something else too
    return owner_name, arguments, upstream


def _upstream(weight: fx.Node) -> list[fx.Node] | None:
    """The nodes ``weight`` is computed from, in graph order; None when a graph input is among them."""
    seen: dict[fx.Node, None] = {}
    stack = [weight]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        if node.op in ("placeholder", "call_module", "output"):
            return None
        seen[node] = None
        stack.extend(node.all_input_nodes)
    order = {n: i for i, n in enumerate(weight.graph.nodes)}
    return sorted(seen, key=order.__getitem__)


def _plain_conv(gm: fx.GraphModule, arguments: dict[str, Any], upstream: list[fx.Node]) -> nn.Conv2d:
    """An ``nn.Conv2d`` with the computed weight, the owner's bias and the call's geometry."""
    values: dict[fx.Node, Any] = {}
    with torch.no_grad():
        for n in upstream:
            args = fx.node.map_arg(n.args, values.__getitem__)
            kwargs = fx.node.map_arg(n.kwargs, values.__getitem__)
            if n.op == "get_attr":
                values[n] = _attribute(gm, str(n.target))
            elif n.op == "call_function":
                values[n] = n.target(*args, **kwargs)  # type: ignore[operator]
            else:  # call_method
                values[n] = getattr(args[0], str(n.target))(*args[1:], **kwargs)
    weight = values[upstream[-1]].detach().clone()
    bias = arguments.get("bias")
    groups = int(arguments.get("groups", 1))
    conv = nn.Conv2d(
        weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
        stride=arguments.get("stride", 1), padding=arguments.get("padding", 0),
        dilation=arguments.get("dilation", 1), groups=groups, bias=bias is not None,
    )  # fmt: skip
    conv.weight = nn.Parameter(weight)
    if isinstance(bias, fx.Node):
        conv.bias = _attribute(gm, str(bias.target))
    return conv.eval()


def _attribute(gm: fx.GraphModule, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None
