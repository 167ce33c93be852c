"""Integer formats and the arithmetic that maps float ranges to them.

Affine quantization: ``q = clamp(round(x / s) + z, q_min, q_max)``, ``x ~ s * (q - z)``.

- Activations, asymmetric, per tensor: for an observed range ``[lo, hi]`` widened to contain 0 (so that 0 is
  exact, which zero padding and ReLU need), ``s = (hi - lo) / (q_max - q_min)`` and
  ``z = clamp(round(q_min - lo / s), q_min, q_max)``.
- Weights, symmetric, per output channel: ``z = 0`` and ``s_c = max|w_c| / r`` with ``r = 127``, or ``r = 64``
  with ``reduce_range`` (7-bit weights). Stored as int8 in ONNX's [-128, 127]; with reduce_range the values
  only reach [-64, 64], so that on AVX2 without VNNI, where ``vpmaddubsw`` adds two u8 x s8 products in int16,
  ``2 * 255 * 64 = 32640`` never saturates (FINDINGS: 99.54 % vs 98.52 % on digits without it).
- Bias, int32 per output channel: ``s_b = s_in * s_w,c``, ``z = 0``, which is what integer kernels
  (QLinearConv, QGemm) accumulate in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from graphopt.errors import ConfigError

ActivationType = Literal["uint8", "int8"]

_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}
_TORCH_DTYPES = {"uint8": torch.uint8, "int8": torch.int8}
INT32_RANGE = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class QuantScheme:
    """What a target's int8 looks like: activation type, weight range, per-channel weights."""

    activations: ActivationType = "uint8"
    reduce_range: bool = True
    per_channel: bool = True

    def __post_init__(self) -> None:
        if self.activations not in _RANGES:
            raise ConfigError(f"activations must be 'uint8' or 'int8', got {self.activations!r}")

    @property
    def activation_range(self) -> tuple[int, int]:
        return _RANGES[self.activations]

    @property
    def activation_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.activations]

    @property
    def weight_bound(self) -> int:
        """The largest |q| a weight may take: 64 with reduce_range (7 bits), else 127."""
        return 64 if self.reduce_range else 127


def activation_qparams(lo: float, hi: float, scheme: QuantScheme) -> tuple[float, int]:
    """``(scale, zero_point)`` for the range ``[lo, hi]`` (widened to contain 0)."""
    q_min, q_max = scheme.activation_range
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / (q_max - q_min), 1e-8)
    zero_point = int(min(max(round(q_min - lo / scale), q_min), q_max))
    return float(scale), zero_point


def weight_scales(weight: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """Per-output-channel (axis 0) symmetric scales ``max|w_c| / bound`` (one scale if not per-channel)."""
    flat = weight.detach().reshape(weight.shape[0], -1).abs()
    peak = flat.amax(dim=1) if scheme.per_channel else flat.amax().expand(weight.shape[0])
    return (peak / scheme.weight_bound).clamp(min=1e-12).float()


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
