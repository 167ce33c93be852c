"""int8 quantization: schemes and their arithmetic, range observers, the annotation policy, IR modules."""

from __future__ import annotations

from torch import nn

from graphopt.quant.dynamic import DynamicInt8Linear
from graphopt.quant.modules import ActivationQuantizer, QuantizedLayer
from graphopt.quant.observers import ObserverConfig
from graphopt.quant.options import WeightQuant
from graphopt.quant.scheme import QuantScheme, sqnr_db


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds calibrated int8 quantizers or dynamic int8 layers."""
    return any(
        (isinstance(m, ActivationQuantizer) and m.frozen) or isinstance(m, DynamicInt8Linear)
        for m in model.modules()
    )


__all__ = [
    "ActivationQuantizer",
    "ObserverConfig",
    "QuantScheme",
    "QuantizedLayer",
    "WeightQuant",
    "is_quantized",
    "sqnr_db",
]
