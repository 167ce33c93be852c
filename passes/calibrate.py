"""Calibrate int8: run calibration data through the observers, then freeze every quantizer and layer.

Each :class:`~graphopt.quant.ActivationQuantizer` turns its observed range into a scale and zero point; each
:class:`~graphopt.quant.QuantizedLayer` quantizes its weight per channel to int8 and its bias to int32 with
scale ``s_in * s_w`` (``s_in`` from the quantizer feeding it). A layer whose input is not quantized cannot
run as an integer kernel and goes back to fp32 (``kept_fp32:unquantized_input``). Lossy.

The per-layer summary goes into the report's ``int8`` table: scales and zero points, weight SQNR per layer,
and activation SQNR per quantizer (measured on the first calibration chunk with the whole graph in int8).
On the same chunk the int8 graph's outputs are compared with the fp32 graph that entered quantization
(``stats["output_cosine"]``); below :data:`AGREEMENT_FLOOR` a note says so, and for a graph with attention
names ``x86-dynamic-int8``: static scales do not fit a transformer's outlier activation channels (MiniLM
in static int8: cosine 0.81-0.87 to fp32 on real sentences), and nothing else would tell the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from graphopt.errors import ConfigError, InvalidInputError
from graphopt.ir.graph import module_of, set_module
from graphopt.pipeline.pass_base import Pass, PassOptions, PassResult
from graphopt.quant.attention import has_attention
from graphopt.quant.modules import ActivationQuantizer, QuantizedLayer
from graphopt.quant.policy import through_data_movement
from graphopt.quant.scheme import sqnr_db
from graphopt.reporting.notes import Note
from graphopt.reporting.numerics import agreement
from graphopt.reporting.progress import Progress

#: Note key: the int8 graph's outputs agree poorly with its fp32 graph on calibration data (facts: cosine,
#: attention, whether the graph has attention).
POOR_AGREEMENT = "calibrate:poor_agreement"
#: Output cosine (int8 graph against the fp32 graph, first calibration chunk) below which a note says so:
#: the int8 artifact check's floor, below which a file is taken to compute something else.
AGREEMENT_FLOOR = 0.99


@dataclass(frozen=True)
class CalibrateOptions(PassOptions):
    """``max_batches`` items of calibration_data are read; they run through the model concatenated into
    chunks of up to ``chunk_samples`` samples (``moving_average`` averages over chunks). Small chunks
    amortise per-call overhead on small models; large ones thrash the cache with big activations (on
    ResNet-18@224, one core: 32-sample chunks took 3x longer per sample than 1- to 4-sample chunks)."""

    max_batches: int = 100
    chunk_samples: int = 4
    quiet: bool = True

    def __post_init__(self) -> None:
        if self.max_batches < 1:
            raise ConfigError(f"max_batches must be >= 1, got {self.max_batches}")
        if self.chunk_samples < 1:
            raise ConfigError(f"chunk_samples must be >= 1, got {self.chunk_samples}")


class Calibrate(Pass):
    name = "calibrate"
    slot = "int8"
    description = "Observe activation ranges on calibration data; freeze int8 scales, weights and biases."
    exact = False
    Options = CalibrateOptions
    needs = ("calibration_data",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        quantizers = [m for m in gm.modules() if isinstance(m, ActivationQuantizer) and not m.frozen]
        if not quantizers:
            return PassResult(gm, modified=False, stats={"skipped:nothing_to_calibrate": 1})
        data = self.context.calibration_data
        if data is None:
            raise InvalidInputError(
                "int8 calibration needs calibration_data: an iterable of input tensors/tuples"
            )
        batches = data[: self.options.max_batches]  # read and checked once, by the driver
        observed, fp32_outputs = self._observe(gm, quantizers, batches)
        for quantizer in quantizers:
            quantizer.freeze()
        stats: dict[str, float] = {"batches": len(batches), "activation_quantizers": len(quantizers)}
        frozen, reverted = self.freeze_layers(gm)
        int8_outputs = measure_activation_sqnr(gm, quantizers, observed[0])
        stats["output_cosine"] = round(self._check_agreement(gm, fp32_outputs, int8_outputs), 5)
        stats["int8_layers"] = frozen
        if reverted:
            stats["kept_fp32:unquantized_input"] = reverted
        self.context.tables["int8"] = int8_summary(gm)
        return PassResult(gm, modified=True, stats=stats)

    def _check_agreement(self, gm: fx.GraphModule, fp32_outputs: Any, int8_outputs: Any) -> float:
        """The int8 graph's output cosine to the fp32 graph that entered quantization, both on the first
        calibration chunk; a note when it is below :data:`AGREEMENT_FLOOR` (module docstring)."""
        cosine = agreement(fp32_outputs, int8_outputs).cosine
        if cosine < AGREEMENT_FLOOR:
            attention = has_attention(gm)
            advice = (
                "this graph has attention, whose activations carry outlier channels that one static scale "
                "per tensor cannot hold: use target 'x86-dynamic-int8' (scales taken per call)"
                if attention
                else "pass accuracy_budget= with eval_data to keep the most sensitive layers in fp32, or "
                "check calibration_data against the inputs the model will see"
            )
            self.context.notes.append(Note(
                POOR_AGREEMENT,
                f"calibrate: the int8 graph's outputs agree with the fp32 graph only at cosine {cosine:.3f} "
                f"on calibration data (below {AGREEMENT_FLOOR}): {advice}",
                cosine=cosine, attention=attention,
            ))  # fmt: skip
        return cosine

    def _observe(
        self, gm: fx.GraphModule, quantizers: list[ActivationQuantizer], batches: list
    ) -> tuple[list[tuple[torch.Tensor, ...]], Any]:
        """Run the data through the observers; return the batches as they were run and the graph's outputs
        on the first of them. While observing, quantizers pass values through and layers are still fp32: those
        outputs are the fp32 graph's, the reference of the int8 one's (no copy of the model needed).

        Large chunks first (fastest); a graph that fixes its batch size (``x.view(1, -1)``) fails on them,
        so the batches as given are tried next, then slices of the example inputs' batch size, the one
        size the model is known to run at. Observers start over for each attempt."""
        example_batch = len(self.context.example_inputs[0])
        attempts = [
            concatenate_batches(batches, self.options.chunk_samples),
            batches,
            slice_batches(batches, example_batch),
        ]
        for q in quantizers:
            q.observing = True
        try:
            for attempt in attempts:
                for q in quantizers:
                    q.reset()
                try:
                    return attempt, self._run(gm, attempt)
                except InvalidInputError:
                    raise
                except Exception as exc:  # the graph fixes its batch size: try the next batching
                    failure = exc
            sizes = sorted({len(b[0]) for b in batches})
            raise InvalidInputError(
                f"the model fails on calibration batches of {sizes} samples and on slices of the example "
                f"inputs' batch size {example_batch} ({type(failure).__name__}: {failure}); check that "
                "calibration_data holds inputs like example_inputs"
            ) from failure
        finally:
            for q in quantizers:
                q.observing = False

    def _run(self, gm: fx.GraphModule, batches: list[tuple[torch.Tensor, ...]]) -> Any:
        """Run ``batches`` through ``gm``; return its outputs on the first."""
        progress = Progress(len(batches), "calibrate", quiet=self.options.quiet)
        first = None
        with torch.no_grad():
            for inputs in batches:
                try:
                    outputs = gm(*inputs)
                except ValueError as exc:  # an observer saw NaN/inf
                    raise InvalidInputError(f"calibration_data produced {exc}; check the data") from exc
                first = outputs if first is None else first
                progress.update()
        return first

    @staticmethod
    def freeze_layers(gm: fx.GraphModule) -> tuple[int, int]:
        frozen = reverted = 0
        for node in gm.graph.nodes:
            layer = module_of(gm, node)
            if not isinstance(layer, QuantizedLayer) or layer.frozen:
                continue
            source = through_data_movement(gm, node.args[0])
            quantizer = module_of(gm, source) if isinstance(source, fx.Node) else None
            if isinstance(quantizer, ActivationQuantizer) and quantizer.frozen:
                layer.freeze(quantizer.scale)
                frozen += 1
            else:
                set_module(gm, str(node.target), layer.float_layer)
                reverted += 1
        return frozen, reverted


def measure_activation_sqnr(
    gm: fx.GraphModule, quantizers: list[ActivationQuantizer], inputs: tuple[torch.Tensor, ...]
) -> Any:
    """Each quantizer's SQNR on calibration data: its input against its quantize-dequantize output, with the
    whole network in int8 (so errors of earlier layers are in the input, as they will be when deployed).
    Returns the int8 graph's outputs on ``inputs``."""

    def record(module: ActivationQuantizer, args: tuple, output: torch.Tensor) -> None:
        module.sqnr_db = sqnr_db(args[0], output)

    handles = [q.register_forward_hook(record) for q in quantizers]
    try:
        with torch.no_grad():
            return gm(*inputs)
    finally:
        for handle in handles:
            handle.remove()


def concatenate_batches(
    batches: list[tuple[torch.Tensor, ...]], max_samples: int
) -> list[tuple[torch.Tensor, ...]]:
    """Consecutive batches joined along dim 0 into chunks of at most ``max_samples`` samples; a batch of
    other per-sample shapes (another length along a declared dynamic dim) starts a new chunk."""
    chunks: list[list[tuple[torch.Tensor, ...]]] = [[]]
    count = 0
    for batch in batches:
        size = len(batch[0])
        other_shape = chunks[-1] and [x.shape[1:] for x in chunks[-1][0]] != [x.shape[1:] for x in batch]
        if chunks[-1] and (count + size > max_samples or other_shape):
            chunks.append([])
            count = 0
        chunks[-1].append(batch)
        count += size
    return [tuple(torch.cat(parts) for parts in zip(*chunk, strict=True)) for chunk in chunks]


def int8_summary(gm: fx.GraphModule) -> list[dict[str, object]]:
    """One row per quantized tensor and layer: scale / zero point, or weight scale range and SQNR."""
    rows: list[dict[str, object]] = []
    for name, module in gm.named_modules():
        if isinstance(module, ActivationQuantizer) and module.frozen:
            sqnr = module.sqnr_db
            rows.append({"name": name, "kind": f"activation {module.scheme.activations}",
                         "scale": round(module.scale, 6), "zero_point": module.zero_point,
                         "sqnr_db": round(sqnr, 1) if sqnr is not None else None})  # fmt: skip
        elif isinstance(module, QuantizedLayer) and module.frozen:
            scales = module.weight_scale
            per_tensor = "" if module.scheme.per_channel else " per tensor"
            per_tensor += f" per group of {module.group_size}" if module.group_size else ""
            kind = f"{type(module.mac_layer).__name__} weight int{module.weight_bits}{per_tensor}"
            rows.append({"name": name, "kind": kind,
                         "bits": module.weight_bits,
                         "scale": f"{float(scales.min()):.3g}..{float(scales.max()):.3g}",
                         "sqnr_db": round(module.weight_sqnr_db, 1)})  # fmt: skip
    return rows


def slice_batches(batches: list[tuple[torch.Tensor, ...]], size: int) -> list[tuple[torch.Tensor, ...]]:
    """Every batch cut into slices of ``size`` samples (a last, shorter slice is dropped: a graph that fixes
    its batch size runs only at that size)."""
    return [
        tuple(x[start : start + size] for x in batch)
        for batch in batches
        for start in range(0, len(batch[0]) - size + 1, size)
    ]
