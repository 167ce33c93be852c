"""Targets: declarative presets of what runs for an edge deployment.

A target is a frozen dataclass: an ordered tuple of passes with their options, the numeric scheme, and the
backend settings. There is no control flow in a preset: reading it tells you what runs. The int8 targets
(``arm-int8``, ``x86-int8``) arrive with the int8 capability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from graphopt.errors import ConfigError, UnknownNameError
from graphopt.pass_base import PassOptions

BackendName = Literal["onnx", "torchscript"]
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
    threads: int = 1  # edge deployments pin one inference thread per core; timings use the same

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise ConfigError(f"opset must be >= 17 (LayerNorm, modern Resize), got {self.opset}")
        if self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")


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
        "to plain fp32 ONNX (arm-int8 arrives with the int8 capability)."
    ),
    isa="aarch64",
    passes=_FP32_CLEANUP,
)

TARGETS: dict[str, Target] = {t.name: t for t in (GENERIC_FP32, ARM_FP32)}


def resolve_target(target: str | Target) -> Target:
    """A :class:`Target` from a preset name or an instance."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        if target not in TARGETS:
            raise UnknownNameError("target", target, TARGETS)
        return TARGETS[target]
    raise ConfigError(f"target must be a preset name or a graphopt.Target, got {type(target).__name__}")
