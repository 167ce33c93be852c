"""Check an ONNX artifact on the runtime it will meet: what that runtime fuses, and whether its outputs
match this machine's.

    result = verify_artifact("model.onnx", arch="aarch64")  # CLI: graphopt verify model.onnx --arch aarch64
    print(result.summary()); assert result.ok

For an int8 (QDQ) artifact the runtime must turn every Conv, Gemm and MatMul into an integer kernel
(QLinearConv, QGemm, QLinearMatMul, MatMulInteger...): an op left in float means the runtime dequantizes and
requantizes around it, slower than fp32 would be. Outputs must agree within cosine 0.999, on every input
set, with the file's reference semantics: this machine's onnxruntime with graph optimizations off, which
evaluates every DequantizeLinear -> op -> QuantizeLinear in float. (Not this machine's optimized run: x86
integer kernels saturate on s8 x s8, so an arm-int8 file run on x86 is itself off by more than the device.)

A disagreement has one of two causes, told apart by running the file on the device twice, optimized and
with graph optimizations off (its own float evaluation of the same QDQ graph):

- the device's fused integer kernels: its optimized run disagrees with its own float evaluation;
- the two machines' float ops (Erf, Exp, LayerNormalization, ...), which round differently in the last
  bits (1e-7 relative): harmless in float, but where a value lies within that of a rounding boundary of
  the next QuantizeLinear it lands one int8 step away, and a model with coarse steps (a transformer's
  outlier channels under static int8) carries that step to its output. Then the device's float
  evaluation already disagrees with this machine's, and its integer kernels agree with it: the file's
  int8 is numerically fragile, whatever the runtime (measured: static arm-int8 MiniLM, one of three
  random token sets, cosine 0.966 optimized and unoptimized alike, kernels at 1.000000). A file that holds
  integer contrib ops itself (``x86-dynamic-int8``'s DynamicQuantizeMatMul, QAttention) runs them in both:
  there the second cause covers those kernels too (MiniLM: 0.99898 either way on aarch64).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from graphopt.artifacts.destination import write_failure
from graphopt.backends import OnnxRunner
from graphopt.errors import ExportError, InvalidInputError, RuntimeSetupError, first_line
from graphopt.verify.runtime import DEFAULT_ORT, Arch, ForeignRuntime

__all__ = ["DEFAULT_ORT", "ForeignRuntime", "VerifyResult", "op_histogram", "verify_artifact"]

#: Float ops that an int8 artifact must not leave behind in the runtime's optimized graph.
FLOAT_COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
MIN_COSINE = 0.999
PROBE = Path(__file__).with_name("probe.py")


@dataclass
class VerifyResult:
    path: Path
    runtime: str  # e.g. "onnxruntime 1.20.1 on aarch64"
    ops: Counter[str]  # op histogram of the runtime's optimized graph
    quantized: bool
    min_cosine: float  # the device's run vs this machine's reference semantics (the verdict)
    kernel_cosine: float  # the device's run vs its own float evaluation: its fused integer kernels alone
    platform_cosine: float  # the device's float evaluation vs this machine's: the float ops alone
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        ops = ", ".join(f"{op} {n}" for op, n in sorted(self.ops.items(), key=lambda kv: (-kv[1], kv[0])))
        lines = [
            f"{self.path.name} on {self.runtime}: {'OK' if self.ok else 'PROBLEMS'}",
            f"  optimized graph: {ops}",
            f"  outputs vs reference semantics (QDQ in float): min cosine {self.min_cosine:.6f} (device's "
            f"kernels vs its own float QDQ {self.kernel_cosine:.6f}, its float QDQ vs this machine's "
            f"{self.platform_cosine:.6f})",
        ]
        return "\n".join(lines + [f"  problem: {p}" for p in self.problems])


def op_histogram(path: str | Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def _check_onnx_file(path: Path) -> None:
    """An :class:`InvalidInputError` for a file that is not an ONNX model at all: empty, another format,
    or a protobuf with no graph. (A 0-byte file is a valid, empty protobuf: ``onnx.load`` accepts it.)"""
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path} is empty (0 bytes), not an ONNX model; give a complete .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others for a file that is not ONNX
        raise InvalidInputError(
            f"{path} is not an ONNX model ({type(exc).__name__}); give an .onnx file"
        ) from exc
    if not model.HasField("graph") or not model.graph.node:
        raise InvalidInputError(
            f"{path} is not an ONNX model (it holds no graph: another protobuf, or a damaged file); "
            "give a complete .onnx file"
        )


def _reference_runner(path: Path) -> OnnxRunner:
    """This machine's onnxruntime on ``path`` with graph optimizations off. The file may come from
    anywhere, so a file it refuses is explained by ``onnx.checker`` first (an invalid model is the file's
    fault, not the runtime's); only a file the checker accepts is one this runtime cannot read."""
    try:
        return OnnxRunner(path, optimization="disabled")
    except ExportError as exc:
        try:
            onnx.checker.check_model(str(path))
        except Exception as invalid:  # ValidationError, and others for a model the checker cannot read
            raise InvalidInputError(
                f"{path} is not a valid ONNX model ({first_line(invalid)}); fix or re-export the file"
            ) from exc
        cause = first_line(exc.__cause__) if exc.__cause__ is not None else first_line(exc)
        raise InvalidInputError(
            f"{path} is a valid ONNX model that this machine's onnxruntime {ort.__version__} cannot load "
            f"({cause}); re-export it for that version (if graphopt wrote it, please report it with the "
            "model)"
        ) from exc


def verify_artifact(
    path: str | Path,
    arch: Arch = "aarch64",
    *,
    ort_version: str = DEFAULT_ORT,
    input_sets: int = 3,
    seed: int = 0,
    quiet: bool = True,
) -> VerifyResult:
    """Run ``path`` on ``arch``'s onnxruntime ``ort_version``; check fusion and outputs (module doc)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"no ONNX file at {path}")
    _check_onnx_file(path)
    runtime = ForeignRuntime(arch, ort_version)
    reference = _reference_runner(path)  # before the runtime's set-up: a bad file fails in a second
    runtime.prepare(quiet=quiet)
    feeds = _random_inputs(reference, input_sets, seed)
    ops, theirs, unoptimized, info = _run_foreign(runtime, path, feeds)
    quantized = "DequantizeLinear" in op_histogram(path)
    ours = _outputs(reference, feeds)
    result = VerifyResult(
        path=path,
        runtime=f"onnxruntime {info['onnxruntime']} on {info['machine']}",
        ops=ops,
        quantized=quantized,
        min_cosine=_min_cosine(ours, theirs),
        kernel_cosine=_min_cosine(unoptimized, theirs),
        platform_cosine=_min_cosine(ours, unoptimized),
    )
    if quantized:
        left = {op: ops[op] for op in FLOAT_COMPUTE_OPS if ops[op]}
        if left:
            result.problems.append(
                f"ops left in float (not fused into integer kernels): {left}; this runtime dequantizes "
                "around them. Use the target made for this CPU family."
            )
    if result.min_cosine < MIN_COSINE:
        result.problems.append(_disagreement(result))
    return result


def _disagreement(result: VerifyResult) -> str:
    """The problem line for outputs below :data:`MIN_COSINE`, naming which of the module docstring's two
    causes the device's unoptimized run points to."""
    head = (
        f"outputs differ from the file's reference semantics: cosine {result.min_cosine:.5f} < {MIN_COSINE}"
    )
    if result.kernel_cosine < MIN_COSINE:
        return (
            f"{head}; the runtime's fused integer kernels disagree with its own float evaluation of the file "
            f"(cosine {result.kernel_cosine:.5f}): this runtime computes the file's int8 differently "
            "(please report it with the file)"
        )
    if result.platform_cosine < MIN_COSINE:
        return (
            f"{head}; with graph optimizations off the runtime differs as much (cosine "
            f"{result.platform_cosine:.5f}) and its optimized run agrees with that (cosine "
            f"{result.kernel_cosine:.5f}): not its fusions but ops both runs share differ from this "
            "machine's: float ops that round differently in the last bits, which this file's int8 turns "
            "into whole quantization steps (numerically fragile int8), or integer ops the file itself "
            "holds. Put the sensitive layers back in float (accuracy_budget=...)"
        )
    return f"{head} (the device's float evaluation and its kernels each agree within {MIN_COSINE} alone)"


def _run_foreign(
    runtime: ForeignRuntime, path: Path, feeds: dict[str, np.ndarray]
) -> tuple[Counter[str], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
    """The foreign runtime's optimized-graph histogram, outputs (optimized, then with graph optimizations
    off) and version on ``feeds``, exchanged
    through a temporary folder (a full temporary disk is a :class:`RuntimeSetupError` saying so)."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            np.savez(Path(tmp) / "inputs.npz", **feeds)
            try:
                done = runtime.run(PROBE, str(path.resolve()), str(Path(tmp) / "inputs.npz"), tmp)
            except subprocess.TimeoutExpired as exc:  # emulation is slow, and the file runs twice
                sets = len({key.split("/")[0] for key in feeds})
                raise RuntimeSetupError(
                    f"the {runtime.arch} onnxruntime {runtime.ort_version} did not finish {path.name} in "
                    f"{exc.timeout:g} s (optimized and unoptimized, {sets} input sets); try fewer input_sets "
                    "or a smaller model"
                ) from exc
            if done.returncode != 0:
                raise RuntimeSetupError(
                    f"the {runtime.arch} onnxruntime {runtime.ort_version} failed on {path.name} (exit "
                    f"{done.returncode}): " + "\n".join(done.stderr.strip().splitlines()[-10:])
                )
            ops = op_histogram(Path(tmp) / "optimized.onnx")
            theirs = dict(np.load(Path(tmp) / "outputs.npz"))
            unoptimized = dict(np.load(Path(tmp) / "unoptimized.npz"))
            info = json.loads((Path(tmp) / "runtime.json").read_text())
    except OSError as exc:
        failure = write_failure(exc, Path(tempfile.gettempdir()), "verify's inputs in", RuntimeSetupError)
        if failure is None:
            raise
        raise failure from exc
    return ops, theirs, unoptimized, info


#: Size given to a symbolic dimension other than the batch (a sequence length) in generated inputs.
SYMBOLIC_SIZE = 16
_INTEGER_INPUTS = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _random_inputs(runner: OnnxRunner, sets: int, seed: int) -> dict[str, np.ndarray]:
    """``sets`` input sets of batch 1 shaped like the file's inputs (symbolic dimensions besides the batch
    at :data:`SYMBOLIC_SIZE`): float inputs standard normal; an integer input that indexes a table
    (token ids into an embedding) uniform over the table's rows; other integer inputs (masks) all ones."""
    generator = np.random.default_rng(seed)
    tables = _gathered_rows(onnx.load(str(runner.path), load_external_data=False).graph)
    feeds = {}
    for s in range(sets):
        for i, spec in enumerate(runner.session.get_inputs()):
            shape = [
                d if isinstance(d, int) else (1 if k == 0 else SYMBOLIC_SIZE)
                for k, d in enumerate(spec.shape)
            ]
            if spec.type == "tensor(float)":
                feeds[f"{s}/{i}"] = generator.standard_normal(shape).astype(np.float32)
            elif spec.type in _INTEGER_INPUTS:
                rows = tables.get(spec.name)
                values = generator.integers(0, rows, shape) if rows else np.ones(shape)
                feeds[f"{s}/{i}"] = values.astype(_INTEGER_INPUTS[spec.type])
            else:
                raise InvalidInputError(
                    f"input {spec.name} is {spec.type}; verify generates float and int inputs"
                )
    return feeds


def _gathered_rows(graph: onnx.GraphProto) -> dict[str, int]:
    """For each graph input that indexes a ``Gather`` of a stored table (directly, or through the table's
    ``DequantizeLinear``), the number of rows of the smallest such table."""
    sizes = {init.name: int(init.dims[0]) for init in graph.initializer if init.dims}
    for node in graph.node:  # a quantized table: rows of the int8 initializer behind the dequantization
        if node.op_type == "DequantizeLinear" and node.input[0] in sizes:
            sizes[node.output[0]] = sizes[node.input[0]]
    inputs = {i.name for i in graph.input}
    rows: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Gather" and node.input[1] in inputs and node.input[0] in sizes:
            rows[node.input[1]] = min(rows.get(node.input[1], sizes[node.input[0]]), sizes[node.input[0]])
    return rows


def _outputs(host: OnnxRunner, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``host``'s outputs on every input set of ``feeds``, keyed ``<set>/<output index>`` as the probe's."""
    outputs = {}
    for s in sorted({key.split("/")[0] for key in feeds}):
        inputs = [feeds[f"{s}/{i}"] for i in range(len(host.input_names))]
        outputs.update({f"{s}/{i}": out for i, out in enumerate(host.run(*inputs))})
    return outputs


def _min_cosine(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> float:
    """The least cosine between two runs' outputs over every input set and output (1 for two zeros)."""
    worst = 1.0
    for key, mine in ours.items():
        a, b = mine.ravel().astype(np.float64), theirs[key].ravel().astype(np.float64)
        denominator = np.linalg.norm(a) * np.linalg.norm(b)
        cosine = float(a @ b / denominator) if denominator > 0 else float(np.array_equal(a, b))
        worst = min(worst, cosine)
    return worst
