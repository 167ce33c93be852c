"""The fp32 twin of an int8 graph: the same graph and the same learned weights, without the quantizers.

When quantization-aware training has moved the weights after the fp32 snapshot was taken, the snapshot no
longer holds the model the pipeline trained; an fp32 fall-back built from it would throw that training away
(measured on digits_resnet, prune 0.5, one epoch of recovery then one of QAT: the snapshot 78.9 %, the QAT
model 88.3 %). The twin keeps it: every :class:`QuantizedLayer` becomes its plain conv / linear with the
dequantized weights ``W = s_c * W_q`` (the values int8 computes with), every :class:`ActivationQuantizer`
an identity (it is removed), so the graph runs the fp32 kernels on the weights training reached.
"""

from __future__ import annotations

import torch.fx as fx

from graphopt.ir.graph import deep_copy, set_module
from graphopt.quant.modules import ActivationQuantizer, QuantizedLayer


def has_int8_layers(gm: fx.GraphModule) -> bool:
    """Whether ``gm`` holds static int8 layers (the ones QAT trains)."""
    return any(isinstance(m, QuantizedLayer) for m in gm.modules())


def float_twin(gm: fx.GraphModule, *, unrounded: bool = False) -> fx.GraphModule:
    """A new graph: ``gm`` with its int8 layers in fp32 and its activation quantizers taken out.

    ``unrounded``: the layers' fp32 weights as they were before quantization (``fp32_layer``), not the
    dequantized int8 ones: the model that entered quantization, for measuring what int8 costs."""
    twin = deep_copy(gm)
    for node in list(twin.graph.nodes):
        if node.op != "call_module":
            continue
        module = twin.get_submodule(node.target)
        if isinstance(module, ActivationQuantizer):
            node.replace_all_uses_with(node.args[0])
            twin.graph.erase_node(node)
        elif isinstance(module, QuantizedLayer):
            set_module(twin, node.target, module.fp32_layer if unrounded else module.as_float())
    twin.delete_all_unused_submodules()
    twin.recompile()
    return twin
