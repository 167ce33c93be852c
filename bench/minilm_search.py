"""The goal-driven search over all-MiniLM-L6-v2: prune ratio x int8 fall-back, scored without labels.

    python bench/minilm_search.py --ratios 0 0.3 0.5 --epochs 10 --out docs/bench/minilm_search

``optimize(minilm, "x86-dynamic-int8", goals=Goals(min_speedup, min_cosine, max_bytes), search=...)``:
pruned candidates (whole heads and FFN units, ``activation`` importance) are distilled on 240 of the Lee
background corpus's 300 documents (text without labels, padded to 128 tokens); every candidate is scored on
the other 60 by the cosine of its sentence embeddings to the original's (``Goals.min_cosine``: no labels)
and timed beside the original in ORT fp32 at 128 tokens, one thread. The returned file is then scored as
``graphopt bench minilm`` scores its rows: Lee Spearman against the 1,225 human ratings and each of the 50
rated documents' cosine to the original (never trained or chosen on). A markdown table on stdout and in
``--out``, progress on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import graphopt
from graphopt import Goals, OptimizerConfig, RecoveryConfig, SearchConfig
from graphopt.backends import OnnxRunner
from graphopt.benchmark.machine import machine_facts
from graphopt.benchmark.minilm import SEQUENCE, TRAIN_BATCH, TRAIN_TOKENS, padded_batches
from graphopt.zoo.lee import embed_all, lee_background, lee_corpus, lee_score
from graphopt.zoo.minilm import example_tokens, load_minilm, tokenize

VALIDATION_DOCUMENTS = 60  # of the 300 background documents: the rest train


def run(args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(0)
    model, corpus = load_minilm(), lee_corpus()
    background = tokenize(lee_background(), TRAIN_TOKENS)
    train = padded_batches(background[:-VALIDATION_DOCUMENTS], TRAIN_BATCH, TRAIN_TOKENS)
    validation = padded_batches(background[-VALIDATION_DOCUMENTS:], TRAIN_BATCH, TRAIN_TOKENS)
    goals = Goals(min_speedup=args.speedup, min_cosine=args.cosine, max_bytes=int(args.max_mb * 1e6))
    config = SearchConfig(
        prune_ratios=tuple(args.ratios), importances=("activation",), int8=tuple(args.int8), exits=(False,),
        max_candidates=24, max_minutes=args.max_minutes, quiet=args.quiet,
    )  # fmt: skip
    recovery = RecoveryConfig(
        epochs=args.epochs, batch_size=TRAIN_BATCH, optimizer=OptimizerConfig(lr=2e-4), quiet=True
    )
    started = time.perf_counter()
    res = graphopt.optimize(
        model, "x86-dynamic-int8", example_inputs=example_tokens(TRAIN_TOKENS), dynamic_shapes=SEQUENCE,
        calibration_data=[example_tokens(TRAIN_TOKENS, 4, seed) for seed in range(1, 5)], train_data=train,
        validation_data=validation, recovery=recovery, goals=goals, search=config,
    )  # fmt: skip
    wall = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path = res.export(Path(tmp) / "chosen.onnx", latency_guard=False)
        runner = OnnxRunner(path, threads=1)
        documents = tokenize(corpus.documents)
        with torch.no_grad():
            reference = embed_all(lambda i, m: model(torch.from_numpy(i), torch.from_numpy(m)), documents)
        score = lee_score(embed_all(lambda *x: runner.run(*x)[0], documents), reference, corpus.ratings)
        size = path.stat().st_size
    fp32 = lee_score(reference, reference, corpus.ratings).spearman
    return {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "goals": str(goals),
        "wall_s": round(wall, 1),
        "returned": res.search.chosen.point.label,
        "returned_bytes": size,
        "lee": {
            "spearman": score.spearman,
            "fp32_spearman": fp32,
            "worst_cosine": score.worst_cosine,
            "mean_cosine": score.mean_cosine,
        },
        "rows": res.search.table(),
        "notes": [str(n) for n in res.report.notes if str(n).startswith("search")],
    }


def machine() -> dict[str, object]:
    """The CPU and its flags (one thread, not pinned), for the record."""
    return dataclasses.asdict(machine_facts(threads=1, pinned_core=None, measure_peak=False))


def markdown(result: dict[str, object]) -> str:
    machine = result["machine"]
    lee = result["lee"]
    flags = ", ".join(machine.get("flags", ()))
    lines = [
        f"{result['date']}, {machine.get('cpu')} ({flags}); `{result['command']}`",
        "",
        f"Goals: {result['goals']}. Wall time {result['wall_s']} s. Returned **{result['returned']}** "
        f"({result['returned_bytes'] / 1e6:.1f} MB): Lee Spearman {lee['spearman']:.3f} (fp32 "
        f"{lee['fp32_spearman']:.3f}), rated documents' cosine to fp32 worst {lee['worst_cosine']:.4f} / "
        f"mean {lee['mean_cosine']:.4f}.",
        "",
        "| candidate | status | speed-up vs ORT fp32 | MB | validation cosine | goals | build s |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for r in result["rows"]:
        mb = "" if r["bytes"] is None else f"{r['bytes'] / 1e6:.1f}"
        name = f"{r['candidate']}{' (chosen)' if r['chosen'] else ''}"
        cosine = "" if r["cosine"] is None else r["cosine"]
        cells = [name, r["status"], r["speedup"] or "", mb, cosine, r["goals"], r["seconds"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join([*lines, "", *(f"- {n}" for n in result["notes"])]) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    p.add_argument("--int8", nargs="+", default=["on", "fallbacks"], choices=["off", "on", "fallbacks"])
    p.add_argument("--epochs", type=int, default=10, help="distillation epochs of each pruned candidate")
    p.add_argument("--speedup", type=float, default=2.6, help="goal: speed-up over ORT fp32")
    p.add_argument("--cosine", type=float, default=0.85, help="goal: mean validation cosine to the original")
    p.add_argument("--max-mb", type=float, default=20.0, help="goal: file size in MB")
    p.add_argument("--max-minutes", type=float, default=120.0)
    p.add_argument("--out", type=Path)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    result = run(args)
    text = markdown(result)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "search.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        (args.out / "search.md").write_text(text)


if __name__ == "__main__":
    main()
