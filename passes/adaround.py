"""AdaRound: learn each int8 (or narrower) weight's rounding direction on calibration data.

Runs after ``calibrate``: the scales stay as calibrated, only the integers change. Layer by layer, front to
back, :func:`~graphopt.quant.adaround.learn_rounding` picks for every weight ``floor(W/s)`` or
``floor(W/s) + 1`` so that the layer's output (through the ReLU after it, when there is one) matches the fp32
model's on calibration samples (the math is in :mod:`graphopt.quant.adaround`). The learned integers go into
the layer's ``weight_int8``; the bias is unchanged and ``fp32_layer`` stays, so ``accuracy_budget`` can still
put a layer back in fp32. Lossy.

Asymmetric reconstruction (the default, the paper's best): the layer learns on the input the partly quantized
model gives it (earlier layers already rounded, activation quantizers on), against the target the fp32
model computes, ``f(W x + b)`` on the fp32 model's input, so each layer also makes up for what the layers
before it lost. Inputs are captured with a forward pre-hook that stops the forward at the layer.

Cost: per layer, ``iterations`` forward/backward steps of that one layer on ``batch_size`` samples, plus
the forwards that capture its inputs (stopped at the layer). The captured inputs and targets of one layer for
``samples`` samples are held in memory at a time (fine for the small models here; at 224x224 lower
``samples``). Measured on the digits CNN (4 layers, 500 steps, one thread of a shared, heavily loaded
2-core Xeon with AVX-512 VNNI): 25-60 s.

The report's ``adaround`` table lists per layer the weights that round differently from nearest, the output
reconstruction error with nearest and with learned rounding, and the time taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from graphopt.errors import ConfigError
from graphopt.ir.graph import call_sites
from graphopt.passes.layer_by_layer import LayerByLayerPass
from graphopt.passes.layer_capture import (
    Candidate,
    Reconstruction,
    int8_forward,
)
from graphopt.pipeline.pass_base import PassOptions
from graphopt.quant.adaround import RoundingConfig, RoundingResult, learn_rounding
from graphopt.quant.modules import QuantizedLayer
from graphopt.quant.scheme import sqnr_db

#: Note keys (graphopt.reporting.notes): what tests and tools read instead of the sentences.
NOTHING_QUANTIZED = "adaround:nothing_quantized"  # written by the shared loop (passes/layer_by_layer.py)


@dataclass(frozen=True)
class AdaRoundOptions(PassOptions):
    """``iterations`` Adam steps per layer on minibatches of ``batch_size`` of the first ``samples``
    calibration samples; ``regularization`` is the paper's lambda; ``asymmetric``: learn on the partly
    quantized model's inputs (module docstring), else on the fp32 model's; ``layers``: the names of the
    int8 layers to round (None: all); ``lr``: Adam's step size (1e-2 with 500 steps rather than the
    paper's 1e-3 with 10,000: :mod:`graphopt.quant.adaround` says what was measured)."""

    iterations: int = 500
    samples: int = 256
    batch_size: int = 32
    regularization: float = 0.01
    asymmetric: bool = True
    layers: tuple[str, ...] | None = None
    lr: float = 1e-2
    seed: int = 0
    quiet: bool = True

    def __post_init__(self) -> None:
        for name in ("iterations", "samples", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"AdaRoundOptions.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.regularization, (int, float)) or not 0 <= self.regularization < float("inf"):
            raise ConfigError(
                f"AdaRoundOptions.regularization (lambda) must be a finite number >= 0, got "
                f"{self.regularization!r}; the paper and AIMET use 0.01"
            )
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr < float("inf"):
            raise ConfigError(f"AdaRoundOptions.lr must be a finite number > 0, got {self.lr!r}; try 1e-3")
        if self.layers is not None and (
            not isinstance(self.layers, tuple) or not all(isinstance(n, str) for n in self.layers)
        ):
            raise ConfigError(
                f"AdaRoundOptions.layers must be a tuple of layer names (('features.0',)) or None for every "
                f"int8 layer, got {self.layers!r}"
            )

    def rounding(self) -> RoundingConfig:
        return RoundingConfig(
            iterations=self.iterations, batch_size=self.batch_size, regularization=self.regularization,
            lr=self.lr, seed=self.seed,
        )  # fmt: skip


class AdaRound(LayerByLayerPass):
    name = "adaround"
    slot = "int8"
    description = "Learn each int8 weight's rounding (up or down) to reconstruct layer outputs (AdaRound)."
    exact = False
    Options = AdaRoundOptions
    needs = ("calibration_data",)

    def totals(self, rows: list[dict]) -> dict[str, float]:
        return _totals(rows)

    def selected(
        self, gm: fx.GraphModule, candidates: list[Candidate], stats: dict[str, float]
    ) -> list[Candidate]:
        """The layers to round: those named in ``layers`` (an unknown name is an error), less those called
        at several sites (one rounding cannot be fitted to several inputs) and those already rounded."""
        wanted = self.options.layers
        known = {name for _, name, _ in candidates}
        if wanted is not None and set(wanted) - known:
            raise ConfigError(
                f"AdaRoundOptions.layers names {sorted(set(wanted) - known)}, which are not calibrated int8 "
                f"layers of this graph; its int8 layers are: {', '.join(sorted(known))}"
            )
        sites = call_sites(gm)
        chosen = [c for c in candidates if wanted is None or c[1] in wanted]
        shared = [c for c in chosen if sites[c[1]] > 1]
        done = [c for c in chosen if rounded_by_adaround(c[2])]
        for reason, skipped in (("shared_layer", shared), ("already_rounded", done)):
            if skipped:
                stats[f"skipped:{reason}"] = len(skipped)
        return [c for c in chosen if c not in shared and c not in done]

    def layer(self, name: str, layer: QuantizedLayer, problem: Reconstruction) -> dict[str, object]:
        """Learn ``layer``'s rounding and write it back: its table row."""
        result = learn_rounding(
            layer.fp32_layer.weight, layer.expanded_weight_scale(), layer.scheme.weight_bound,
            int8_forward(layer, problem.activation), problem.data, self.options.rounding(),
        )  # fmt: skip
        _write_back(layer, result)
        return _row(name, result, problem.activation is not None)


def _write_back(layer: QuantizedLayer, result: RoundingResult) -> None:
    with torch.no_grad():
        layer.weight_int8.copy_(result.integers)
    layer.weight_sqnr_db = sqnr_db(layer.fp32_layer.weight.detach(), layer.weight)
    # Marks the weights as rounded: the same tensor object, so a later freeze (QAT) that makes new integers
    # also clears the mark, and a copy of the graph keeps it (deepcopy keeps the identity).
    object.__setattr__(layer, "adaround_weight", layer.weight_int8)


def rounded_by_adaround(layer: QuantizedLayer) -> bool:
    """Whether AdaRound learned this layer's integers (and no later pass made new ones)."""
    return layer.__dict__.get("adaround_weight") is layer.weight_int8


def _row(name: str, result: RoundingResult, through_relu: bool) -> dict[str, object]:
    weights = result.integers.numel()
    return {
        "layer": name, "weights": weights, "flipped": result.flipped,
        "flipped_pct": round(100 * result.flipped / weights, 2),
        "mse_nearest": float(f"{result.mse_nearest:.4g}"), "mse_adaround": float(f"{result.mse_learned:.4g}"),
        "kept_nearest": result.kept_nearest, "loss_on": "relu output" if through_relu else "layer output",
    }  # fmt: skip


def _totals(rows: list[dict]) -> dict[str, float]:
    """The pass's row: layers rounded, weights flipped (count and %), and the mean output error change."""
    if not rows:
        return {}
    weights = sum(r["weights"] for r in rows)
    flipped = sum(r["flipped"] for r in rows)
    ratios = [r["mse_adaround"] / r["mse_nearest"] for r in rows if r["mse_nearest"] > 0]
    totals = {
        "adaround_layers": len(rows), "flipped_weights": flipped,
        "flipped_pct": round(100 * flipped / weights, 3),
        "mean_mse_ratio": round(sum(ratios) / len(ratios), 4) if ratios else 1.0,
    }  # fmt: skip
    kept = sum(r["kept_nearest"] for r in rows)
    if kept:
        totals["kept_nearest"] = kept
    return totals
