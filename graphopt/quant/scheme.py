"""Integer formats and the arithmetic that maps float ranges to them.

Affine quantization: ``q = clamp(round(x / s) + z, q_min, q_max)``, ``x ~ s * (q - z)``.

- Activations, asymmetric, per tensor: for an observed range ``[lo, hi]`` widened to contain 0 (so that 0 is
  exact, which zero padding and ReLU need), ``s = (hi - lo) / (q_max - q_min)`` and
  ``z = clamp(round(q_min - lo / s), q_min, q_max)``.
- Weights, symmetric, per output channel: ``z = 0`` and ``s_c = max|w_c| / r`` with ``r = 127``, or ``r = 64``
  with ``reduce_range`` (7-bit weights). Stored as int8 in ONNX's [-128, 127]; with reduce_range the values
  only reach [-64, 64], so that on AVX2 without VNNI, where ``vpmaddubsw`` adds two u8 x s8 products in int16,
  ``2 * 255 * 64 = 32640`` never saturates (FINDINGS: 99.54 % vs 98.52 % on digits without it).
  Per tensor (``per_channel=False``): one ``s = max|w| / r`` for the whole weight, kept as C equal scales so
  every reader sees the same (C,) shape; the ONNX lowering writes it as one scalar scale.
- Weights below 8 bits, ``weight_bits = b`` in 2..7: symmetric ``r = 2^(b-1) - 1`` (7, 3, 1 at b = 4, 3, 2;
  the code ``-2^(b-1)`` is left out so that 0 stays the centre and the range is symmetric, as for int8). The
  values still live in an int8 tensor in eager; the ONNX file stores 2..4-bit layers as packed INT4.
  ``reduce_range`` only means something at 8 bits: at b <= 7, ``r <= 63`` already keeps
  ``2 * 255 * r <= 32130 < 2^15``, so the int16 pair sums of AVX2 cannot saturate and it is ignored.
- Bias, int32 per output channel: ``s_b = s_in * s_w,c``, ``z = 0``, which is what integer kernels
  (QLinearConv, QGemm) accumulate in.
- Power-of-two (fixed-point) scales, ``power_of_two=True``: every scale is ``2^-b``, so
  ``x_q = round(x * 2^b)``, ``x = x_q / 2^b``, and requantization is a shift (what fixed-point DSPs and
  NPUs without a multiplier in the requantizer need). The free scale ``s`` lies between
  ``2^floor(log2 s)`` (finer steps, the top of the range clips) and ``2^ceil(log2 s)`` (no clipping,
  coarser steps); the direction taken is the one with the smaller mean squared round-trip error: on the
  calibration sample for activations (without one, up: no clipping), on the weights themselves, channel by
  channel, for weights. Bias scales, products of two powers of two, are powers of two too. The lowered QDQ
  ONNX is the same canonical form; only the scale values change.
- Clipped weight ranges, ``weight_clipping="mse"``: per channel (per tensor without per-channel scales),
  ``s_c = a_c * max|w_c| / r`` with ``a_c`` from a grid on [0.3, 1] minimizing the squared rounding error
  ``sum_j (w_cj - s_c * clamp(round(w_cj / s_c), -r, r))^2``: a few large weights clip so that the many
  small ones get finer steps. It matters below 8 bits (at 4 bits ``r = 7`` levels per side): on
  heavy-tailed weights it cuts the weight error by about a third (``tests/test_weight_clipping.py``). This
  is the weight-only form of the MSE range search (not the sequential, output-based one).
- Per-group weights, ``group_size = g`` (2..4 bits, per channel): one scale per block of ``g`` consecutive
  input channels of each output channel, ``s_c,k = max_{j in block k} |w_cj| / r``, for Linear layers and
  1x1 convs (:mod:`graphopt.quant.groups` has the math, the layers it covers and the ONNX form).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from graphopt.errors import ConfigError

ActivationType = Literal["uint8", "int8"]

#: The weight widths a scheme may ask for: at 1 bit the symmetric code ``2^0 - 1 = 0`` has only the value 0.
WEIGHT_BITS = range(2, 9)
#: The widest weights an ONNX INT4 initializer holds (2 and 3 bits are stored as int4 too).
INT4_BITS = 4

_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}
_TORCH_DTYPES = {"uint8": torch.uint8, "int8": torch.int8}
INT32_RANGE = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class QuantScheme:
    """What a target's int8 looks like: activation type, weight range, per-channel weights."""

    activations: ActivationType = "uint8"
    reduce_range: bool = True
    per_channel: bool = True
    power_of_two: bool = False  # fixed-point: every scale 2^-b (see the module docstring)
    #: Symmetric weights in [-(2^(b-1) - 1), 2^(b-1) - 1] (module docstring); 8: int8.
    weight_bits: int = 8
    #: ``"none"``: ``s = max|w| / r``; ``"mse"``: the clipped scale with the least rounding error (docstring).
    weight_clipping: Literal["none", "mse"] = "none"
    #: Input channels per weight scale (per-group, block-wise scales; :mod:`graphopt.quant.groups`); None:
    #: one scale per output channel.
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.activations not in _RANGES:
            raise ConfigError(f"activations must be 'uint8' or 'int8', got {self.activations!r}")
        bits = self.weight_bits
        if not isinstance(bits, int) or isinstance(bits, bool) or bits not in WEIGHT_BITS:
            raise ConfigError(
                f"weight_bits must be an integer from {WEIGHT_BITS[0]} to {WEIGHT_BITS[-1]} (8: int8, "
                f"4: int4 weights with int8 activations), got {bits!r}"
            )
        if self.weight_clipping not in ("none", "mse"):
            raise ConfigError(f"weight_clipping must be 'none' or 'mse', got {self.weight_clipping!r}")
        if self.group_size is not None:
            _check_group_size(self.group_size, bits, self.per_channel)

    def with_weight_bits(self, bits: int) -> QuantScheme:
        """This scheme at ``bits``; per-group scales only where they apply (2..4 bits): a layer kept at 8
        bits (``bits_by_layer``, the bit allocation) goes back to one scale per output channel."""
        group_size = self.group_size if bits <= INT4_BITS else None
        return dataclasses.replace(self, weight_bits=bits, group_size=group_size)

    @property
    def activation_range(self) -> tuple[int, int]:
        return _RANGES[self.activations]

    @property
    def activation_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.activations]

    @property
    def weight_bound(self) -> int:
        """The largest |q| a weight may take: at 8 bits 64 with reduce_range (7 bits), else 127; below 8 bits
        ``2^(b-1) - 1`` whatever reduce_range says (module docstring)."""
        if self.weight_bits < 8:
            return 2 ** (self.weight_bits - 1) - 1
        return 64 if self.reduce_range else 127

    @property
    def sub_byte(self) -> bool:
        """Whether the weights fit ONNX's INT4 storage (2..4 bits): the file keeps them two per byte."""
        return self.weight_bits <= INT4_BITS


def _check_group_size(group_size: object, bits: int, per_channel: bool) -> None:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ConfigError(
            f"group_size must be a positive number of input channels (e.g. 32), not {group_size!r}"
        )
    if bits > INT4_BITS:
        raise ConfigError(
            f"group_size applies to weights of 2..4 bits (INT4 storage), got bits={bits}: from 5 bits on the "
            "weights are stored as int8, where one scale per output channel is what the int8 kernels run"
        )
    if not per_channel:
        raise ConfigError(
            "group_size gives several scales per output channel: it cannot go with per_channel=False"
        )


def activation_qparams(
    lo: float, hi: float, scheme: QuantScheme, sample: torch.Tensor | None = None
) -> tuple[float, int]:
    """``(scale, zero_point)`` for the range ``[lo, hi]`` (widened to contain 0). With power-of-two scales,
    the neighbour power with the smaller round-trip error on ``sample`` (without one: the upper)."""
    q_min, q_max = scheme.activation_range
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / (q_max - q_min), 1e-8)
    if scheme.power_of_two:
        down, up = _neighbour_powers(torch.tensor(scale, dtype=torch.float64))
        scale = float(up)
        if sample is not None and sample.numel():
            errors = [_activation_error(sample, float(s), lo, scheme) for s in (down, up)]
            scale = float(down) if errors[0] < errors[1] else float(up)
    zero_point = _zero_point(lo, scale, scheme)
    return float(scale), zero_point


def _zero_point(lo: float, scale: float, scheme: QuantScheme) -> int:
    q_min, q_max = scheme.activation_range
    return int(min(max(round(q_min - lo / scale), q_min), q_max))


def _activation_error(sample: torch.Tensor, scale: float, lo: float, scheme: QuantScheme) -> float:
    q_min, q_max = scheme.activation_range
    zero_point = _zero_point(lo, scale, scheme)
    q = torch.clamp(torch.round(sample / scale) + zero_point, q_min, q_max)
    return float(((q - zero_point) * scale - sample).pow(2).mean())


def _neighbour_powers(scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The powers of two just below and just above ``scale`` (both equal to it when it is one)."""
    exponent = torch.log2(scale)
    return torch.exp2(torch.floor(exponent)), torch.exp2(torch.ceil(exponent))


def weight_scales(weight: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """Per-output-channel (axis 0) symmetric scales ``max|w_c| / bound`` (one scale if not per-channel),
    clipped to the least rounding error with ``weight_clipping="mse"``; with power-of-two scales, per
    channel the neighbour power with the smaller round-trip error."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    magnitude = flat.abs()
    peak = magnitude.amax(dim=1) if scheme.per_channel else magnitude.amax().expand(weight.shape[0])
    scales = (peak / scheme.weight_bound).clamp(min=1e-12).double()
    if scheme.weight_clipping == "mse":
        scales = _least_error_scales(flat.float(), scales.float(), scheme).double()
    if not scheme.power_of_two:
        return scales.float()
    down, up = _neighbour_powers(scales)
    bound = scheme.weight_bound
    errors = [
        ((torch.clamp(torch.round(flat / s[:, None]), -bound, bound) * s[:, None] - flat).pow(2)).mean(dim=1)
        for s in (down, up)
    ]
    return torch.where(errors[0] < errors[1], down, up).float()


#: The clipping fractions of max|w| tried by ``weight_clipping="mse"``.
CLIPPING_GRID = torch.linspace(0.3, 1.0, 36)


def _least_error_scales(flat: torch.Tensor, scales: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """``scales`` times the fraction of :data:`CLIPPING_GRID` with the least squared rounding error, per
    channel, or one fraction for all channels when the scale is per tensor."""
    bound = scheme.weight_bound
    errors = torch.stack([
        (torch.clamp(torch.round(flat / (a * scales)[:, None]), -bound, bound) * (a * scales)[:, None] - flat)
        .pow(2).sum(dim=1)
        for a in CLIPPING_GRID
    ])  # fmt: skip
    if not scheme.per_channel:
        return scales * CLIPPING_GRID[errors.sum(dim=1).argmin()]
    return scales * CLIPPING_GRID[errors.argmin(dim=0)]


def quantize_weight(weight: torch.Tensor, scales: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    shape = (-1, *([1] * (weight.dim() - 1)))
    bound = scheme.weight_bound
    return torch.clamp(torch.round(weight.detach() / scales.reshape(shape)), -bound, bound).to(torch.int8)


def quantize_bias(bias: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    low, high = INT32_RANGE
    return torch.clamp(torch.round(bias.detach().double() / scales.double()), low, high).to(torch.int32)


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(|x|^2 / |x - x_q|^2)`` in dB (inf when exact)."""
    noise = float((reference.double() - approximation.double()).pow(2).sum())
    signal = float(reference.double().pow(2).sum())
    if noise == 0:
        return float("inf")
    return 10.0 * torch.log10(torch.tensor(signal / noise)).item()
