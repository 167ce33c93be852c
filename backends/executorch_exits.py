"""Early-exit networks as ExecuTorch programs: one method per stage, the branch taken by the runner.

XNNPACK's partitioner does not look inside ``torch.cond`` branches (their convs and linears would stay
outside the delegate, and ExecuTorch refuses them), so an :class:`~graphopt.early_exit.EarlyExitNetwork`
is lowered the other way the ExecuTorch docs offer: a program with one method per stage,

    exit_k(features_{k-1})  ->  (logits_k, features_k, confident_k)     k = 0 .. K-1  (exit_0 takes the input)
    final(features_{K-1})   ->  logits

where ``confident_k = min over the batch of confidence(logits_k) >= thresholds[k]`` is computed inside the
method (criterion and threshold are constants of the file), so the file alone decides where a sample leaves.
:class:`~graphopt.backends.executorch_backend.ExecuTorchRunner` calls ``exit_0``, and the next stage only
while ``confident`` is 0: the skipped segments are never computed, exactly as the ONNX ``If``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from graphopt.backends.xnnpack_qdq import Int8RoundTrip, dequantize_int8, quantize_then_dequantize_per_user
from graphopt.early_exit.network import confidence
from graphopt.errors import ExportError
from graphopt.ir.extensions import EarlyExitNetwork

FINAL = "final"


def exit_method(k: int) -> str:
    return f"exit_{k}"


class ExitStage(nn.Module):
    """Segment ``k`` (its input: the model's inputs for k = 0, the previous features otherwise), head ``k``
    and whether the batch is confident enough to leave there."""

    def __init__(self, network: EarlyExitNetwork, k: int):
        super().__init__()
        self.segment, self.head = network.segments[k], network.heads[k]
        self.criterion, self.threshold = network.criterion, float(network.thresholds[k])

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = self.segment(*inputs)
        logits = self.head(features)
        confident = confidence(logits, self.criterion).min() >= self.threshold
        return logits, features, confident.to(torch.int32)


def exit_network_of(model: nn.Module) -> EarlyExitNetwork:
    """The exit network a graph calls as its whole computation; an :class:`ExportError` otherwise."""
    if isinstance(model, EarlyExitNetwork):
        return model
    calls = (
        [n for n in model.graph.nodes if n.op == "call_module"] if isinstance(model, fx.GraphModule) else []
    )
    network = model.get_submodule(calls[0].target) if len(calls) == 1 else None
    ops = [n for n in model.graph.nodes if n.op in ("call_function", "call_method")] if network else []
    if not isinstance(network, EarlyExitNetwork) or ops:
        raise ExportError(
            "only a model that is its early-exit network end to end lowers to per-stage ExecuTorch methods; "
            "export this one to ONNX (.onnx), whose If runs the exits"
        )
    return network


def requantize_stage_inputs(network: EarlyExitNetwork) -> None:
    """A segment whose input left the previous segment int8 gets that quantizer again at its start.

    The features cross from one method to the next as the dequantized values ``s * (q - z)``; quantizing
    them again with the same ``(s, z)`` gives back ``q`` exactly, and it is the ``dq -> conv`` pattern
    XNNPACK needs to take the segment's first conv as int8 (else it stays float, outside the delegate)."""
    for before, segment in zip(network.segments, network.segments[1:], strict=False):
        qparams = _output_qparams(before)
        if qparams is None or not isinstance(segment, fx.GraphModule):
            continue
        placeholder = next(n for n in segment.graph.nodes if n.op == "placeholder")
        quantize_then_dequantize_per_user(segment.graph, placeholder, placeholder, qparams)
        segment.recompile()


def _output_qparams(segment: nn.Module) -> tuple[float, int] | None:
    """``(scale, zero point)`` of the int8 dequantize a segment's output comes from, if it does."""
    if not isinstance(segment, fx.GraphModule):
        return None
    output = next(n for n in segment.graph.nodes if n.op == "output")
    value = output.args[0]
    if isinstance(value, fx.Node) and value.op == "call_function" and value.target is dequantize_int8:
        return float(value.args[1]), int(value.args[2])
    if isinstance(value, fx.Node) and value.op == "call_module":
        module = segment.get_submodule(str(value.target))
        if isinstance(module, Int8RoundTrip):
            return module.scale, module.zero_point
    return None


def stage_programs(network: EarlyExitNetwork, example_inputs: tuple[Tensor, ...]) -> dict[str, Any]:
    """Each stage exported with ``torch.export`` on the features the example input reaches it with."""
    programs: dict[str, Any] = {}
    inputs: tuple[Tensor, ...] = tuple(example_inputs)
    with torch.no_grad():
        for k in range(len(network.heads)):
            stage = ExitStage(network, k).eval()
            programs[exit_method(k)] = torch.export.export(stage, inputs)
            inputs = (stage(*inputs)[1],)
        programs[FINAL] = torch.export.export(network.segments[-1].eval(), inputs)
    return programs


def run_stages(methods: dict[str, Any], inputs: list[Tensor]) -> list[Tensor]:
    """The exit network's output, calling a stage's method only when no earlier head was confident."""
    k = 0
    while exit_method(k) in methods:
        logits, features, confident = methods[exit_method(k)].execute(inputs)
        if int(confident) != 0:
            return [logits]
        inputs, k = [features], k + 1
    return list(methods[FINAL].execute(inputs))
