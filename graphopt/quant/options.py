"""The typed options of the int8 passes, apart from the passes themselves.

Targets are declared with these options (``graphopt.targets``); keeping them out of the pass modules means a
target can be read, and ``graphopt.targets`` imported first, without importing the pass layer (which imports
targets back for the ones that time candidates in a target's runtime).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from graphopt.errors import ConfigError
from graphopt.pipeline.pass_base import PassOptions
from graphopt.quant.observers import ObserverConfig
from graphopt.quant.scheme import INT4_BITS, WEIGHT_BITS, QuantScheme

#: ``(layer name, weight bits)`` pairs, sorted by name: a per-layer map that stays hashable and prints stably.
LayerBits = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class WeightQuant:
    """How a static int8 target stores its conv and linear weights (``optimize(weights=...)``).

    ``bits``: 2..8, symmetric in [-(2^(b-1) - 1), 2^(b-1) - 1] (``QuantScheme.weight_bits``), activations
    stay the target's 8 bits (W4A8 at 4). ``per_channel=False``: one scale per weight tensor (what many NPUs
    and DSPs take). ``bits_by_layer``: another width for named layers (the graph's module names, e.g.
    ``{"conv1": 8, "fc": 8}`` to keep the first and last layer at 8 bits); a name that is not an int8 layer of
    the graph is refused with the close names.

    ``max_weight_bytes``: mixed widths under a size goal. Layers start at 8 bits and the least sensitive drop
    to ``bits`` (2..4) until the weights take at most this many bytes in the artifact (ONNX: two 4-bit
    weights per byte), chosen on calibration data by the ``allocate_weight_bits`` pass (its module says
    how); layers in ``bits_by_layer`` keep their width. The budget covers the int8 layers as calibrated:
    a layer ``accuracy_budget`` later puts back in fp32 (4 bytes per weight) comes on top.

    ``clipping="mse"``: each weight scale clips the range to the least squared rounding error instead of
    covering ``max|w|`` (``QuantScheme.weight_clipping``; what 4-bit weights need most).

    ``group_size``: one scale per block of that many consecutive input channels of each output channel
    (2..4 bits; Linear layers and 1x1 convs, other convs keep per-channel scales; ONNX only, as a blocked
    DequantizeLinear: :mod:`graphopt.quant.groups`).
    """

    bits: int = 8
    per_channel: bool = True
    bits_by_layer: Mapping[str, int] | LayerBits = ()
    max_weight_bytes: int | None = None
    clipping: Literal["none", "mse"] = "none"
    group_size: int | None = None

    def __post_init__(self) -> None:
        QuantScheme(weight_bits=self.bits, weight_clipping=self.clipping)  # the checks, with their messages
        if not isinstance(self.per_channel, bool):
            raise ConfigError(f"WeightQuant.per_channel must be True or False, got {self.per_channel!r}")
        if self.group_size is not None:
            QuantScheme(weight_bits=self.bits, per_channel=self.per_channel, group_size=self.group_size)
            if self.max_weight_bytes is not None:
                raise ConfigError(
                    "WeightQuant(group_size=..., max_weight_bytes=...) is not built: the bit allocation "
                    "weighs per-channel layers; use group_size with bits_by_layer, or max_weight_bytes alone"
                )
        object.__setattr__(self, "bits_by_layer", _layer_bits(self.bits_by_layer))
        budget = self.max_weight_bytes
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
            raise ConfigError(f"WeightQuant.max_weight_bytes must be a number of bytes >= 1, got {budget!r}")
        if budget is not None and self.bits > INT4_BITS:
            raise ConfigError(
                f"WeightQuant(max_weight_bytes=...) narrows layers to bits={self.bits}, which is stored in "
                "int8 bytes and saves nothing: use bits=4 (or 2, 3)"
            )

    def scheme_for(self, base: QuantScheme) -> QuantScheme:
        """``base`` (the target's scheme) with these weights; its activations, reduce_range, scales kept.
        With ``max_weight_bytes`` layers start at 8 bits: ``bits`` is where the allocation may take them."""
        start = 8 if self.max_weight_bytes is not None else self.bits
        return dataclasses.replace(
            base,
            weight_bits=start,
            per_channel=self.per_channel,
            weight_clipping=self.clipping,
            group_size=self.group_size,
        )

    def __str__(self) -> str:
        text = f"int{self.bits} weights " + ("per channel" if self.per_channel else "per tensor")
        if self.group_size is not None:
            text = f"int{self.bits} weights per group of {self.group_size} input channels"
        if self.max_weight_bytes is not None:
            text = (
                f"int8 weights, the least sensitive layers at int{self.bits} to fit "
                f"{self.max_weight_bytes:,} bytes, " + ("per channel" if self.per_channel else "per tensor")
            )
        text += ", clipped to the least squared error" if self.clipping == "mse" else ""
        return text + "".join(f", {name}: int{bits}" for name, bits in self.bits_by_layer)


def _layer_bits(given: object) -> LayerBits:
    pairs = given.items() if isinstance(given, Mapping) else given
    if not isinstance(pairs, Iterable) or isinstance(pairs, str):
        raise ConfigError(
            f'bits_by_layer must map layer names to bits, e.g. {{"conv1": 8}}, got {type(given).__name__}'
        )
    checked = []
    for pair in pairs:
        name, bits = pair if isinstance(pair, tuple) and len(pair) == 2 else (None, None)
        if not isinstance(name, str) or not name:
            raise ConfigError(f'bits_by_layer keys must be layer names such as "conv1", got {pair!r}')
        if not isinstance(bits, int) or isinstance(bits, bool) or bits not in WEIGHT_BITS:
            raise ConfigError(
                f"bits_by_layer[{name!r}] must be an integer from {WEIGHT_BITS[0]} to {WEIGHT_BITS[-1]}, "
                f"got {bits!r}"
            )
        checked.append((name, bits))
    return tuple(sorted(checked))


@dataclass(frozen=True)
class InsertFakeQuantOptions(PassOptions):
    scheme: QuantScheme = field(default_factory=QuantScheme)
    observer: ObserverConfig = field(default_factory=ObserverConfig)
    #: Layers whose weights take another width than ``scheme.weight_bits`` (``WeightQuant.bits_by_layer``).
    weight_bits_by_layer: LayerBits = ()
    #: Attention's two products in int8 too: each ``scaled_dot_product_attention`` is written out and the
    #: inputs of ``Q K^T`` and ``P V`` (of every product of two activations) quantized
    #: (:mod:`graphopt.quant.attention`).
    attention: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_bits_by_layer", _layer_bits(self.weight_bits_by_layer))

    def layer_schemes(self, layers: Iterable[str]) -> dict[str, QuantScheme]:
        """The scheme of each int8 layer (by module name): ``scheme``, with the width
        ``weight_bits_by_layer`` names; a name there that is not one of ``layers`` is a :class:`ConfigError`
        listing the close ones (a typo must not silently leave a layer at the default width)."""
        names = list(layers)
        unknown = [name for name, _ in self.weight_bits_by_layer if name not in names]
        if unknown:
            close = sorted({c for name in unknown for c in difflib.get_close_matches(name, names, n=3)})
            hint = f"close names: {', '.join(close)}" if close else f"int8 layers: {', '.join(names[:12])}"
            raise ConfigError(
                f"bits_by_layer names {', '.join(map(repr, unknown))}, which is not an int8 conv or linear "
                f"layer of the graph ({hint}); use the graph's module names (print(res.model))"
            )
        widths = dict(self.weight_bits_by_layer)
        return {
            name: self.scheme.with_weight_bits(widths[name]) if name in widths else self.scheme
            for name in names
        }


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
    #: One activation scale per token instead of per call, so a token's output never depends on its batch
    #: mates or padding (graphopt.quant.dynamic); ORT runs it without its fused int8 attention.
    per_token: bool = False

    def __post_init__(self) -> None:
        if self.min_cosine is not None and not 0 < self.min_cosine <= 1:
            raise ConfigError(f"min_cosine must be in (0, 1], got {self.min_cosine}")
        if not 0 <= self.max_fallback <= 1:
            raise ConfigError(f"max_fallback must be in [0, 1], got {self.max_fallback}")
