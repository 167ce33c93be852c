"""The facts a benchmark number depends on: which CPU, which instructions, how many threads, which versions,
and the measured peak of this core.

The peak is a micro-benchmark through ONNX Runtime on one thread, on the kernels the artifacts use: a GEMM
(``MatMul`` fp32, ``MatMulInteger`` u8 x s8, ``M*K*N`` multiply-accumulates) and a 3x3 convolution
(``Conv`` fp32, ``QLinearConv`` u8 x s8, 256 -> 256 channels at 28x28), u8 activations x s8 weights being the
pairing ORT runs on AVX2 and on ARM dot-product units. The best call of either kernel gives GMAC/s; the
benchmark measures it at its start and again at its end (a core's clock moves with load) and keeps the
higher. A model row's roofline fraction is its MACs per second over that peak, for its numeric type. A
memory-bound layer (depthwise conv, small GEMM) sits far below the peak: the fraction says how much of the
core a model uses, not how good the kernels are.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphopt.reporting.cpu import cpuinfo, int8_choice

#: CPU features that decide which int8 and fp32 kernels ORT and PyTorch pick.
RELEVANT_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
    "asimd", "asimddp", "i8mm", "sve", "bf16",
)  # fmt: skip
#: Libraries whose version changes the numbers.
LIBRARIES = ("graphopt", "torch", "onnx", "onnxruntime", "onnxscript", "numpy", "torch-pruning")
GEMM_SHAPE = (256, 1024, 1024)  # M, K, N: large enough to reach the kernels' steady state, ~0.27 GMAC
CONV_SHAPE = (256, 28)  # channels in and out, spatial size: a ResNet stage-3 conv, ~0.46 GMAC


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
    #: The int8 target this CPU's default pipelines and ORT peer use, and why (:mod:`graphopt.reporting.cpu`).
    int8_target: str = ""

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
            f"flags: {flags}; int8 default {self.int8_target or 'not recorded'}; {self.threads} thread, "
            f"{pinned}; {peaks}; {versions}"
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def machine_facts(*, threads: int, pinned_core: int | None, measure_peak: bool = True) -> MachineFacts:
    cpu, flags = cpuinfo()
    choice = int8_choice(platform.machine(), flags)
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
        int8_target=f"{choice.target} ({choice.reason})",
    )


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def gemm_peaks(threads: int = 1, repeat: int = 20) -> tuple[float, float]:
    """Best-of-``repeat`` GMAC/s of fp32 and int8 (u8 x s8) GEMM and 3x3 conv through ONNX Runtime."""
    rng = np.random.default_rng(0)
    m, k, n = GEMM_SHAPE
    c, size = CONV_SHAPE
    gemm, conv = m * k * n, c * c * 9 * size * size
    a_fp32, a_u8 = rng.standard_normal((m, k), np.float32), rng.integers(0, 255, (m, k), np.uint8)
    x_fp32 = rng.standard_normal((1, c, size, size), np.float32)
    x_u8 = rng.integers(0, 255, (1, c, size, size), np.uint8)
    kernels = {
        "fp32": [(_matmul_model(rng), {"A": a_fp32}, gemm), (_conv_model(rng), {"X": x_fp32}, conv)],
        "int8": [
            (_matmul_integer_model(rng), {"A": a_u8}, gemm),
            (_qlinear_conv_model(rng), {"X": x_u8}, conv),
        ],
    }
    peaks = {
        kind: max(_best_gmacs(_session(graph, threads), feeds, macs, repeat) for graph, feeds, macs in runs)
        for kind, runs in kernels.items()
    }
    return peaks["fp32"], peaks["int8"]


def _best_gmacs(session: ort.InferenceSession, feeds: dict[str, np.ndarray], macs: int, repeat: int) -> float:
    for _ in range(3):  # warm-up: packs the constant weights once
        session.run(None, feeds)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - start)
    return macs / best / 1e9


def _session(graph: onnx.GraphProto, threads: int) -> ort.InferenceSession:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _io(name: str, dtype: int, shape: list[int] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _matmul_model(rng: np.random.Generator) -> onnx.GraphProto:
    m, k, n = GEMM_SHAPE
    b = numpy_helper.from_array(rng.standard_normal((k, n), np.float32), "B")
    node = helper.make_node("MatMul", ["A", "B"], ["Y"])
    return helper.make_graph([node], "gemm_fp32", [_io("A", TensorProto.FLOAT, [m, k])],
                             [_io("Y", TensorProto.FLOAT, None)], [b])  # fmt: skip


def _matmul_integer_model(rng: np.random.Generator) -> onnx.GraphProto:
    m, k, n = GEMM_SHAPE
    b = numpy_helper.from_array(rng.integers(-64, 64, (k, n), np.int8), "B")
    node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
    return helper.make_graph([node], "gemm_int8", [_io("A", TensorProto.UINT8, [m, k])],
                             [_io("Y", TensorProto.INT32, None)], [b])  # fmt: skip


def _conv_model(rng: np.random.Generator) -> onnx.GraphProto:
    c, size = CONV_SHAPE
    w = numpy_helper.from_array(rng.standard_normal((c, c, 3, 3), np.float32), "W")
    node = helper.make_node("Conv", ["X", "W"], ["Y"], pads=[1, 1, 1, 1])
    return helper.make_graph([node], "conv_fp32", [_io("X", TensorProto.FLOAT, [1, c, size, size])],
                             [_io("Y", TensorProto.FLOAT, None)], [w])  # fmt: skip


def _qlinear_conv_model(rng: np.random.Generator) -> onnx.GraphProto:
    c, size = CONV_SHAPE
    scalars = {"xs": np.float32(0.1), "xz": np.uint8(128), "ws": np.float32(0.01), "wz": np.int8(0),
               "ys": np.float32(0.5), "yz": np.uint8(128)}  # fmt: skip
    inits = [numpy_helper.from_array(rng.integers(-64, 64, (c, c, 3, 3), np.int8), "W")]
    inits += [numpy_helper.from_array(np.array(v), name) for name, v in scalars.items()]
    node = helper.make_node(
        "QLinearConv", ["X", "xs", "xz", "W", "ws", "wz", "ys", "yz"], ["Y"], pads=[1, 1, 1, 1]
    )
    return helper.make_graph([node], "conv_int8", [_io("X", TensorProto.UINT8, [1, c, size, size])],
                             [_io("Y", TensorProto.UINT8, None)], inits)  # fmt: skip
