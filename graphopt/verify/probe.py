"""Runs inside the runtime under test (emulated aarch64 Python, or an older onnxruntime): numpy and
onnxruntime only, no graphopt, no torch.

    python probe.py MODEL.onnx INPUTS.npz OUT_DIR

Writes OUT_DIR/optimized.onnx (the graph after ORT's optimizations, which shows what got fused),
OUT_DIR/outputs.npz (outputs for every input set in INPUTS.npz, keys ``<set>/<output index>``) and
OUT_DIR/runtime.json (onnxruntime version, machine).
"""

import json
import platform
import sys

import numpy as np
import onnxruntime as ort


def main(model: str, inputs: str, out_dir: str) -> None:
    options = ort.SessionOptions()
    options.optimized_model_filepath = f"{out_dir}/optimized.onnx"
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # the "hardware-specific optimizations" warning is expected here
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = np.load(inputs)
    sets = sorted({key.split("/")[0] for key in feeds.files})
    outputs = {}
    for s in sets:
        results = session.run(None, {n: feeds[f"{s}/{i}"] for i, n in enumerate(names)})
        outputs.update({f"{s}/{i}": r for i, r in enumerate(results)})
    np.savez(f"{out_dir}/outputs.npz", **outputs)
    with open(f"{out_dir}/runtime.json", "w") as f:
        json.dump({"onnxruntime": ort.__version__, "machine": platform.machine()}, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
