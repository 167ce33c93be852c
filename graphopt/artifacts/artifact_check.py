"""Is the artifact the model? Its outputs against the eager optimized model's, on probes.

An fp32 artifact must reproduce the model within ``ARTIFACT_RTOL``; an int8 one runs integer kernels
whose requantization rounds differently from the eager simulation, so it is held to agreement (cosine).
Probes besides the example input catch an exporter that baked one branch of data-dependent control flow
(the negated example, a random draw) or fixed a dimension declared dynamic (half and twice its size).
"""

from __future__ import annotations

import platform
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
    """Compare the artifact with the eager model on the example inputs and on two probes of the same
    shape (the negated example and a random draw): an exporter that baked one branch of data-dependent
    control flow agrees on the example but not on inputs that take the other branch.

    An int8 artifact for another CPU family (arm-int8 checked on x86) runs here through kernels that
    the target does not use (x86 s8 x s8 saturates in int16), so a mismatch is reported, not raised; so
    is a native int8 artifact between the two cosine thresholds above."""
    quantized, foreign = is_quantized(model), not isa_runs_here(isa)
    note = None
    for inputs in _probe_inputs(example_inputs, dynamic):
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
                f"the {backend} artifact disagrees with the optimized model (max abs error "
                f"{max_abs:.3g}); the model probably has data-dependent control flow that the exporter "
                "baked into one branch: express it with torch.where or torch.cond"
            )
    return note


def _artifact_tolerance(model: nn.Module) -> Tolerance:
    """``ARTIFACT_RTOL`` for float32 models; for float16 ones, 4 steps of float16's precision (2^-10):
    the runtime's fp16 kernels round in other places than PyTorch's (ResNet logits moved 2.4e-4)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    step = max((torch.finfo(d).eps for d in dtypes), default=0.0)
    rtol = max(ARTIFACT_RTOL, 4 * step)
    return Tolerance(rtol=rtol, atol=rtol)


def _probe_inputs(example: tuple[torch.Tensor, ...], dynamic: DynamicDims) -> list[tuple[torch.Tensor, ...]]:
    """The example, then (float inputs) its negation and a random draw, then the example at half and twice
    each dynamic dimension's size: a file that fixed a dimension fails there."""
    resized = [_resized(example, dynamic, factor) for factor in (0.5, 2.0) if dynamic.named()]
    generator = torch.Generator().manual_seed(0)
    if not all(x.is_floating_point() for x in example):
        return [example, *resized]
    negated = tuple(-x for x in example)
    drawn = tuple(
        torch.randn(x.shape, generator=generator, dtype=x.dtype) * x.std().clamp(min=1e-3) for x in example
    )
    return [example, negated, drawn, *resized]


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
