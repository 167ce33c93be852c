"""Runs inside the runtime under test (emulated aarch64 Python, or an older onnxruntime): numpy and
onnxruntime only, no graphopt, no torch.

    python probe.py MODEL.onnx INPUTS.npz OUT_DIR

Writes OUT_DIR/optimized.onnx (the graph after ORT's optimizations, which shows what got fused),
OUT_DIR/outputs.npz (outputs for every input set in INPUTS.npz, keys ``<set>/<output index>``, with every
optimization on, as the device runs the file), OUT_DIR/unoptimized.npz (the same with graph optimizations
off: every DequantizeLinear -> op -> QuantizeLinear evaluated in float by this runtime, which separates
what its fused integer kernels do from what its float ops do) and OUT_DIR/runtime.json (onnxruntime
version, machine).
"""

import json
import platform
import sys

import numpy as np
import onnxruntime as ort


def _session(model: str, level: "ort.GraphOptimizationLevel", optimized_path: str | None):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    if optimized_path is not None:
        options.optimized_model_filepath = optimized_path
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # the "hardware-specific optimizations" warning is expected here
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _outputs(session, feeds) -> dict:
    names = [i.name for i in session.get_inputs()]
    outputs = {}
    for s in sorted({key.split("/")[0] for key in feeds.files}):
        results = session.run(None, {n: feeds[f"{s}/{i}"] for i, n in enumerate(names)})
        outputs.update({f"{s}/{i}": r for i, r in enumerate(results)})
    return outputs


def main(model: str, inputs: str, out_dir: str) -> None:
    feeds = np.load(inputs)
    optimized = _session(model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, f"{out_dir}/optimized.onnx")
    np.savez(f"{out_dir}/outputs.npz", **_outputs(optimized, feeds))
    unoptimized = _session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL, None)
    np.savez(f"{out_dir}/unoptimized.npz", **_outputs(unoptimized, feeds))
    with open(f"{out_dir}/runtime.json", "w") as f:
        json.dump({"onnxruntime": ort.__version__, "machine": platform.machine()}, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
