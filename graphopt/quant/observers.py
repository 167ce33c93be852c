"""Range observers for calibration: they watch an activation over the calibration data and pick ``[lo, hi]``.

- ``minmax``: the smallest and largest value seen.
- ``moving_average``: exponential moving average (momentum 0.9) of per-batch min and max, as in QAT.
- ``percentile``: the ``p`` and ``100 - p`` percentiles, ignoring outliers that would stretch the scale.
- ``mse``: the clipping range ``[a * lo, a * hi]``, ``a`` in a grid over [0.3, 1], that minimises the mean
  squared error between the values and their quantize-dequantize round trip.

Percentile and MSE need the values, not only extremes: each observer keeps a uniform random sample of at most
``max_samples`` values (reservoir-style, seeded), which is plenty for 8-bit ranges and bounded in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from graphopt.errors import ConfigError
from graphopt.quant.scheme import QuantScheme, activation_qparams

Method = Literal["minmax", "moving_average", "percentile", "mse"]


@dataclass(frozen=True)
class ObserverConfig:
    method: Method = "minmax"
    percentile: float = 99.99
    momentum: float = 0.9
    max_samples: int = 1 << 16

    def __post_init__(self) -> None:
        if self.method not in ("minmax", "moving_average", "percentile", "mse"):
            raise ConfigError(
                f"observer method must be minmax, moving_average, percentile or mse, got {self.method!r}"
            )
        if not 50 < self.percentile <= 100:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")


class RangeObserver:
    """Watches one tensor; :meth:`range` returns the calibrated ``[lo, hi]``."""

    def __init__(self, config: ObserverConfig, seed: int = 0, *, keep_sample: bool = False):
        self.config = config
        #: Keep a sample whatever the method (power-of-two scales pick their rounding direction on it).
        self.keep_sample = keep_sample or config.method in ("percentile", "mse")
        self.lo = float("inf")
        self.hi = float("-inf")
        self.avg_lo: float | None = None
        self.avg_hi: float | None = None
        self.sample = torch.empty(0)
        self.batches = 0
        self.generator = torch.Generator().manual_seed(seed)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach()
        if x.numel() == 0:
            return
        # One pass over the tensor; NaN propagates into aminmax and inf shows up as an extreme.
        lo_t, hi_t = torch.aminmax(x)
        lo, hi = float(lo_t), float(hi_t)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("non-finite values (NaN or inf) reached an activation")
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        m = self.config.momentum
        self.avg_lo = lo if self.avg_lo is None else m * self.avg_lo + (1 - m) * lo
        self.avg_hi = hi if self.avg_hi is None else m * self.avg_hi + (1 - m) * hi
        self.batches += 1
        if self.keep_sample:
            self._keep_sample(x.float().flatten())

    def _keep_sample(self, x: torch.Tensor) -> None:
        cap = self.config.max_samples
        take = x[torch.randperm(x.numel(), generator=self.generator)[:cap]] if x.numel() > cap else x
        pool = torch.cat([self.sample, take])
        if pool.numel() > cap:
            pool = pool[torch.randperm(pool.numel(), generator=self.generator)[:cap]]
        self.sample = pool

    def range(self, scheme: QuantScheme) -> tuple[float, float]:
        if self.batches == 0:
            raise ValueError("observer saw no data")
        method = self.config.method
        if method == "moving_average":
            return float(self.avg_lo), float(self.avg_hi)
        if method == "percentile":
            p = self.config.percentile / 100
            q = torch.quantile(self.sample, torch.tensor([1 - p, p]))
            return min(float(q[0]), 0.0) if self.lo < 0 else 0.0, float(q[1])
        if method == "mse":
            return _mse_range(self.sample, self.lo, self.hi, scheme)
        return self.lo, self.hi


def _mse_range(sample: torch.Tensor, lo: float, hi: float, scheme: QuantScheme) -> tuple[float, float]:
    q_min, q_max = scheme.activation_range
    best, best_err = (lo, hi), float("inf")
    for fraction in torch.linspace(0.3, 1.0, 36).tolist():
        cand_lo, cand_hi = lo * fraction, hi * fraction
        scale, zp = activation_qparams(cand_lo, cand_hi, scheme, sample)
        q = torch.clamp(torch.round(sample / scale) + zp, q_min, q_max)
        err = float(((q - zp) * scale - sample).pow(2).mean())
        if err < best_err:
            best, best_err = (cand_lo, cand_hi), err
    return best
