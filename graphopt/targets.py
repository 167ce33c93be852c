"""Targets: declarative presets of what runs for an edge deployment.

A target is a frozen dataclass: an ordered tuple of passes with their options, the numeric scheme, and the
backend settings. There is no control flow in a preset: reading it tells you what runs.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field
from typing import Literal

from graphopt.errors import ConfigError, UnknownNameError
from graphopt.pipeline.pass_base import PassOptions
from graphopt.quant.options import InsertFakeQuantOptions, QuantizeDynamicOptions
from graphopt.quant.scheme import QuantScheme

BackendName = Literal["onnx", "torchscript", "executorch", "litert", "ethos-u"]
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


#: Vela's ``--accelerator-config`` names: ``ethos-u55-128``, ``ethos-u65-256``, ``ethos-u85-512``, ...
_ACCELERATOR = re.compile(r"ethos-u(55|65|85)-\d+")


@dataclass(frozen=True)
class EthosUConfig:
    """Which Ethos-U NPU and system Arm's Vela compiles for (``backend="ethos-u"``).

    ``accelerator`` is Vela's ``--accelerator-config`` (``ethos-u55-128``, ``ethos-u65-256``,
    ``ethos-u85-256``, ...: family and MACs per cycle); ``system_config`` and ``memory_mode`` name sections
    of Vela's ``vela.ini`` (clocks, memory bandwidths and latencies; where tensors and weights live), None
    for Vela's default for the family; ``optimise`` is Vela's ``--optimise``. Only the form is checked
    here; :func:`graphopt.backends.vela.resolve` checks the names against the installed Vela."""

    accelerator: str = "ethos-u55-128"
    system_config: str | None = None
    memory_mode: str | None = None
    optimise: Literal["Performance", "Size"] = "Performance"

    def __post_init__(self) -> None:
        if not isinstance(self.accelerator, str) or not _ACCELERATOR.fullmatch(self.accelerator):
            raise ConfigError(
                f"EthosUConfig.accelerator must be a Vela accelerator configuration such as ethos-u55-128, "
                f"ethos-u65-256 or ethos-u85-256, got {self.accelerator!r}"
            )
        if self.optimise not in ("Performance", "Size"):
            raise ConfigError(f"EthosUConfig.optimise must be 'Performance' or 'Size', got {self.optimise!r}")

    @property
    def family(self) -> str:
        """``u55``, ``u65`` or ``u85``."""
        return self.accelerator.split("-")[1]


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
    #: LiteRT and Ethos-U: an int8 ``.tflite`` keeps int8 inputs and outputs (their scale and zero point in
    #: the file; a microcontroller's sensor data is already integer) instead of float32 ones. Ethos-U needs
    #: it: Vela leaves float I/O's QUANTIZE / DEQUANTIZE on the Cortex-M CPU.
    integer_io: bool = False
    #: ``backend="ethos-u"``: the NPU and system Vela compiles for and costs.
    ethos_u: EthosUConfig = field(default_factory=EthosUConfig)

    def __post_init__(self) -> None:
        if self.backend == "ethos-u" and not self.integer_io:
            raise ConfigError(
                "an Ethos-U artifact has int8 inputs and outputs (Vela leaves float I/O's QUANTIZE / "
                "DEQUANTIZE on the CPU): set BackendSettings(backend='ethos-u', integer_io=True)"
            )
        if not isinstance(self.ethos_u, EthosUConfig):
            raise ConfigError(
                f"ethos_u must be a graphopt.targets.EthosUConfig, got {type(self.ethos_u).__name__}"
            )
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


def _int8(
    scheme: QuantScheme, layout: tuple[PassSpec, ...] = (), *, attention: bool = False
) -> tuple[PassSpec, ...]:
    """The fp32 clean-up, then ``layout`` (rewrites for the target's int8 kernels), then int8 (attention's
    products too with ``attention``)."""
    return (
        *_FP32_CLEANUP,
        *layout,
        PassSpec("insert_fake_quant", InsertFakeQuantOptions(scheme=scheme, attention=attention)),
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

X86_DYNAMIC_INT8_PER_TOKEN = Target(
    name="x86-dynamic-int8-per-token",
    description=(
        "x86-dynamic-int8 with one activation scale per token: a sentence embeds the same alone and in a "
        "padded batch (ONNX Runtime's separate int8 kernels; no fused int8 attention)."
    ),
    isa="x86_64",
    passes=(
        *_FP32_CLEANUP,
        PassSpec(
            "quantize_dynamic", QuantizeDynamicOptions(reduce_range=True, min_cosine=0.99, per_token=True)
        ),
    ),
    scheme=NumericScheme(weights="int8", activations="int8"),
)
"""Why (all-MiniLM-L6-v2, Lee documents, docs/transformers.md): with one scale per call, a document in a
right-padded batch of 8 kept a worst cosine of 0.989 to itself run alone in ``x86-dynamic-int8``'s file
(pad rows and batch mates widen the range every row is rounded with); per-token scales make every token's
int8 product independent of the rest of the batch."""

ARM_INT8 = Target(
    name="arm-int8",
    description=(
        "int8 for aarch64 CPUs running ONNX Runtime: s8 activations, s8 per-channel weights, no reduce_range."
    ),
    isa="aarch64",
    passes=_int8(QuantScheme(activations="int8", reduce_range=False), attention=True),
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

LITERT_FP32 = Target(
    name="litert-fp32",
    description=(
        "fp32 for CPUs running LiteRT (.tflite; Android, Raspberry Pi-class Linux; ARM and x86, XNNPACK "
        "kernels): the exact clean-up pipeline, converted by litert_torch."
    ),
    isa="any",
    passes=_FP32_CLEANUP,
    backend=BackendSettings(backend="litert"),
)

LITERT_INT8 = Target(
    name="litert-int8",
    description=(
        "int8 for CPUs running LiteRT (.tflite; ARM and x86): s8 activations, s8 per-channel 8-bit weights, "
        "int32 bias, a fully integer file from graphopt's own scales (float32 I/O at the boundary)."
    ),
    isa="any",
    passes=_int8(QuantScheme(activations="int8", reduce_range=False)),
    scheme=NumericScheme(weights="int8", activations="int8"),
    backend=BackendSettings(backend="litert"),
)
"""Why this scheme: it is TFLite's own int8 specification (asymmetric per-tensor int8 activations,
symmetric per-channel int8 weights in -127..127, int32 bias at scale ``s_in * s_c``), the only one LiteRT's
converter keeps fully integer. The ``.tflite`` holds graphopt's int8 weights, biases and scales unchanged;
it reproduced graphopt's eager int8 output bit for bit on resnet_basic and mobilenet_v2_tiny here, and
``tests/test_litert.py`` holds it to one output step. Measured numbers: ``docs/litert.md``."""


_ETHOS_U_SCHEME = QuantScheme(activations="int8", reduce_range=False)  # TFLite's int8, as litert-int8


def _ethos_u(accelerator: str) -> Target:
    """The Ethos-U preset for ``accelerator`` with Vela's default system and memory settings; another NPU
    size or system is ``dataclasses.replace`` of its ``backend.ethos_u`` (docs/litert.md)."""
    config = EthosUConfig(accelerator)
    return Target(
        name=f"ethos-{config.family}-int8",
        description=(
            f"int8 for Arm Ethos-{config.family.upper()} NPUs ({accelerator}, Vela's default system and "
            "memory settings): litert-int8's scheme, a fully int8 .tflite with int8 I/O compiled by Vela, "
            "every conv and linear on the NPU; latency is Vela's ESTIMATE."
        ),
        isa="any",
        passes=_int8(_ETHOS_U_SCHEME),
        scheme=NumericScheme(weights="int8", activations="int8"),
        backend=BackendSettings(backend="ethos-u", integer_io=True, ethos_u=config),
    )


ETHOS_U55_INT8 = _ethos_u("ethos-u55-128")
"""Why: Ethos-U NPUs take TFLite int8 only (Vela puts an operator with a float tensor on the CPU), and
graphopt's int8 file from its own scales ran every operator on the NPU here (resnet_basic,
mobilenet_v2_tiny, ResNet-18 and MobileNetV2 at 224: 0 CPU operators on U55-128 and U65-256, where
LiteRT's own PT2E flow left 28 and 31; ``docs/litert.md``)."""
ETHOS_U65_INT8 = _ethos_u("ethos-u65-256")
ETHOS_U85_INT8 = _ethos_u("ethos-u85-256")

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

_PRESETS = (
    GENERIC_FP32, ARM_FP32, X86_INT8, X86_VNNI_INT8, X86_DYNAMIC_INT8, X86_DYNAMIC_INT8_PER_TOKEN, ARM_INT8,
    XNNPACK_INT8,
)  # fmt: skip
_LITERT = (LITERT_FP32, LITERT_INT8, ETHOS_U55_INT8, ETHOS_U65_INT8, ETHOS_U85_INT8)
TARGETS: dict[str, Target] = {t.name: t for t in (*_PRESETS, FIXED_POINT_INT8, *_LITERT)}


def resolve_target(target: str | Target) -> Target:
    """A :class:`Target` from a preset name or an instance."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        if target not in TARGETS:
            raise UnknownNameError("target", target, TARGETS)
        return TARGETS[target]
    raise ConfigError(f"target must be a preset name or a graphopt.Target, got {type(target).__name__}")
