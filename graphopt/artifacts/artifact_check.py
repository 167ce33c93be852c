"""Is the artifact the model? Its outputs against the eager optimized model's, on probes.

An fp32 artifact must reproduce the model within ``ARTIFACT_RTOL``; an int8 one runs integer kernels
whose requantization rounds differently from the eager simulation, so it is held to agreement (cosine).
Probes besides the example input catch an exporter that baked one branch of data-dependent control flow
(the negated example, a random draw), fixed a dimension declared dynamic (half and twice its size), or a
runtime rewrite that reads a padding mask as something narrower than the model does (a 0/1 integer input
with its tail zeroed on every other row: right padding next to none; tiling to twice the size puts zeros
in the middle of a row as well). A disagreement names the probe it was found on, and so its likely cause.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from graphopt.data.dims import DynamicDims
from graphopt.errors import ExportError
from graphopt.quant import is_quantized
from graphopt.reporting.notes import Note
from graphopt.reporting.numerics import Tolerance, agreement, all_finite, allclose
from graphopt.targets import isa_runs_here

#: How closely an fp32 artifact must reproduce the eager optimized model: |a - b| <= 1e-4 * max(1, max|b|).
ARTIFACT_RTOL = 1e-4
#: An int8 artifact runs integer kernels whose requantization rounds differently from the eager simulation
#: (outputs may differ by a quantization step), so it is held to agreement instead. Below the first cosine
#: the report says so (deep depthwise stacks with small outputs get there: MobileNetV2 pruned to half its
#: channels reached 0.9975); below the second the artifact computes something else and export fails.
INT8_ARTIFACT_COSINE = 0.999
INT8_ARTIFACT_COSINE_FLOOR = 0.99

#: Note keys (graphopt.reporting.notes) on the artifact row: the int8 artifact agrees only to the looser
#: cosine (facts: cosine, max_abs); an artifact for another CPU family differs here (facts: isa, machine,
#: max_abs).
INT8_ROUNDS_DIFFERENTLY = "artifact:int8_rounds_differently"
FOREIGN_ISA_DIFFERS = "artifact:foreign_isa_differs"


def check_artifact(
    model: nn.Module,
    runner: Any,
    backend: str,
    example_inputs: tuple[torch.Tensor, ...],
    dynamic: DynamicDims,
    isa: str,
) -> Note | None:
    """Compare the artifact with the eager model on the example inputs and the probes of
    :func:`_probe_inputs` (module docstring); a disagreement is an ExportError naming the probe and the
    cause a disagreement there points to.

    An int8 artifact for another CPU family (arm-int8 checked on x86) runs here through kernels that
    the target does not use (x86 s8 x s8 saturates in int16), so a mismatch is reported, not raised; so
    is a native int8 artifact between the two cosine thresholds above."""
    quantized, foreign = is_quantized(model), not isa_runs_here(isa)
    note = None
    for probe, inputs in _probe_inputs(example_inputs, dynamic):
        with torch.no_grad():
            eager = model(*inputs)
        if inputs is not example_inputs and not all_finite(eager):
            continue  # a probe outside the model's domain (sqrt of a negated input) proves nothing
        got = runner.run(*inputs)
        if quantized:
            match = agreement(eager, got)
            ok, max_abs = match.cosine >= INT8_ARTIFACT_COSINE_FLOOR, match.max_abs
            if ok and match.cosine < INT8_ARTIFACT_COSINE and not foreign:
                note = Note(
                    INT8_ROUNDS_DIFFERENTLY,
                    f"the int8 artifact agrees with the eager int8 simulation at cosine "
                    f"{match.cosine:.4f} (max abs {max_abs:.3g}): the runtime's integer kernels round "
                    "requantization differently; the artifact row's numbers are measured on the artifact",
                    cosine=match.cosine,
                    max_abs=max_abs,
                )
        else:
            tolerance = _artifact_tolerance(model).relative_to(eager)
            ok, max_abs = allclose(eager, got, tolerance)
        if not ok and quantized and foreign:
            return Note(
                FOREIGN_ISA_DIFFERS,
                f"this {isa} int8 artifact run on {platform.machine()} differs from the "
                f"model (max abs {max_abs:.3g}); check it on the {isa} runtime: "
                f"graphopt verify <file> --arch {isa}",
                isa=isa,
                machine=platform.machine(),
                max_abs=max_abs,
            )
        if not ok:
            raise ExportError(
                f"the {backend} artifact disagrees with the optimized model {probe.where} (max abs error "
                f"{max_abs:.3g}): {probe.cause}"
            )
    return note


@dataclass(frozen=True)
class _Probe:
    """Where an artifact was compared with the model, and what a disagreement there most likely means."""

    where: str
    cause: str


_EXAMPLE = _Probe(
    "on the example input",
    "the file computes something else than the model on the very input it was exported with; report it with "
    "the model (GraphoptError carries no data)",
)
_OTHER_VALUES = _Probe(
    "on a probe of the example's shape with other values (its negation or a random draw)",
    "the model probably has data-dependent control flow that the exporter baked into one branch: express it "
    "with torch.where or torch.cond",
)


def _padded_probe(side: str) -> _Probe:
    return _Probe(
        f"on the example with {side} padding (each 0/1 integer input, read as a mask, zeroed over a quarter "
        f"of every other row, at its {'end' if side == 'right' else 'start'})",
        "the file reads the mask differently from the model (a runtime rewrite that assumes no padding or "
        "right padding only), or the model branches on it",
    )


def _resized_probe(factor: float) -> _Probe:
    return _Probe(
        f"at {factor:g}x the example's size along the dimensions declared dynamic (tiled or cut along them, "
        "so a padding mask gets zeros mid-row)",
        "the file fixed a size that was declared dynamic, or reads a mask with zeros mid-row differently "
        "from the model (an attention rewrite that assumes right padding)",
    )


def _artifact_tolerance(model: nn.Module) -> Tolerance:
    """``ARTIFACT_RTOL`` for float32 models; for float16 ones, 4 steps of float16's precision (2^-10):
    the runtime's fp16 kernels round in other places than PyTorch's (ResNet logits moved 2.4e-4)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    step = max((torch.finfo(d).eps for d in dtypes), default=0.0)
    rtol = max(ARTIFACT_RTOL, 4 * step)
    return Tolerance(rtol=rtol, atol=rtol)


def _probe_inputs(
    example: tuple[torch.Tensor, ...], dynamic: DynamicDims
) -> list[tuple[_Probe, tuple[torch.Tensor, ...]]]:
    """The example; (float inputs) its negation and a random draw; (0/1 integer inputs, masks) the example
    with padding; then the example at half and twice each dynamic dimension's size."""
    probes = [(_EXAMPLE, example)]
    if all(x.is_floating_point() for x in example):
        generator = torch.Generator().manual_seed(0)
        drawn = tuple(
            torch.randn(x.shape, generator=generator, dtype=x.dtype) * x.std().clamp(min=1e-3)
            for x in example
        )
        probes += [(_OTHER_VALUES, tuple(-x for x in example)), (_OTHER_VALUES, drawn)]
    for side in ("right", "left"):
        padded = _padded(example, side)
        if padded is not None:
            probes.append((_padded_probe(side), padded))
    if dynamic.named():
        probes += [(_resized_probe(f), _resized(example, dynamic, f)) for f in (0.5, 2.0)]
    return probes


def _padded(example: tuple[torch.Tensor, ...], side: str) -> tuple[torch.Tensor, ...] | None:
    """``example`` with every 0/1 integer input of two or more dims (an attention mask, as tokenizers give
    it) zeroed over a quarter of its last axis, at the end (``side="right"``) or the start, on every other
    row from row 1 (a batch of one on its single row); None when it has no such input or nothing changes."""
    out, changed = [], False
    for x in example:
        if not x.is_floating_point() and x.dim() >= 2 and x.numel() and bool(((x == 0) | (x == 1)).all()):
            padded = x.clone()
            rows = padded.reshape(-1, x.shape[-1])
            start = rows.shape[0] > 1  # every other row, from row 1; a single row is padded itself
            width = max(1, x.shape[-1] // 4)
            pad = slice(x.shape[-1] - width, None) if side == "right" else slice(0, width)
            rows[int(start) :: 2, pad] = 0
            changed |= not torch.equal(padded, x)
            x = padded
        out.append(x)
    return tuple(out) if changed else None


def _resized(
    example: tuple[torch.Tensor, ...], dynamic: DynamicDims, factor: float
) -> tuple[torch.Tensor, ...]:
    """``example`` with every named dimension scaled by ``factor`` (tiled or cut along that axis)."""
    out = []
    for x, dims in zip(example, dynamic.dims, strict=True):
        for axis in dims:
            size = max(1, round(x.shape[axis] * factor))
            repeats = [1] * x.dim()
            repeats[axis] = -(-size // x.shape[axis])
            x = x.repeat(*repeats).narrow(axis, 0, size)
        out.append(x)
    return tuple(out)
