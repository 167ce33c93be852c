"""The typed options of the int8 passes, apart from the passes themselves.

Targets are declared with these options (``graphopt.targets``); keeping them out of the pass modules means a
target can be read, and ``graphopt.targets`` imported first, without importing the pass layer (which imports
targets back for the ones that time candidates in a target's runtime).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphopt.errors import ConfigError
from graphopt.pipeline.pass_base import PassOptions
from graphopt.quant.observers import ObserverConfig
from graphopt.quant.scheme import QuantScheme


@dataclass(frozen=True)
class InsertFakeQuantOptions(PassOptions):
    scheme: QuantScheme = field(default_factory=QuantScheme)
    observer: ObserverConfig = field(default_factory=ObserverConfig)


@dataclass(frozen=True)
class QuantizeDynamicOptions(PassOptions):
    #: 7-bit weights, for x86 CPUs without VNNI (int16 pair sums in ORT's u8 x s8 kernel overflow).
    reduce_range: bool = True
    #: Embedding tables weight-only int8 (one scale per row).
    embeddings: bool = True
    #: Put the most sensitive Linear layers back in fp32 until every sample's output cosine to fp32 is at
    #: least this, measured on calibration_data (else the example inputs); None: no fall-back.
    min_cosine: float | None = None
    #: At most this fraction of the Linear layers (rounded up) goes back to fp32.
    max_fallback: float = 0.1

    def __post_init__(self) -> None:
        if self.min_cosine is not None and not 0 < self.min_cosine <= 1:
            raise ConfigError(f"min_cosine must be in (0, 1], got {self.min_cosine}")
        if not 0 <= self.max_fallback <= 1:
            raise ConfigError(f"max_fallback must be in [0, 1], got {self.max_fallback}")
