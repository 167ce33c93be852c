"""AdaRound: learn whether each weight rounds up or down (Nagel et al. 2020, "Up or Down? Adaptive Rounding
for Post-Training Quantization").

Rounding every weight to its nearest integer minimises the error of each weight, not of the layer's output:
the errors of a row add up in ``W x``. AdaRound keeps the scale ``s`` and the grid, and learns for every
weight only the direction it rounds, by minimising the layer's output error on calibration data:

    W~ = s * clamp(floor(W / s) + h(V), -b, b)
    h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),   zeta = 1.1, gamma = -0.1
    loss = sum_c (f(W x + b) - f(W~ x~ + b~))_c^2 (mean over samples and positions)
           + lambda * sum_ij (1 - |2 h(V_ij) - 1|^beta)

- ``h`` is a rectified sigmoid: it reaches exactly 0 and 1 (the stretch past [0, 1] is clamped), so a
  weight can settle on either neighbour with a zero gradient there. ``V`` starts where ``h(V) = frac(W/s)``,
  so the first forward computes ``W~ = W`` (inside the clamp): learning starts at the float weights.
- ``f`` is the activation that follows the layer when it is a ReLU (the paper's choice: an error that the
  ReLU clips to 0 costs nothing), else the identity (pre-activation output).
- ``x`` is what the layer reads in the fp32 model, ``x~`` what it reads in the partly quantized model
  (earlier layers already rounded, activation quantizers on): the paper's asymmetric reconstruction, which
  lets a layer make up for the error of the layers before it. Symmetric: ``x~ = x``.
- The regulariser pushes every ``h`` to 0 or 1; it is off for the first ``warm_up`` fraction of the steps
  (only the reconstruction moves ``V`` there) and ``beta`` falls from 20 to 2 along a cosine after that: a
  high ``beta`` only pulls values already near 0 or 1, a low one pulls every value. Adam.
- Steps and step size: the paper takes 10,000 Adam steps at lr 1e-3 per layer (AIMET's default too), which
  is minutes per layer on a CPU. graphopt's default is 500 steps at lr 1e-2: ``V`` moves about as far, and
  on the digits CNN (W3A8 per channel, 256 samples) it beat 500 steps at 1e-3 (logit cosine to fp32 0.9983
  vs 0.9869; nearest 0.9595) and matched 1000 steps at 1e-2 (0.9981).
- At the end the rounding is hard, ``h >= 0.5`` rounds up. The reconstruction loss follows AIMET's
  (squared error summed over channels, averaged over samples and positions) and so does ``lambda = 0.01``.

The result is never worse than round-to-nearest on the data it was learned from: when the learned integers
reconstruct the output worse (too few steps to settle), the nearest ones are kept and the result says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: The rectified sigmoid's stretch: h spans [gamma, zeta] before the clamp to [0, 1].
ZETA, GAMMA = 1.1, -0.1

#: ``(inputs, weight) -> output``: the layer (conv or linear, with its bias) then its activation.
LayerFunction = Callable[[Tensor, Tensor], Tensor]

#: Samples per forward when the error is measured over all the data (bounds memory on large layers).
_EVAL_CHUNK = 256


@dataclass(frozen=True)
class RoundingConfig:
    """How one layer's rounding is learned (module docstring)."""

    iterations: int = 500
    batch_size: int = 32
    regularization: float = 0.01  # lambda
    warm_up: float = 0.2  # fraction of the steps without the regulariser
    beta_start: float = 20.0
    beta_end: float = 2.0
    lr: float = 1e-2  # with 500 steps (module docstring)
    seed: int = 0


@dataclass(frozen=True)
class LayerData:
    """One layer's calibration data: ``inputs`` x~ (what the int8 layer reads) and ``targets`` f(W x + b)
    (the fp32 layer's output on the fp32 model's input), sample i of one matching sample i of the other."""

    inputs: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class RoundingResult:
    integers: Tensor  # int8, the weight's shape
    flipped: int  # weights that round differently from nearest
    mse_nearest: float  # output reconstruction error with round-to-nearest
    mse_learned: float  # ... with the integers returned
    kept_nearest: bool  # the learned rounding was not better: the nearest integers are returned


def rectified_sigmoid(v: Tensor) -> Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(rest: Tensor) -> Tensor:
    """``V`` with ``h(V) = rest`` for ``rest`` in [0, 1): the inverse of the rectified sigmoid."""
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


def rounding_regularizer(h: Tensor, beta: float) -> Tensor:
    """``sum(1 - |2h - 1|^beta)``: 0 when every ``h`` is 0 or 1, largest at ``h = 0.5``."""
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


def beta_at(step: int, config: RoundingConfig) -> float | None:
    """The regulariser's ``beta`` at ``step``, or None during the warm-up (no regulariser)."""
    start = config.warm_up * config.iterations
    if step < start:
        return None
    progress = (step - start) / max(config.iterations - start, 1)
    return config.beta_end + 0.5 * (config.beta_start - config.beta_end) * (1 + math.cos(progress * math.pi))


def reconstruction_error(output: Tensor, target: Tensor) -> Tensor:
    """Squared error summed over the channel dim (1), averaged over samples and positions."""
    return (output - target).pow(2).sum(dim=1).mean()


def nearest_integers(weight: Tensor, scale: Tensor, bound: int) -> Tensor:
    return torch.clamp(torch.round(weight / scale), -bound, bound)


def learn_rounding(
    weight: Tensor, scale: Tensor, bound: int, layer: LayerFunction, data: LayerData, config: RoundingConfig
) -> RoundingResult:
    """The integers of ``weight`` (``scale`` broadcast against it, ``|q| <= bound``) that AdaRound learns for
    ``layer`` on ``data``, with the reconstruction error before and after."""
    weight, scale = weight.detach().float(), scale.detach().float()
    floor = torch.floor(weight / scale)
    v = initial_v(weight / scale - floor).requires_grad_(True)
    adam = _Adam(v, config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    batch = min(config.batch_size, len(data))
    for step in range(config.iterations):
        rows = torch.randint(len(data), (batch,), generator=generator)
        h = rectified_sigmoid(v)
        soft = scale * torch.clamp(floor + h, -bound, bound)
        loss = reconstruction_error(layer(data.inputs[rows], soft), data.targets[rows])
        beta = beta_at(step, config)
        if beta is not None:
            loss = loss + config.regularization * rounding_regularizer(h, beta)
        (grad,) = torch.autograd.grad(loss, v)
        adam.step(grad)
    with torch.no_grad():
        learned = torch.clamp(floor + (rectified_sigmoid(v) >= 0.5).float(), -bound, bound)
        nearest = nearest_integers(weight, scale, bound)
        mse_nearest = output_error(layer, data, nearest * scale)
        mse_learned = output_error(layer, data, learned * scale)
    kept_nearest = mse_learned >= mse_nearest
    integers = nearest if kept_nearest else learned
    return RoundingResult(
        integers=integers.to(torch.int8),
        flipped=int((integers != nearest).sum()),
        mse_nearest=mse_nearest,
        mse_learned=min(mse_learned, mse_nearest),
        kept_nearest=kept_nearest,
    )


class _Adam:
    """Adam (Kingma & Ba) on one tensor, updated in place. torch.optim.Adam computes the same; its first
    step imports torch._dynamo (seconds, measured 9 s on a loaded 2-core machine) and every step goes
    through its profiling hooks, a fifth of a small layer's step."""

    def __init__(
        self, param: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ):
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.mean, self.square = torch.zeros_like(param), torch.zeros_like(param)
        self.steps = 0

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        (b1, b2), self.steps = self.betas, self.steps + 1
        self.mean.mul_(b1).add_(grad, alpha=1 - b1)
        self.square.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denominator = (self.square / (1 - b2**self.steps)).sqrt_().add_(self.eps)
        self.param.addcdiv_(self.mean, denominator, value=-self.lr / (1 - b1**self.steps))


def output_error(layer: LayerFunction, data: LayerData, weight: Tensor) -> float:
    """The mean squared error of ``layer`` with ``weight`` against the targets, over all the data."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), _EVAL_CHUNK):
            output = layer(data.inputs[start : start + _EVAL_CHUNK], weight)
            total += float((output - data.targets[start : start + _EVAL_CHUNK]).pow(2).sum())
            count += output.numel()
    return total / max(count, 1)
