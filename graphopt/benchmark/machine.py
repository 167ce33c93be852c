"""The facts a benchmark number depends on: which CPU, which instructions, how many threads, which versions,
and the measured peak of this core.

The peak is a GEMM micro-benchmark through ONNX Runtime on one thread, the same kernels the artifacts use:
fp32 ``MatMul`` and int8 ``MatMulInteger`` (u8 activations x s8 weights, the pairing ORT runs on AVX2 and on
ARM dot-product units) of an ``M x K`` by ``K x N`` product, ``M*K*N`` multiply-accumulates per call. The best
of several calls gives GMAC/s; a model row's roofline fraction is its MACs per second over that peak, for
its numeric type. A memory-bound layer (depthwise conv, small GEMM) sits far below the peak: the fraction
says how much of the core a model uses, not how good the kernels are.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

#: CPU features that decide which int8 and fp32 kernels ORT and PyTorch pick.
RELEVANT_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
    "asimd", "asimddp", "i8mm", "sve", "bf16",
)  # fmt: skip
#: Libraries whose version changes the numbers.
LIBRARIES = ("graphopt", "torch", "onnx", "onnxruntime", "onnxscript", "numpy", "torch-pruning")
GEMM_SHAPE = (256, 1024, 1024)  # M, K, N: large enough to reach the kernels' steady state, ~0.27 GMAC


@dataclass(frozen=True)
class MachineFacts:
    cpu: str
    arch: str
    cores: int
    flags: tuple[str, ...]
    virtualized: bool
    threads: int
    pinned_core: int | None
    versions: dict[str, str]
    peak_fp32_gmacs: float | None
    peak_int8_gmacs: float | None

    def peak_gmacs(self, numeric: str) -> float | None:
        return self.peak_int8_gmacs if numeric == "int8" else self.peak_fp32_gmacs

    def summary(self) -> str:
        flags = " ".join(self.flags) or "none of " + ", ".join(RELEVANT_FLAGS)
        pinned = f"pinned to core {self.pinned_core}" if self.pinned_core is not None else "not pinned"
        peaks = (
            f"measured peak fp32 {self.peak_fp32_gmacs:.1f} GMAC/s, int8 {self.peak_int8_gmacs:.1f} GMAC/s"
            if self.peak_fp32_gmacs and self.peak_int8_gmacs
            else "peak not measured"
        )
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        return (
            f"{self.cpu} ({self.arch}, {self.cores} cores{', virtualized' if self.virtualized else ''}); "
            f"flags: {flags}; {self.threads} thread, {pinned}; {peaks}; {versions}"
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def machine_facts(*, threads: int, pinned_core: int | None, measure_peak: bool = True) -> MachineFacts:
    cpu, flags = _cpuinfo()
    peaks = gemm_peaks(threads) if measure_peak else (None, None)
    return MachineFacts(
        cpu=cpu,
        arch=platform.machine(),
        cores=os.cpu_count() or 1,
        flags=tuple(f for f in RELEVANT_FLAGS if f in flags),
        virtualized="hypervisor" in flags,
        threads=threads,
        pinned_core=pinned_core,
        versions=_versions(),
        peak_fp32_gmacs=peaks[0],
        peak_int8_gmacs=peaks[1],
    )


def _cpuinfo() -> tuple[str, set[str]]:
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


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def gemm_peaks(threads: int = 1, repeat: int = 10) -> tuple[float, float]:
    """Best-of-``repeat`` GMAC/s of an fp32 and an int8 (u8 x s8) GEMM through ONNX Runtime."""
    m, k, n = GEMM_SHAPE
    rng = np.random.default_rng(0)
    fp32 = _gemm_session(_matmul_model(rng.standard_normal((k, n), dtype=np.float32)), threads)
    int8 = _gemm_session(_matmul_integer_model(rng.integers(-64, 64, (k, n), dtype=np.int8)), threads)
    a_fp32 = rng.standard_normal((m, k), dtype=np.float32)
    a_u8 = rng.integers(0, 255, (m, k), dtype=np.uint8)
    return (_best_gmacs(fp32, a_fp32, repeat), _best_gmacs(int8, a_u8, repeat))


def _best_gmacs(session: ort.InferenceSession, a: np.ndarray, repeat: int) -> float:
    m, k, n = GEMM_SHAPE
    feeds = {"A": a}
    session.run(None, feeds)  # warm-up: packs the constant weight once
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - start)
    return m * k * n / best / 1e9


def _gemm_session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _matmul_model(b: np.ndarray) -> onnx.ModelProto:
    m, k, n = GEMM_SHAPE
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])],
        "gemm_fp32",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(b, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _matmul_integer_model(b: np.ndarray) -> onnx.ModelProto:
    m, k, n = GEMM_SHAPE
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        "gemm_int8",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])],
        [numpy_helper.from_array(b, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
