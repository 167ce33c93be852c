"""Bias correction (Nagel et al. 2019, "Data-Free Quantization", sec. 4.2): the math.

Rounding a layer's weights to int8 makes ``W_q = W + dW``; its output error on an input ``x`` is
``dW x``, whose mean over the data, ``E[dW x] = dW E[x]``, is a per-output-channel offset that no later
layer removes (rounding errors of a channel do not average out when they share a sign, and per-tensor or
sub-8-bit weights make them large). Subtracting it from the bias removes the offset:

    b' = b - E[y_q - y]        (requantized to int32 with the layer's bias scale ``s_in s_w,c``)

- Empirical (:class:`ErrorMoments`): ``E[y_q - y]`` measured on calibration data, with ``y = W x + b``
  the fp32 layer and ``y_q`` the int8 layer on the *same* input as the quantized model feeds it (earlier
  layers quantized and already corrected). Averaged over the batch and every spatial position per output
  channel. The same moments give the layer's output SQNR before and, exactly, after the correction
  (``sum (e + d)^2 = sum e^2 + 2 d sum e + n d^2`` for a per-channel shift ``d``).
- Analytic (no data): ``E[x]`` from the BatchNorm that produced the layer's input, before it was folded:
  a BatchNorm's output is modelled per channel as ``N(beta, gamma^2)`` (:class:`ChannelNormal`), and
  through ``clamp(x, 0, m)`` (ReLU: ``m = inf``, ReLU6: ``m = 6``) its mean is the clipped normal mean
  ``g(mu) - g(mu - m)`` with ``g(mu) = E[max(X, 0)] = mu Phi(mu / sigma) + sigma phi(mu / sigma)``. Then
  ``E[dW x]_c = sum_{j,k} dW[c, j, k] E[x_j]`` (zero padding at the borders ignored). The statistics are
  gone once ``fold_batchnorm`` has run, so :func:`record_batchnorm_stats` keeps them on the IR
  (``gm.meta[BATCHNORM_OUTPUT_STATS]``, per producing layer) before folding, and ``equalize`` rescales
  them with the channels (:func:`rescale_output_stats`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from graphopt.ir.graph import call_sites, ir_fact, is_metadata_read, module_of, set_ir_fact
from graphopt.quant.equalization import weighted_input_sum

#: IR fact: ``{layer target: ChannelNormal}``, the distribution of a layer's output as its folded
#: BatchNorm's statistics describe it.
BATCHNORM_OUTPUT_STATS = "graphopt.batchnorm_output_stats"

_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class ChannelNormal:
    """Per-channel ``N(mean, std^2)`` (float64)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> ChannelNormal:
        """The output of an inference BatchNorm whose input has its running mean and variance:
        mean ``beta``, std ``|gamma| sqrt(var / (var + eps))``."""
        assert bn.running_mean is not None and bn.running_var is not None
        var = bn.running_var.detach().double()
        std = torch.sqrt(var / (var + bn.eps))
        if bn.weight is not None:
            std = std * bn.weight.detach().double().abs()
        mean = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
        return cls(mean, std)

    def clipped_mean(self, upper: float) -> torch.Tensor:
        """``E[clamp(X, 0, upper)]`` per channel (``upper = inf``: ReLU)."""
        mean = _relu_mean(self.mean, self.std)
        if math.isinf(upper):
            return mean
        return mean - _relu_mean(self.mean - upper, self.std)


def _relu_mean(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sigma = sigma.clamp(min=1e-12)
    z = mu / sigma
    normal = torch.distributions.Normal(torch.zeros_like(z), torch.ones_like(z))
    return mu * normal.cdf(z) + sigma * normal.log_prob(z).exp()


def record_batchnorm_stats(gm: fx.GraphModule) -> int:
    """Keep, for every BatchNorm module ``fold_batchnorm`` can fold (after a conv / linear with one consumer
    and one call site, with running statistics), its output distribution on the IR; return how many."""
    sites = call_sites(gm)
    found: dict[str, ChannelNormal] = {}
    for node in gm.graph.nodes:
        bn = module_of(gm, node)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.training or bn.running_var is None:
            continue
        producer = node.args[0]
        if not isinstance(producer, fx.Node) or not isinstance(module_of(gm, producer), _PRODUCERS):
            continue
        if (
            len([u for u in producer.users if not is_metadata_read(u)]) == 1
            and sites[str(producer.target)] == 1
        ):
            found[str(producer.target)] = ChannelNormal.of_batchnorm(bn)
    if found:
        set_ir_fact(gm, BATCHNORM_OUTPUT_STATS, {**batchnorm_output_stats(gm), **found})
    return len(found)


def batchnorm_output_stats(gm: fx.GraphModule) -> dict[str, ChannelNormal]:
    return dict(ir_fact(gm, BATCHNORM_OUTPUT_STATS, {}))  # type: ignore[call-overload]


def rescale_output_stats(gm: fx.GraphModule, target: str, scales: torch.Tensor) -> None:
    """Layer ``target``'s output channels were divided by ``scales`` (equalization): so are its statistics."""
    stats = batchnorm_output_stats(gm)
    if target in stats:
        normal = stats[target]
        stats[target] = ChannelNormal(normal.mean / scales, normal.std / scales)
        set_ir_fact(gm, BATCHNORM_OUTPUT_STATS, stats)


def shift_output_stats(gm: fx.GraphModule, target: str, shift: torch.Tensor) -> None:
    """Layer ``target``'s output channels were moved by ``shift`` (high-bias absorption): so is their mean."""
    stats = batchnorm_output_stats(gm)
    if target in stats:
        normal = stats[target]
        stats[target] = ChannelNormal(normal.mean + shift.double(), normal.std)
        set_ir_fact(gm, BATCHNORM_OUTPUT_STATS, stats)


def analytic_weight_error_mean(
    weight_error: torch.Tensor, input_mean: torch.Tensor, groups: int
) -> torch.Tensor:
    """``E[dW x]_c = sum_{j,k} dW[c, j, k] E[x_j]`` per output channel (groups taken into account)."""
    return weighted_input_sum(weight_error, input_mean, groups)


class ErrorMoments:
    """Per-output-channel moments of a layer's output error ``e = y_q - y`` (and of ``y``), accumulated
    batch by batch: the mean error to remove and the SQNR before and after removing a shift."""

    def __init__(self) -> None:
        self.count = 0
        self.error_sum: torch.Tensor | None = None
        self.error_square_sum: torch.Tensor | None = None
        self.signal_square: float = 0.0

    def update(self, reference: torch.Tensor, quantized: torch.Tensor, channel_axis: int) -> None:
        error = (quantized.double() - reference.double()).movedim(channel_axis, -1)
        error = error.reshape(-1, error.shape[-1])
        sums, squares = error.sum(dim=0), error.pow(2).sum(dim=0)
        if self.error_sum is None or self.error_square_sum is None:
            self.error_sum, self.error_square_sum = sums, squares
        else:
            self.error_sum, self.error_square_sum = self.error_sum + sums, self.error_square_sum + squares
        self.count += error.shape[0]
        self.signal_square += float(reference.double().pow(2).sum())

    @property
    def mean_error(self) -> torch.Tensor:
        assert self.error_sum is not None, "no data was seen"
        return self.error_sum / self.count

    def sqnr_db(self, shift: torch.Tensor | None = None) -> float:
        """The output SQNR in dB, after adding ``shift`` per channel to the output when given."""
        assert self.error_sum is not None and self.error_square_sum is not None
        noise = self.error_square_sum
        if shift is not None:
            noise = noise + 2 * shift * self.error_sum + self.count * shift.pow(2)
        total = float(noise.sum())
        if total <= 0:
            return float("inf")
        return 10.0 * math.log10(max(self.signal_square, 1e-30) / total)
