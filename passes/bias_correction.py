"""Bias correction: remove the mean output error int8 weights add to each layer (DFQ, sec. 4.2).

Runs after ``calibrate``, on the frozen :class:`~graphopt.quant.QuantizedLayer` s, front to back; the math
is in :mod:`graphopt.quant.bias_correction`. Per layer, the new bias ``b - E[y_q - y]`` is requantized to
int32 with the layer's bias scale, so the artifact keeps its form (only int32 bias values change).

- ``mode="empirical"``: ``E[y_q - y]`` on up to ``max_batches`` calibration batches, ``y_q`` captured by a
  forward hook as the quantized model computes it (earlier layers int8 and already corrected: the forward
  stops at the layer being measured, so each layer costs a partial forward). ``y`` is, with
  ``reference="layer"`` (DFQ), the fp32 layer on the same quantized input, so only this layer's weight
  error is removed; with ``reference="network"`` (default), the fp32 graph's output of the same layer on
  the same sample, so the mean error that quantized layers and activations upstream leave in the input
  (which no layer-local term sees) is absorbed too. Measured on the per-tensor int8 case of
  ``tests/test_bias_correction.py``, output SQNR 16.6 dB before: 15.4 dB after ``"layer"``, 32.9 dB
  after ``"network"``; with equalization first, 47.5 -> 48.7 (``"layer"``) / 48.8 dB (``"network"``).
- ``mode="analytic"``: ``dW E[x]`` with ``E[x]`` from the BatchNorm statistics recorded before folding
  (:func:`~graphopt.quant.bias_correction.record_batchnorm_stats`), through ReLU / ReLU6 (clipped normal
  mean). Where they are not on the IR (``fold_batchnorm`` has thrown them away, or the input does not come
  from a BatchNorm'd layer through ReLU / ReLU6 / identity), the layer is skipped with
  ``skipped:no_input_statistics``: the pass does not guess.
- ``mode="auto"`` (default): empirical with calibration data, else analytic.

Lossy: stats ``corrected``, ``skipped:<reason>`` (``not_reached``: a layer the calibration data does not
reach on every batch, such as one behind an early exit), and in empirical mode the network output SQNR
against the fp32 graph before and after (``output_sqnr_db_before`` / ``_after``) on the last calibration
batch read, which the correction leaves out when there are two or more. The
``bias_correction`` table lists per layer the largest shift ``max_c |db_c|``, the same in int32 steps of
the bias scale, and (empirical) the layer's output SQNR before / after on the data it was measured on.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx as fx
from torch import nn

from graphopt.errors import ConfigError, InvalidInputError
from graphopt.ir.graph import module_of
from graphopt.pipeline.pass_base import Pass, PassOptions, PassResult
from graphopt.quant.bias_correction import (
    ChannelNormal,
    ErrorMoments,
    analytic_weight_error_mean,
    batchnorm_output_stats,
)
from graphopt.quant.float_twin import float_twin
from graphopt.quant.modules import ActivationQuantizer, QuantizedLayer
from graphopt.quant.scheme import quantize_bias, sqnr_db
from graphopt.reporting.notes import Note
from graphopt.reporting.numerics import output_vector

#: Note key: analytic mode found no BatchNorm statistics on the IR.
NO_STATISTICS = "bias_correction:no_batchnorm_stats"

#: Ops E[x] passes through unchanged (the quantizer's rounding is unbiased to first order).
_MEAN_PRESERVING = (ActivationQuantizer, nn.Identity, nn.Dropout, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_RELU_FUNCTIONS = (torch.relu, torch.nn.functional.relu)


@dataclass(frozen=True)
class BiasCorrectionOptions(PassOptions):
    mode: Literal["auto", "empirical", "analytic"] = "auto"
    #: What the int8 layer's output is compared with (empirical mode): ``"layer"``, its fp32 layer on the
    #: same (quantized) input, removing the mean error of this layer's weights alone (DFQ); ``"network"``,
    #: the fp32 graph's output of that layer on the same sample, which also absorbs the mean error that
    #: quantized layers and activations upstream left in the input.
    reference: Literal["layer", "network"] = "network"
    #: Calibration batches the mean error is measured on (empirical mode).
    max_batches: int = 16

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "empirical", "analytic"):
            raise ConfigError(f"mode must be 'auto', 'empirical' or 'analytic', got {self.mode!r}")
        if self.reference not in ("layer", "network"):
            raise ConfigError(f"reference must be 'layer' or 'network', got {self.reference!r}")
        if self.max_batches < 1:
            raise ConfigError(f"max_batches must be >= 1, got {self.max_batches}")


class _Stop(Exception):
    """Raised by the measuring hook: nothing after the measured layer needs to run."""


class BiasCorrection(Pass):
    name = "bias_correction"
    slot = "int8"
    description = "Subtract the mean output error of int8 weights from each layer's bias (DFQ)."
    exact = False
    Options = BiasCorrectionOptions

    def call(self, gm: fx.GraphModule) -> PassResult:
        layers = [
            (n, m) for n in gm.graph.nodes if isinstance(m := module_of(gm, n), QuantizedLayer) and m.frozen
        ]
        if not layers:
            return PassResult(gm, modified=False, stats={"skipped:no_frozen_int8_layers": 1})
        data = self.context.calibration_data if self.options.mode != "analytic" else None
        if self.options.mode == "empirical" and not data:
            raise InvalidInputError(
                "bias_correction(mode='empirical') needs calibration_data; give it, or use mode='analytic' "
                "(BatchNorm statistics recorded before folding)"
            )
        if data:
            return self._empirical(gm, layers, list(data[: self.options.max_batches]))
        return self._analytic(gm, layers)

    def _empirical(
        self, gm: fx.GraphModule, layers: list[tuple[fx.Node, QuantizedLayer]], batches: list[tuple]
    ) -> PassResult:
        # The output SQNR is measured on a batch the correction did not see, where there is one to spare.
        held_out, batches = (batches[-1], batches[:-1]) if len(batches) > 1 else (batches[0], batches)
        twin = float_twin(gm, unrounded=True)
        reference = output_vector(twin, held_out)
        before = sqnr_db(reference, output_vector(gm, held_out))
        rows, skipped = [], 0
        for node, layer in layers:
            references = None
            if self.options.reference == "network":
                references = _layer_outputs(twin, twin.get_submodule(str(node.target)), batches)
            if references is not None and len(references) != len(batches):
                skipped += 1  # a branch the data does not take every time: no sample-by-sample reference
                continue
            moments = _measure(gm, layer, batches, references)
            if moments.count == 0:
                skipped += 1
                continue
            old_bias = layer.bias.detach().double()
            shift = _requantize(layer, old_bias - moments.mean_error) - old_bias
            rows.append(_row(str(node.target), layer, shift, moments.sqnr_db(), moments.sqnr_db(shift)))
        after = sqnr_db(reference, output_vector(gm, held_out))
        self.context.tables["bias_correction"] = rows
        stats = {"corrected": len(rows), "output_sqnr_db_before": round(before, 2),
                 "output_sqnr_db_after": round(after, 2)}  # fmt: skip
        if skipped:
            stats["skipped:not_reached"] = skipped
        return PassResult(gm, modified=bool(rows), stats=stats)

    def _analytic(self, gm: fx.GraphModule, layers: list[tuple[fx.Node, QuantizedLayer]]) -> PassResult:
        normals = batchnorm_output_stats(gm)
        stats: Counter[str] = Counter()
        if not normals:
            self.context.notes.append(Note(NO_STATISTICS, (
                "bias_correction: no calibration data and no BatchNorm statistics on the IR (fold_batchnorm "
                "discards them): nothing corrected; give calibration_data, or record them before folding "
                "(graphopt.quant.bias_correction.record_batchnorm_stats)"), layers=len(layers)))  # fmt: skip
            return PassResult(gm, modified=False, stats={"skipped:no_batchnorm_stats": len(layers)})
        rows = []
        for node, layer in layers:
            input_mean = _input_mean(gm, node, normals)
            if input_mean is None:
                stats["skipped:no_input_statistics"] += 1
                continue
            fp32 = layer.fp32_layer
            error = analytic_weight_error_mean(
                layer.as_float().weight.detach() - fp32.weight.detach(),
                input_mean,
                layer.kwargs.get("groups", 1),
            )
            old_bias = layer.bias.detach().double()
            fp32_bias = fp32.bias.detach().double() if fp32.bias is not None else torch.zeros_like(old_bias)
            shift = _requantize(layer, fp32_bias - error) - old_bias
            rows.append(_row(str(node.target), layer, shift))
            stats["corrected"] += 1
        self.context.tables["bias_correction"] = rows
        return PassResult(gm, modified=bool(rows), stats=dict(stats))


def _measure(
    gm: fx.GraphModule, layer: QuantizedLayer, batches: list[tuple], references: list[torch.Tensor] | None
) -> ErrorMoments:
    """The layer's output error moments on ``batches``, its input as the quantized graph feeds it, against
    ``references`` (the fp32 graph's outputs of the layer, per batch) or else its fp32 layer on that input."""
    moments = ErrorMoments()
    fp32 = layer.fp32_layer
    channel_axis = -1 if isinstance(fp32, nn.Linear) else 1

    def record(index: int, args: tuple, output: torch.Tensor) -> None:
        reference = references[index] if references is not None else fp32(args[0])
        moments.update(reference, output, channel_axis)

    _run_until(gm, layer, batches, record)
    return moments


def _layer_outputs(graph: fx.GraphModule, layer: nn.Module, batches: list[tuple]) -> list[torch.Tensor]:
    """``layer``'s output in ``graph`` for each batch."""
    found: list[torch.Tensor] = []
    _run_until(graph, layer, batches, lambda index, args, output: found.append(output))
    return found


def _run_until(
    graph: fx.GraphModule,
    layer: nn.Module,
    batches: list[tuple],
    record: Callable[[int, tuple, torch.Tensor], None],
) -> None:
    """Run each batch through ``graph`` up to ``layer`` (the rest of the forward is cut short) and hand
    ``record`` the batch index, the layer's inputs and its output."""
    index = 0

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        record(index, args, output)
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for index, inputs in enumerate(batches):  # noqa: B007 (the hook reads it)
                with contextlib.suppress(_Stop):
                    graph(*inputs)
    finally:
        handle.remove()


def _requantize(layer: QuantizedLayer, bias: torch.Tensor) -> torch.Tensor:
    """Store ``bias`` as the layer's int32 bias (a new Parameter); return the value it now dequantizes to."""
    layer.bias_int32 = nn.Parameter(quantize_bias(bias, layer.bias_scale), requires_grad=False)
    return layer.bias.detach().double()


def _row(
    name: str,
    layer: QuantizedLayer,
    shift: torch.Tensor,
    before: float | None = None,
    after: float | None = None,
) -> dict[str, object]:
    steps = shift.abs() / layer.bias_scale.detach().double()
    row: dict[str, object] = {"layer": name, "max_shift": float(f"{float(shift.abs().max()):.4g}"),
                              "max_shift_lsb": round(float(steps.max()))}  # fmt: skip
    if before is not None and after is not None:
        row["sqnr_db_before"], row["sqnr_db_after"] = _rounded(before), _rounded(after)
    return row


def _rounded(value: float) -> float:
    return value if math.isinf(value) else round(value, 2)


def _input_mean(gm: fx.GraphModule, node: fx.Node, normals: dict[str, ChannelNormal]) -> torch.Tensor | None:
    """``E[x]`` of the layer's input from the statistics of the BatchNorm'd layer producing it, through
    mean-preserving ops and at most one ReLU / ReLU6; None where the path holds anything else."""
    current, upper = node.args[0], None
    while isinstance(current, fx.Node):
        module = module_of(gm, current)
        clamp = _clamp_upper(gm, current)
        if isinstance(module, _MEAN_PRESERVING):
            current = current.args[0]
        elif clamp is not None and upper is None:
            current, upper = current.args[0], clamp
        elif current.op == "call_module" and str(current.target) in normals:
            normal = normals[str(current.target)]
            return normal.mean if upper is None else normal.clipped_mean(upper)
        else:
            return None
    return None


def _clamp_upper(gm: fx.GraphModule, node: fx.Node) -> float | None:
    """The upper bound of a ReLU-like clamp at 0 (inf for ReLU), or None for anything else."""
    module = module_of(gm, node)
    if isinstance(module, nn.ReLU) or (node.op == "call_function" and node.target in _RELU_FUNCTIONS):
        return math.inf
    if isinstance(module, nn.ReLU6) or (
        node.op == "call_function" and node.target is torch.nn.functional.relu6
    ):
        return 6.0
    if isinstance(module, nn.Hardtanh) and module.min_val == 0:
        return float(module.max_val)
    return None
