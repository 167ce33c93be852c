"""The module types graphopt's passes insert into the IR, and what a backend must lower each to.

A captured graph holds ``nn`` layers a runtime already knows (convs, linears, norms, activations). The
passes add a few module types of their own; these are every one of them, so a backend author reads this
module, not the passes, to know what a graph may contain. A backend lowers each type it supports and refuses
the others by name (:class:`~graphopt.errors.ExportError`), never silently as something else.

========================  ==================================  ===============================================
type                      inserted by                         what it computes, and the canonical lowering
========================  ==================================  ===============================================
``ActivationQuantizer``   ``insert_fake_quant``               ``dequantize(quantize(x))`` once frozen (static
                                                              int8 scale and zero point): a QuantizeLinear /
                                                              DequantizeLinear pair
``QuantizedLayer``        ``insert_fake_quant``               a conv or linear with int8 per-channel weights
                                                              and int32 bias (``s_in * s_w``): int8 / int32
                                                              initializers feeding DequantizeLinear, fused by
                                                              the runtime into its integer conv / GEMM
``DynamicInt8Linear``     ``quantize_dynamic``                a linear with s8 weights and activations
                                                              quantized per call from their range:
                                                              DynamicQuantizeLinear -> MatMulInteger
``Int8Embedding``         ``quantize_dynamic``                an embedding table stored in int8 with
                                                              per-row scales: Gather then dequantize
``SpaceToDepth``          ``space_to_depth``                  a pixel unshuffle in front of a stride-2 conv
                                                              (reshape / transpose; ONNX ``SpaceToDepth``)
``EarlyExitNetwork``      ``insert_early_exit``               backbone segments and exit heads with a
                                                              confidence branch: ``torch.cond`` / ONNX ``If``
``ScriptableEarlyExit``   (TorchScript backend)               the same network in the form ``torch.jit``
                                                              scripts
========================  ==================================  ===============================================

Each type's own docstring gives its math. :data:`EXTENSION_TYPES` lists them for code that must check a
graph holds nothing a backend does not know.
"""

from __future__ import annotations

from torch import nn

from graphopt.early_exit.network import EarlyExitNetwork, ScriptableEarlyExit
from graphopt.ir.layout import SpaceToDepth
from graphopt.quant.dynamic import DynamicInt8Linear, Int8Embedding
from graphopt.quant.modules import ActivationQuantizer, QuantizedLayer

#: Every module type a graphopt pass can put into a graph.
EXTENSION_TYPES: tuple[type[nn.Module], ...] = (
    ActivationQuantizer,
    QuantizedLayer,
    DynamicInt8Linear,
    Int8Embedding,
    SpaceToDepth,
    EarlyExitNetwork,
    ScriptableEarlyExit,
)

__all__ = [
    "EXTENSION_TYPES",
    "ActivationQuantizer",
    "DynamicInt8Linear",
    "EarlyExitNetwork",
    "Int8Embedding",
    "QuantizedLayer",
    "ScriptableEarlyExit",
    "SpaceToDepth",
]
