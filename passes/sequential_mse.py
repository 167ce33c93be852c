"""Sequential MSE: choose each int8 (or narrower) layer's weight scales by the error of its output.

Runs after ``calibrate``: layer by layer, front to back, :func:`~graphopt.quant.range_search.
search_weight_scales` tries scales that clip each channel's largest weights (fractions of ``max|w_c| / r``)
and keeps, per channel, the one whose output, through the ReLU after the layer when there is one, is
closest to the fp32 model's on calibration samples (the math is in :mod:`graphopt.quant.range_search`).
The layer reads what the partly quantized model gives it (earlier layers at their new scales), so each
layer's choice accounts for what the layers before it lost. The integers and the int32 bias follow the new
scales; activation scales stay. Lossy; never worse than the calibrated scales on the calibration sample.

Not applied, and counted in the stats: layers with per-group scales (a block's scale would need its own
search), with power-of-two scales (the fractions are not powers of two), called at several sites, whose
integers AdaRound learned (scales come before rounding: the driver runs this pass first), or that no
calibration batch reaches. A channel whose current weights (its integers, whatever rounded them) score
best is left as it is, bias included. The report's ``sequential_mse`` table lists per layer the output error
before and after and the chosen fractions (min / mean: 1 clips nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from graphopt.errors import ConfigError
from graphopt.ir.graph import call_sites
from graphopt.passes.adaround import rounded_by_adaround
from graphopt.passes.layer_by_layer import LayerByLayerPass
from graphopt.passes.layer_capture import (
    Candidate,
    Reconstruction,
    int8_forward,
)
from graphopt.pipeline.pass_base import PassOptions
from graphopt.quant.modules import QuantizedLayer
from graphopt.quant.range_search import candidate_fractions, search_weight_scales

#: Note key (graphopt.reporting.notes), written by the shared loop (passes/layer_by_layer.py).
NOTHING_QUANTIZED = "sequential_mse:nothing_quantized"


@dataclass(frozen=True)
class SequentialMseOptions(PassOptions):
    """``candidates`` fractions of the unclipped scale, evenly from ``min_fraction`` to 1, scored on the
    first ``samples`` calibration samples; ``asymmetric``: on the partly quantized model's inputs (module
    docstring), else on the fp32 model's."""

    candidates: int = 20
    min_fraction: float = 0.3
    samples: int = 256
    asymmetric: bool = True
    quiet: bool = True

    def __post_init__(self) -> None:
        for name in ("candidates", "samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"SequentialMseOptions.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.min_fraction, (int, float)) or not 0 < self.min_fraction <= 1:
            raise ConfigError(
                f"SequentialMseOptions.min_fraction must be in (0, 1], got {self.min_fraction!r}: the "
                "smallest scale tried, as a fraction of max|w| / r (0.3 clips up to 70 % of the range)"
            )


class SequentialMse(LayerByLayerPass):
    name = "sequential_mse"
    slot = "int8"
    description = "Choose each int8 layer's weight scales by the error of its output (sequential MSE)."
    exact = False
    Options = SequentialMseOptions
    needs = ("calibration_data",)

    def selected(
        self, gm: fx.GraphModule, candidates: list[Candidate], stats: dict[str, float]
    ) -> list[Candidate]:
        return _searchable(gm, candidates, stats)

    def totals(self, rows: list[dict]) -> dict[str, float]:
        return _totals(rows)

    def changed(self, rows: list[dict]) -> bool:
        return any(r["changed_channels"] for r in rows)

    def layer(self, name: str, layer: QuantizedLayer, problem: Reconstruction) -> dict[str, object]:
        """Search ``layer``'s scales and set them: its table row."""
        data, activation = problem.data, problem.activation
        forward = int8_forward(layer, activation)
        with torch.no_grad():
            result = search_weight_scales(
                layer.fp32_layer.weight, layer.weight_scale, layer.weight, layer.scheme.weight_bound,
                layer.scheme.per_channel, lambda w: forward(data.inputs, w), data.targets,
                channel_dim=-1 if isinstance(layer.fp32_layer, nn.Linear) else 1,
                fractions=candidate_fractions(self.options.candidates, self.options.min_fraction),
            )  # fmt: skip
        changed = int(result.changed.sum())
        if changed:
            layer.set_weight_scales(result.scales, result.changed)
        return {
            "layer": name, "channels": len(result.scales), "changed_channels": changed,
            "min_fraction": round(float(result.fractions.min()), 3),
            "mean_fraction": round(float(result.fractions.mean()), 3),
            "mse_before": float(f"{result.mse_before:.4g}"), "mse_after": float(f"{result.mse_after:.4g}"),
            "loss_on": "relu output" if activation is not None else "layer output",
        }  # fmt: skip


#: Why a layer's scales are not searched (module docstring): ``(reason, rule(layer, call sites))``.
_NOT_SEARCHED: tuple[tuple[str, Callable[[QuantizedLayer, int], bool]], ...] = (
    ("per_group_scales", lambda layer, sites: layer.group_size is not None),
    ("power_of_two_scales", lambda layer, sites: layer.scheme.power_of_two),
    ("shared_layer", lambda layer, sites: sites > 1),  # one set of scales cannot fit several inputs
    # the scales come before the rounding: AdaRound learned its integers for the scales it found
    ("rounded_by_adaround", lambda layer, sites: rounded_by_adaround(layer)),
)


def _searchable(gm: fx.GraphModule, candidates: list[Candidate], stats: dict[str, float]) -> list[Candidate]:
    """The layers whose scales can be searched; the others counted in ``stats`` by why."""
    sites = call_sites(gm)
    kept = []
    for node, name, layer in candidates:
        why = next((reason for reason, rule in _NOT_SEARCHED if rule(layer, sites[name])), None)
        if why is None:
            kept.append((node, name, layer))
        else:
            stats[f"skipped:{why}"] = stats.get(f"skipped:{why}", 0) + 1
    return kept


def _totals(rows: list[dict]) -> dict[str, float]:
    """The pass's row: layers searched, channels whose scale changed, the mean output error ratio."""
    if not rows:
        return {}
    ratios = [r["mse_after"] / r["mse_before"] for r in rows if r["mse_before"] > 0]
    return {
        "searched_layers": len(rows),
        "changed_channels": sum(r["changed_channels"] for r in rows),
        "mean_mse_ratio": round(sum(ratios) / len(ratios), 4) if ratios else 1.0,
    }
