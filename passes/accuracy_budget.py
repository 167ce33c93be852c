"""Keep the layers int8 hurts most in fp32 until the accuracy drop is within a budget.

Runs after ``calibrate``, with held-out labelled data (``eval_data``):

1. ``drop = acc(fp32 graph) - acc(int8 graph)`` in percentage points, where the fp32 graph is the int8
   graph without its quantizers and with its unrounded weights (:func:`~graphopt.quant.float_twin.float_twin`:
   the model that entered quantization, after any pruning and recovery); within ``budget_pp``: nothing to do.
2. Sensitivity of every int8 layer ``l``: the output SQNR of the graph with only ``l`` back in fp32 minus
   the SQNR with every layer int8, both against the fp32 graph's logits on the eval inputs,
   ``SQNR = 10 log10(sum y^2 / sum (y - y_q)^2)`` dB, ``y`` the fp32 graph's logits. A layer whose int8
   weights cost the network much signal gains much when restored. (Output SQNR, not accuracy, ranks
   layers: on a few hundred labelled samples accuracy moves in steps too coarse to order layers by.)
3. Greedily, most sensitive first, put layers back to their fp32 weights until the drop is within budget.

A restored layer reads the float tensor its input quantizer was quantizing (the quantizer stays for other
consumers, or goes when the layer was its only one), and its output keeps its quantizer for the integer
layers after it. The input must not arrive through a DequantizeLinear: ONNX Runtime (1.21 and newer)
quantizes the float weights of a ``DQ -> Conv -> Q`` sandwich itself, which would undo the decision. When
even every layer in fp32 misses the budget (the loss is in activation quantization), the pass keeps the
best state it found, says so in the report, and stops: it never loops.

The report's ``accuracy_budget`` table lists every layer: its sensitivity, whether it stayed fp32, and the
accuracy after the decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from graphopt.data.batches import as_input_tuple
from graphopt.errors import ConfigError
from graphopt.ir.graph import module_of, set_module
from graphopt.pipeline.pass_base import Pass, PassOptions, PassResult
from graphopt.quant.float_twin import float_twin
from graphopt.quant.modules import ActivationQuantizer, QuantizedLayer
from graphopt.quant.policy import is_pool, through_data_movement
from graphopt.quant.scheme import sqnr_db
from graphopt.reporting.evaluation import accuracy
from graphopt.reporting.notes import Note
from graphopt.reporting.numerics import flatten_outputs

#: Note keys (graphopt.reporting.notes): what tests and tools read instead of the sentences.
NOT_APPLIED = "accuracy_budget:not_applied"
KEPT_FP32 = "accuracy_budget:kept_fp32"

#: Elementwise activations: an int8 value stays int8 through them (ONNX Runtime fuses them into the layer).
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)


@dataclass(frozen=True)
class AccuracyBudgetOptions(PassOptions):
    budget_pp: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.budget_pp < 100:
            raise ConfigError(f"accuracy_budget must be in [0, 100) percentage points, got {self.budget_pp}")


class AccuracyBudget(Pass):
    name = "accuracy_budget"
    slot = "int8_budget"
    description = "Keep the most int8-sensitive layers in fp32 until accuracy is within a budget (eval_data)."
    exact = False
    Options = AccuracyBudgetOptions
    needs = ("eval_data",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        data = self.context.eval_data
        layers = {name: m for name, m in gm.named_modules() if isinstance(m, QuantizedLayer) and m.frozen}
        if not data or not layers:
            why = "no eval_data" if not data else "no int8 layer"
            self.context.notes.append(Note(NOT_APPLIED, f"accuracy_budget: not applied ({why})", why=why))
            return PassResult(gm, modified=False, stats={f"skipped:{why.replace(' ', '_')}": 1})
        budget = self.options.budget_pp
        # What int8 costs is measured against the fp32 graph that entered quantization, not the original:
        # a loss earlier passes made (pruning) is not one that fp32 layers can win back.
        entering = float_twin(gm, unrounded=True)
        baseline = 100 * accuracy(entering, data)
        reference = _logits(entering, data)
        current = 100 * accuracy(gm, data)
        stats: dict[str, float] = {"fp32_accuracy": round(baseline, 3), "int8_accuracy": round(current, 3)}
        rows = {name: {"layer": name, "sensitivity_db": None, "kept_fp32": False} for name in layers}
        kept: list[str] = []
        if baseline - current > budget:
            ranking = _sensitivities(gm, layers, reference, data)
            for name, gain in ranking:
                rows[name]["sensitivity_db"] = round(gain, 2)
            for name, _ in ranking:
                if baseline - current <= budget:
                    break
                _restore_fp32(gm, name, layers[name])
                kept.append(name)
                current = 100 * accuracy(gm, data)
                rows[name].update(kept_fp32=True, accuracy_after=round(current, 3))
        if kept:  # quantizers around layers now fp32 only round; with none kept the graph stays as it was
            _drop_unused_quantizers(gm)
            _drop_useless_quantizers(gm)
        stats.update(final_accuracy=round(current, 3), kept_fp32=len(kept))
        within = baseline - current <= budget
        verdict = "within" if within else "NOT within (the loss is in activation quantization)"
        self.context.notes.append(Note(
            KEPT_FP32,
            f"accuracy_budget: drop {baseline - current:.2f} pp {verdict} the {budget} pp budget; "
            f"kept in fp32: {', '.join(kept) or 'none'}",
            layers=tuple(kept), drop_pp=round(baseline - current, 3), budget_pp=budget, within=within,
        ))  # fmt: skip
        self.context.tables["accuracy_budget"] = list(rows.values())
        return PassResult(gm, modified=bool(kept), stats=stats)


def _logits(model: torch.nn.Module, data: list) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([flatten_outputs(model(*as_input_tuple(inputs)))[0] for inputs, _ in data])


def _sensitivities(
    gm: fx.GraphModule, layers: dict[str, QuantizedLayer], reference: torch.Tensor, data: list
) -> list[tuple[str, float]]:
    """Layers by how much output SQNR (dB) restoring each alone to fp32 gains, largest first."""
    base = sqnr_db(reference, _logits(gm, data))
    gains = []
    for name, layer in layers.items():
        undo = _restore_fp32(gm, name, layer)
        gains.append((name, sqnr_db(reference, _logits(gm, data)) - base))
        undo()
    return sorted(gains, key=lambda item: -item[1])


def _restore_fp32(gm: fx.GraphModule, name: str, layer: QuantizedLayer) -> Callable[[], None]:
    """Put ``name`` back to its fp32 layer reading the unquantized input; return the undo."""
    set_module(gm, name, layer.fp32_layer)
    rewired = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == name:
            source = through_data_movement(gm, node.args[0])
            reader = node if source is node.args[0] else node.args[0]  # its padding reads the float instead
            if isinstance(source, fx.Node) and isinstance(module_of(gm, source), ActivationQuantizer):
                reader.update_arg(0, source.args[0])
                rewired.append((reader, source))
    gm.recompile()

    def undo() -> None:
        set_module(gm, name, layer)
        for node, source in rewired:
            node.update_arg(0, source)
        gm.recompile()

    return undo


def _drop_useless_quantizers(gm: fx.GraphModule) -> None:
    """Take out activation quantizers that neither follow nor lead to an int8 layer (through activations,
    pools and other quantizers): once the layers around them are fp32 they only round.

    They also mislead ONNX Runtime: it moves a DequantizeLinear past a pool, rebuilds a ``DQ -> Conv -> Q``
    sandwich around an fp32 layer and quantizes its weights after all (ORT 1.32 then writes an invalid
    QLinearConv with int32 weights: measured on the digits CNN pruned 0.5 with every layer kept fp32)."""
    for node in list(gm.graph.nodes):
        if isinstance(module_of(gm, node), ActivationQuantizer) and not _near_int8(gm, node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            gm.delete_submodule(str(node.target))
    gm.recompile()


def _near_int8(gm: fx.GraphModule, quantizer: fx.Node) -> bool:
    def passes_int8_through(node: object) -> bool:
        module = module_of(gm, node)
        return is_pool(gm, node) or isinstance(module, (ActivationQuantizer, *_ACTIVATIONS))

    before = quantizer.args[0]
    while passes_int8_through(before):
        assert isinstance(before, fx.Node)
        before = before.args[0]
    if isinstance(module_of(gm, before), QuantizedLayer):
        return True
    frontier, seen = list(quantizer.users), set()
    while frontier:
        node = frontier.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(module_of(gm, node), QuantizedLayer):
            return True
        if passes_int8_through(node):
            frontier.extend(node.users)
    return False


def _drop_unused_quantizers(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if not node.users and isinstance(module_of(gm, node), ActivationQuantizer):
            gm.graph.erase_node(node)
            gm.delete_submodule(str(node.target))
    gm.recompile()
