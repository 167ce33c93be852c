"""Targets: declarative presets of what runs for an edge deployment.

A target is a frozen dataclass: an ordered tuple of passes with their options, the numeric scheme, and the
backend settings. There is no control flow in a preset: reading it tells you what runs.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Literal

from graphopt.errors import ConfigError, UnknownNameError
from graphopt.pipeline.pass_base import PassOptions
from graphopt.quant.options import InsertFakeQuantOptions, QuantizeDynamicOptions
from graphopt.quant.scheme import QuantScheme

BackendName = Literal["onnx", "torchscript", "executorch"]
NumericType = Literal["fp32", "int8", "uint8"]


@dataclass(frozen=True)
class PassSpec:
    """One pipeline entry: a registered pass name and, optionally, its typed options."""

    name: str
    options: PassOptions | None = None


@dataclass(frozen=True)
class NumericScheme:
    """The number formats the artifact computes in."""

    weights: NumericType = "fp32"
    activations: NumericType = "fp32"


@dataclass(frozen=True)
class BackendSettings:
    """How the artifact is lowered and run."""

    backend: BackendName = "onnx"
    opset: int = 18
    #: PyTorch's quantized engine for int8 TorchScript: ``x86`` (FBGEMM / oneDNN) or ``qnnpack`` (ARM).
    torch_engine: Literal["x86", "qnnpack"] = "x86"
    threads: int = 1  # edge deployments pin one inference thread per core; timings use the same
    #: Pruning keeps channel counts in multiples of this unless the caller sets ``PruneConfig.round_to``:
    #: ONNX Runtime's x86 fp32 convs run in NCHWc blocks of 8 channels on AVX2, and a width off the block
    #: falls back to slower kernels (digits ResNet pruned 0.6 to 7-channel stems: 1.47x over the original;
    #: rounded to 8: 2.62x, in one interleaved run, AVX2).
    channel_multiple: int = 8

    def __post_init__(self) -> None:
        if self.channel_multiple < 1:
            raise ConfigError(f"channel_multiple must be >= 1, got {self.channel_multiple}")
        if self.opset < 17:
            raise ConfigError(f"opset must be >= 17 (LayerNorm, modern Resize), got {self.opset}")
        if self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")


def isa_runs_here(isa: str) -> bool:
    """Whether artifacts built for CPU family ``isa`` run (and can be timed) on this machine."""
    return isa in ("any", platform.machine())


@dataclass(frozen=True)
class Target:
    """An edge deployment preset. ``isa`` is the CPU family the backend settings are chosen for."""

    name: str
    description: str
    isa: Literal["any", "aarch64", "x86_64"]
    passes: tuple[PassSpec, ...]
    scheme: NumericScheme = NumericScheme()
    backend: BackendSettings = BackendSettings()


# Exact clean-up every fp32 deployment wants: fold BN first (it creates no dead code but frees the BN
# modules), drop identities, then sweep whatever became unused.
_FP32_CLEANUP = (PassSpec("fold_batchnorm"), PassSpec("remove_identity"), PassSpec("eliminate_dead_code"))

GENERIC_FP32 = Target(
    name="generic-fp32",
    description="Exact fp32 clean-up (BN folding, identity and dead-code removal), lowered to ONNX.",
    isa="any",
    passes=_FP32_CLEANUP,
)

ARM_FP32 = Target(
    name="arm-fp32",
    description=(
        "fp32 for aarch64 CPUs running ONNX Runtime's NEON kernels: the exact clean-up pipeline, lowered "
        "to plain fp32 ONNX."
    ),
    isa="aarch64",
    passes=_FP32_CLEANUP,
    backend=BackendSettings(channel_multiple=4),  # NEON: 4 fp32 lanes
)


def _int8(scheme: QuantScheme, layout: tuple[PassSpec, ...] = ()) -> tuple[PassSpec, ...]:
    """The fp32 clean-up, then ``layout`` (rewrites for the target's int8 kernels), then int8."""
    return (
        *_FP32_CLEANUP,
        *layout,
        PassSpec("insert_fake_quant", InsertFakeQuantOptions(scheme=scheme)),
        PassSpec("calibrate"),
    )


X86_INT8 = Target(
    name="x86-int8",
    description=(
        "int8 for x86 CPUs with AVX2 but no VNNI, run by ONNX Runtime: u8 activations, s8 per-channel "
        "weights with reduce_range (7-bit weights)."
    ),
    isa="x86_64",
    passes=_int8(QuantScheme(activations="uint8", reduce_range=True), layout=(PassSpec("space_to_depth"),)),
    scheme=NumericScheme(weights="int8", activations="uint8"),
)
"""Why this scheme (measured, ../shared/FINDINGS.md): ORT's u8 x s8 kernels are the only ones that fuse every
Conv and Add of a ResNet on x86 (s8 activations fuse 9 of 20 convs and run 1.10x fp32; u8s8 runs 1.90x).
Without VNNI, ``vpmaddubsw`` adds two u8 x s8 products into int16 and saturates; 7-bit weights
(reduce_range) keep ``2 * 255 * 64`` below 2^15, which is why reduce_range keeps digits at 99.54 % where
plain u8s8 drops to 98.52 %.

Why ``space_to_depth``: ORT's fast x86 int8 conv kernel needs input channels in multiples of 4; an RGB stem
takes the slow generic path unless it is rewritten over space-to-depth (12 channels). It made pruned
ResNet-18 5 % and MobileNetV2 4-7 % faster here (``passes/space_to_depth.py``)."""

X86_VNNI_INT8 = Target(
    name="x86-vnni-int8",
    description=(
        "int8 for x86 CPUs with AVX512-VNNI or AVX-VNNI: u8 activations, s8 per-channel weights, full 8-bit "
        "weights (VNNI accumulates u8 x s8 in int32, so there is no int16 saturation to avoid)."
    ),
    isa="x86_64",
    passes=_int8(QuantScheme(activations="uint8", reduce_range=False)),
    scheme=NumericScheme(weights="int8", activations="uint8"),
    backend=BackendSettings(channel_multiple=16),  # AVX-512: NCHWc blocks of 16
)
"""What ``graphopt bench`` and :func:`graphopt.reporting.cpu.int8_choice` pick on a CPU with ``avx512_vnni``
or
``avx_vnni``; the ORT ``quantize_static`` peer then runs without reduce_range too. Measured so far: on the
AVX512-VNNI EPYC of 2026-11-26 ``x86-int8`` (7-bit weights) ran ResNet-18@224 at 3.57x ORT fp32 against
3.38x for ``quantize_static`` best (FINDINGS.md). ``x86-vnni-int8`` itself has not yet been timed on a
VNNI CPU: the sessions since had AVX2 only, where it saturates (digits 98.52 % vs 99.54 %). The next session
on a VNNI CPU should run ``graphopt bench resnet18 -t x86-int8 -t x86-vnni-int8`` and record the result
here."""

X86_DYNAMIC_INT8 = Target(
    name="x86-dynamic-int8",
    description=(
        "int8 for transformers on x86 CPUs, run by ONNX Runtime: Linear layers with s8 per-channel 7-bit "
        "weights and activations quantized per call from their own range (DynamicQuantizeMatMul)."
    ),
    isa="x86_64",
    passes=(
        *_FP32_CLEANUP,
        PassSpec("quantize_dynamic", QuantizeDynamicOptions(reduce_range=True, min_cosine=0.99)),
    ),
    scheme=NumericScheme(weights="int8", activations="uint8"),
)
"""What won on this CPU, and why (all-MiniLM-L6-v2, ``graphopt bench minilm``, AMD EPYC with AVX2 and no
VNNI, 2026-11-27):

- dynamic over static: ORT ``quantize_static`` at its best settings kept a worst Lee-document cosine of
  0.74 to fp32 (Spearman 0.485) and ran slower than dynamic int8 (34.3 vs 31.0 ms): transformer
  activations carry outlier channels that one calibrated scale per tensor cannot serve;
- ONNX Runtime's fused kernels over graphopt's own lowering: the same int8 layers ran 1.18x faster as
  ``QAttention`` + ``DynamicQuantizeMatMul`` after ORT's transformer optimizer (Attention, SkipLayerNorm,
  BiasGelu fusions; :mod:`graphopt.backends.onnx_transformer`) than through torch.export (30.6 vs 36.1 ms);
- 7-bit weights: full 8-bit s8 weights overflow ORT's int16 pair sums without VNNI (outputs moved by 0.5 on
  a 64-wide layer);
- the fall-back to fp32 of the most sensitive layers, until the worst cosine on ``calibration_data``
  reaches 0.99, costs speed and size (README); ``QuantizeDynamicOptions(min_cosine=None)`` turns it off."""

ARM_INT8 = Target(
    name="arm-int8",
    description=(
        "int8 for aarch64 CPUs running ONNX Runtime: s8 activations, s8 per-channel weights, no reduce_range."
    ),
    isa="aarch64",
    passes=_int8(QuantScheme(activations="int8", reduce_range=False)),
    scheme=NumericScheme(weights="int8", activations="int8"),
    backend=BackendSettings(torch_engine="qnnpack", channel_multiple=4),  # NEON: 4 fp32 lanes
)
"""Why this scheme (measured under emulation, ../shared/FINDINGS.md): the aarch64 build of ORT fuses s8s8
QDQ fully (20 QLinearConv, 8 QLinearAdd, 1 QGemm on ResNet-18), its NEON/dot-product kernels accumulate in
int32 so 8-bit weights do not saturate, and s8 is the native signed type there. The same file on x86 fuses
only 9 of 20 convs: do not use arm-int8 artifacts on x86."""

XNNPACK_INT8 = Target(
    name="xnnpack-int8",
    description=(
        "int8 for ExecuTorch's XNNPACK delegate (.pte; Android, iOS, embedded Linux; ARM and x86): s8 "
        "activations, s8 per-channel 8-bit weights, every conv and linear delegated."
    ),
    isa="any",
    passes=_int8(QuantScheme(activations="int8", reduce_range=False)),
    scheme=NumericScheme(weights="int8", activations="int8"),
    backend=BackendSettings(backend="executorch"),
)
"""Why this scheme (measured here, AVX2 without VNNI, one thread; README's ExecuTorch section): XNNPACK's
QS8 kernels take signed activations (a u8 quantizer is lowered as s8 with its zero point less 128, the same
values) and widen to 16 bits before multiplying, so 8-bit weights do not saturate as ORT's AVX2 ``u8 x s8``
path does: on ResNet-18 (224x224) 8-bit weights gave cosine 0.99995 to fp32 against 0.99992 with x86-int8's
7-bit ones, and ExecuTorch's own PT2E flow 0.99994."""

FIXED_POINT_INT8 = Target(
    name="fixed-point-int8",
    description=(
        "int8 with power-of-two scales for fixed-point DSPs and NPUs whose requantizer only shifts: u8 "
        "activations, s8 per-channel weights with reduce_range, every scale 2^-b; canonical QDQ ONNX."
    ),
    isa="any",
    passes=_int8(QuantScheme(activations="uint8", reduce_range=True, power_of_two=True)),
    scheme=NumericScheme(weights="int8", activations="uint8"),
)
"""u8 activations and 7-bit weights like x86-int8, so the same file also runs fast and unsaturated in ORT on
AVX2 (where its accuracy is checked); only the scales differ."""

_PRESETS = (GENERIC_FP32, ARM_FP32, X86_INT8, X86_VNNI_INT8, X86_DYNAMIC_INT8, ARM_INT8, XNNPACK_INT8)
TARGETS: dict[str, Target] = {t.name: t for t in (*_PRESETS, FIXED_POINT_INT8)}


def resolve_target(target: str | Target) -> Target:
    """A :class:`Target` from a preset name or an instance."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        if target not in TARGETS:
            raise UnknownNameError("target", target, TARGETS)
        return TARGETS[target]
    raise ConfigError(f"target must be a preset name or a graphopt.Target, got {type(target).__name__}")
