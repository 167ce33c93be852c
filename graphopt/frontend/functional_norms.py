"""Functional BatchNorm over a BatchNorm module's own tensors, turned back into a BatchNorm module call.

Model libraries subclass ``nn.BatchNorm2d`` to fuse the activation into the norm (timm's ``BatchNormAct2d``,
used by most timm CNNs): the subclass's forward calls ``F.batch_norm(x, self.running_mean, self.running_var,
self.weight, self.bias, ...)`` and then its activation. Traced through, the graph holds a functional
``batch_norm`` whose statistics and affine parameters are ``get_attr`` reads of the subclass, which every
pass that edits BatchNorm modules (pruning surgery, BatchNorm re-estimation, int8, the ONNX lowering) would
have to special-case. Instead the call becomes ``call_module`` of a plain ``nn.BatchNorm{1,2,3}d`` holding
the very same tensors, at ``<owner>.bn``; the owner becomes a plain container of its other children (the
activation), which the graph still calls. The rewrite is exact (the same function on the same tensors).

Only the unambiguous case is rewritten: the four tensors belong to one module that is a ``_BatchNorm`` in the
traced model (the GraphModule keeps only the attributes the graph reads, in plain modules, so the class is
looked up there), each is read by this call alone, the call is in eval form (``training=False``), and the
owner is not itself called.
"""

from __future__ import annotations

import inspect

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from graphopt.ir.graph import set_module

_SIGNATURE = inspect.signature(F.batch_norm)
_TENSORS = ("running_mean", "running_var", "weight", "bias")
_PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # the owner's base class gives the rank


def lift_functional_batch_norms(gm: fx.GraphModule, traced: nn.Module) -> list[str]:
    """Rewrite every eligible functional batch norm of ``gm`` (traced from ``traced``) in place; return the
    new modules' names."""
    called = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    lifted = []
    for node in list(gm.graph.nodes):
        owner_name = _owner(traced, node, called)
        if owner_name is None:
            continue
        owner = gm.get_submodule(owner_name)
        arguments = _SIGNATURE.bind(*node.args, **node.kwargs).arguments
        norm = _plain_batch_norm(traced.get_submodule(owner_name), arguments)
        container = nn.Module()
        for child_name, child in owner.named_children():
            container.add_module(child_name, child)
        container.add_module("bn", norm)
        set_module(gm, owner_name, container)
        reads = [arguments[key] for key in _TENSORS]
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(f"{owner_name}.bn", (arguments["input"],))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        for read in reads:
            gm.graph.erase_node(read)
        lifted.append(f"{owner_name}.bn")
    if lifted:
        gm.recompile()
    return lifted


def _owner(traced: nn.Module, node: fx.Node, called: set[str]) -> str | None:
    """The BatchNorm module whose tensors ``node`` (a functional batch norm) reads, when eligible."""
    if node.op != "call_function" or node.target is not F.batch_norm:
        return None  # (torch.batch_norm has another signature, and nn subclasses call F.batch_norm)
    try:
        arguments = _SIGNATURE.bind(*node.args, **node.kwargs).arguments
    except TypeError:
        return None
    if arguments.get("training", False) is not False:
        return None
    reads = [arguments.get(key) for key in _TENSORS]
    if not all(isinstance(r, fx.Node) and r.op == "get_attr" and len(r.users) == 1 for r in reads):
        return None
    owners = {str(r.target).rpartition(".")[0] for r in reads}  # type: ignore[union-attr]
    names = [str(r.target).rpartition(".")[2] for r in reads]  # type: ignore[union-attr]
    if len(owners) != 1 or names != list(_TENSORS):
        return None
    (owner_name,) = owners
    others = [str(n.target) for n in node.graph.nodes if n.op == "get_attr" and n not in reads]
    if not owner_name or owner_name in called or any(t.startswith(owner_name + ".") for t in others):
        return None  # the owner is called, or other tensors of it are read: it must stay as it is
    try:
        owner = traced.get_submodule(owner_name)
    except AttributeError:
        return None
    return owner_name if isinstance(owner, nn.modules.batchnorm._BatchNorm) else None


def _plain_batch_norm(owner: nn.Module, arguments: dict[str, object]) -> nn.Module:
    """A plain BatchNorm of the owner's rank sharing the owner's tensors (the same Parameter objects), with
    the call's eps and momentum."""
    kind = next(k for k in _PLAIN if isinstance(owner, k))
    eps, momentum = arguments.get("eps", owner.eps), arguments.get("momentum", owner.momentum)
    norm = kind(owner.num_features, eps=float(eps), momentum=momentum)  # type: ignore[arg-type]
    norm.weight, norm.bias = owner.weight, owner.bias
    norm.running_mean, norm.running_var = owner.running_mean, owner.running_var
    norm.num_batches_tracked = owner.num_batches_tracked
    return norm.eval()
