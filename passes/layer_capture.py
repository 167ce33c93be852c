"""What a layer-by-layer reconstruction (AdaRound, the sequential MSE range search) works from: the frozen
int8 layers in graph order, what each reads on calibration data in a given model (captured by a forward
pre-hook that stops the forward there), the activation that follows it, and the fp32 targets.

``x~`` (what the layer reads in the partly quantized model) against ``f(W x + b)`` on ``x`` (what it reads
in the fp32 model) is the asymmetric reconstruction of :mod:`graphopt.quant.adaround`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from graphopt.errors import InvalidInputError
from graphopt.ir.graph import module_of
from graphopt.passes.calibrate import slice_batches
from graphopt.quant.adaround import LayerData
from graphopt.quant.modules import QuantizedLayer

#: The activations the reconstruction goes through (an error they clip away costs nothing), by module type
#: and by function; anything else after a layer: its pre-activation output is reconstructed.
_ACTIVATION_MODULES: dict[type, Callable[[Tensor], Tensor]] = {nn.ReLU: F.relu, nn.ReLU6: F.relu6}
_ACTIVATION_FUNCTIONS: dict[object, Callable[[Tensor], Tensor]] = {
    F.relu: F.relu, torch.relu: F.relu, F.relu6: F.relu6,
}  # fmt: skip

Batches = list[tuple[Tensor, ...]]
#: An int8 layer to round: its (first) call node, its name and the module.
Candidate = tuple[fx.Node, str, QuantizedLayer]


def int8_layers(gm: fx.GraphModule) -> list[Candidate]:
    """Frozen int8 layers in graph order (front to back), each at its first call site."""
    found, seen = [], set()
    for node in gm.graph.nodes:
        module = module_of(gm, node)
        if isinstance(module, QuantizedLayer) and module.frozen and node.target not in seen:
            seen.add(node.target)
            found.append((node, str(node.target), module))
    return found


def first_samples(batches: Batches, samples: int) -> Batches:
    taken: Batches = []
    count = 0
    for batch in batches:
        if count >= samples:
            break
        size = min(len(batch[0]), samples - count)
        taken.append(tuple(x[:size] for x in batch))
        count += size
    return taken


class _Reached(Exception):
    """Raised by the capture hook: the layer's input is recorded, the rest of the forward is not needed."""


def layer_inputs(gm: fx.GraphModule, name: str, batches: Batches, example_batch: int) -> Tensor | None:
    """What the module ``name`` of ``gm`` reads (its first argument) on ``batches``, concatenated along
    the batch dim; None when no batch reaches it. A graph that fixes its batch size fails on other sizes:
    slices of the example inputs' batch size are tried then, as calibration does."""
    captured: list[Tensor] = []

    def record(module: nn.Module, args: tuple) -> None:
        captured.append(args[0].detach())
        raise _Reached

    handle = gm.get_submodule(name).register_forward_pre_hook(record)
    try:
        for attempt in (batches, slice_batches(batches, example_batch)):
            captured.clear()
            try:
                _run_until_reached(gm, attempt)
                break
            except Exception as exc:  # the graph fixes its batch size: try the next batching
                failure = exc
        else:
            raise InvalidInputError(
                f"the model fails on the calibration batches ({type(failure).__name__}: "
                f"{failure}); check that calibration_data holds inputs like example_inputs"
            ) from failure
    finally:
        handle.remove()
    return torch.cat(captured) if captured else None


def _run_until_reached(gm: fx.GraphModule, batches: Batches) -> None:
    with torch.no_grad():
        for batch in batches:
            with contextlib.suppress(_Reached):
                gm(*batch)


def following_activation(gm: fx.GraphModule, node: fx.Node) -> Callable[[Tensor], Tensor] | None:
    """The ReLU / ReLU6 that alone reads ``node``'s output, as a function, or None."""
    if len(node.users) != 1:
        return None
    (user,) = node.users
    if user.op == "call_module":
        return _ACTIVATION_MODULES.get(type(module_of(gm, user)))
    if user.op == "call_function":
        return _ACTIVATION_FUNCTIONS.get(user.target)
    return None


def flat_rows(layer: QuantizedLayer, x: Tensor) -> Tensor:
    """A linear layer's inputs as rows (every token of a sequence is a sample); conv inputs as they are."""
    return x.reshape(-1, x.shape[-1]) if isinstance(layer.fp32_layer, nn.Linear) else x


def layer_data(
    layer: QuantizedLayer, activation: Callable[[Tensor], Tensor] | None, inputs: Tensor, fp32_inputs: Tensor
) -> LayerData:
    """The learning data: the int8 layer's inputs and ``f(W x + b)`` of the fp32 layer on fp32 inputs."""
    reference = layer.fp32_layer
    with torch.no_grad():
        targets = reference(flat_rows(layer, fp32_inputs))
        targets = activation(targets) if activation is not None else targets
    return LayerData(flat_rows(layer, inputs), targets.detach())


@dataclass(frozen=True)
class Reconstruction:
    """One layer's reconstruction problem: its data and the activation after it (None: the identity)."""

    data: LayerData
    activation: Callable[[Tensor], Tensor] | None


def reconstruction(
    gm: fx.GraphModule, fp32: fx.GraphModule, node: fx.Node, name: str, batches: Batches, example_batch: int,
    asymmetric: bool,
) -> Reconstruction | None:  # fmt: skip
    """The int8 layer ``name`` (called at ``node``) of ``gm`` against its twin in ``fp32``: what it reads
    (in ``gm`` when ``asymmetric``, else in ``fp32``) and the fp32 targets; None when no batch reaches it
    (a branch the calibration data never takes)."""
    fp32_inputs = layer_inputs(fp32, name, batches, example_batch)
    if fp32_inputs is None:
        return None
    inputs = layer_inputs(gm, name, batches, example_batch) if asymmetric else fp32_inputs
    assert inputs is not None
    layer = gm.get_submodule(name)
    assert isinstance(layer, QuantizedLayer)
    activation = following_activation(gm, node)
    return Reconstruction(layer_data(layer, activation, inputs, fp32_inputs), activation)


def int8_forward(
    layer: QuantizedLayer, activation: Callable[[Tensor], Tensor] | None
) -> Callable[[Tensor, Tensor], Tensor]:
    """``(x, W~) -> f(conv(x, W~) + b_q)``: the int8 layer's computation with the weight being learned."""
    bias = layer.bias.detach()  # the dequantized int32 bias: what the int8 layer adds

    def forward(x: Tensor, weight: Tensor) -> Tensor:
        y = layer.functional(x, weight, bias, **layer.kwargs)
        return activation(y) if activation is not None else y

    return forward
