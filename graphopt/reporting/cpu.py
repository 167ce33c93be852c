"""What this CPU is, and which int8 scheme its kernels run fastest and accurately.

On x86, ONNX Runtime multiplies u8 activations by s8 weights. Without VNNI it uses ``vpmaddubsw``, which adds
two u8 x s8 products into int16 and saturates unless weights are 7-bit (``reduce_range``): that is
``x86-int8``. With AVX512-VNNI or AVX-VNNI, ``vpdpbusd`` accumulates in int32, nothing saturates and full
8-bit weights keep a finer step: that is ``x86-vnni-int8``. A benchmark or a default pipeline picks by the
flags of the CPU it runs on, and the peer it is compared with (ORT ``quantize_static`` at its best settings)
gets the same choice, so neither side is tuned for another CPU.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def cpuinfo() -> tuple[str, set[str]]:
    """CPU model name and feature flags from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return platform.processor() or platform.machine(), set()
    model, flags = "", set()
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Hardware", "CPU part") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or platform.machine(), flags


@dataclass(frozen=True)
class Int8Choice:
    """The int8 target for a CPU, whether its weights are 7-bit, and why."""

    target: str
    reduce_range: bool
    reason: str


def int8_choice(arch: str, flags: set[str]) -> Int8Choice:
    """The int8 target graphopt defaults to on a CPU of ``arch`` with ``flags`` (see the module doc)."""
    if arch == "aarch64":
        return Int8Choice("arm-int8", False, "aarch64: s8 x s8 dot-product kernels, no int16 saturation")
    vnni = sorted(set(VNNI_FLAGS) & flags)
    if vnni:
        return Int8Choice(
            "x86-vnni-int8", False,
            f"{'/'.join(vnni)} present: VNNI accumulates u8 x s8 in int32, so full 8-bit weights",
        )  # fmt: skip
    return Int8Choice(
        "x86-int8", True,
        "no VNNI: u8 x s8 pairs add into int16 (vpmaddubsw) and saturate unless weights are 7-bit "
        "(reduce_range)",
    )  # fmt: skip


def host_int8_choice() -> Int8Choice:
    """:func:`int8_choice` for this machine."""
    return int8_choice(platform.machine(), cpuinfo()[1])
