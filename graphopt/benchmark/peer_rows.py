"""The peers a benchmark times next to graphopt: what a user would run instead, each the way its users run it.

- eager PyTorch fp32, contiguous and channels-last (the latter for 4-D inputs);
- ONNX Runtime fp32 of the unoptimized model (the reference of every speed-up);
- ORT ``quantize_static`` at its defaults and at its best settings on this CPU (int8 pipelines only);
- TorchScript fp32 (trace + freeze);
- for pipelines that ship ``.pte`` (xnnpack-int8): ExecuTorch fp32 on XNNPACK and ExecuTorch's own int8 flow
  (torchao PT2E with ``XNNPACKQuantizer``, calibrated on the same samples as graphopt);
- for pipelines that ship ``.tflite`` (litert-*, ethos-u*): LiteRT fp32 and LiteRT's own int8 flow (torchao
  PT2E with litert_torch's ``PT2EQuantizer``, the same samples), run by LiteRT's interpreter; for each
  Ethos-U NPU among the pipelines, that int8 file compiled by Vela for it: an ESTIMATE, not a measurement,
  of the NPU's work alone (Vela costs what it leaves on the Cortex-M at 0 cycles; the row names those
  operators with Vela's reasons);
- for pipelines that ship ``.onnx``: NNCF's post-training quantization (:mod:`.nncf_peer`: ``nncf.quantize``
  on the exported model, its defaults and its full bias correction, the same calibration samples), run in ORT
  (int8 pipelines only, when ``nncf`` is installed);
- Torch-Pruning's magnitude pruner at the same channel ratio, run in ORT fp32 and, for int8 pipelines,
  quantized with ORT's best settings (pruning pipelines only, when ``torch-pruning`` is installed). On a
  model with training data it is fine-tuned first on the labels alone (Torch-Pruning has no distillation)
  with graphopt's recovery loop and the whole training budget of graphopt's chain: recovery plus QAT epochs.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from graphopt.backends import (
    BACKENDS,
    EthosURunner,
    ExecuTorchRunner,
    LiteRTRunner,
    OnnxRunner,
    TorchScriptRunner,
    export_executorch,
    export_litert,
    export_onnx,
    export_torchscript,
)
from graphopt.backends.vela import VelaEstimate
from graphopt.benchmark.nncf_peer import NNCF_PRESETS, nncf_quantize
from graphopt.benchmark.peers import OrtPreset, ort_quantize_static
from graphopt.errors import ExportError
from graphopt.frontend.capture import capture
from graphopt.ir.shapes import propagate_shapes
from graphopt.pruning.sparsity import zipped_bytes
from graphopt.recovery.config import LABELS_ONLY, RecoveryConfig
from graphopt.recovery.engine import fit
from graphopt.reporting.cost import count_macs, count_params, weight_bytes
from graphopt.reporting.cpu import host_int8_choice
from graphopt.reporting.energy import estimate_graph
from graphopt.reporting.notes import Note
from graphopt.targets import EthosUConfig

from .candidates import Candidate, EagerRunner, Runner
from .models import BenchModel
from .pipelines import Pipeline
from .schema import EAGER_CHANNELS_LAST, EAGER_FP32, ORT_FP32, BenchRow

PEERS = "peers"
LITERT_PT2E = "LiteRT PT2E int8"
NNCF_PTQ = "NNCF PTQ"
#: The backends whose pipelines ship a ``.tflite``: they get the LiteRT peers.
TFLITE_BACKENDS = ("litert", "ethos-u")
#: The runtime of each peer that runs a file (the rest run eagerly).
FILE_RUNTIMES: dict[type, str] = {
    OnnxRunner: "onnxruntime",
    TorchScriptRunner: "torch.jit",
    ExecuTorchRunner: "executorch",
    LiteRTRunner: "litert",
    EthosURunner: BACKENDS["ethos-u"].runtime,  # Vela's estimate, as the Ethos-U artifact rows
}
#: Note keys (graphopt.reporting.notes) on peers left out; facts: ``peer`` (and ``ratio``, ``error`` when
#: the peer ran and failed).
PEER_NOT_INSTALLED = "bench:peer_not_installed"
PEER_FAILED = "bench:peer_failed"


@dataclass(frozen=True)
class ModelCost:
    """Parameters, MACs and the energy estimate of an unoptimized model, counted as the report counts them."""

    params: int
    macs: int
    energy_uj: dict[str, float]  # by numeric type: the same graph run in fp32 or in int8


def model_cost(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> ModelCost:
    gm = capture(copy.deepcopy(model).eval()).gm
    propagate_shapes(gm, inputs)
    params = count_params(gm)
    energy = {numeric: estimate_graph(gm, params, numeric).total_uj for numeric in ("fp32", "int8")}
    return ModelCost(params, count_macs(gm), energy)


def build_peers(
    bench: BenchModel,
    pipelines: Sequence[Pipeline],
    folder: Path,
    fine_tune: RecoveryConfig | None = None,
) -> tuple[list[Candidate], list[str]]:
    """The peer candidates for ``pipelines``, and notes on peers left out and why; ``fine_tune`` is how the
    pruned peers train on ``bench.train`` (None: they are not fine-tuned)."""
    model, inputs = bench.model, bench.example_inputs
    cost = model_cost(model, inputs)
    peers: list[Candidate] = []
    notes: list[str] = []

    def add(stage: str, numeric: str, runner: Runner, size: int, note: str) -> None:
        runtime = FILE_RUNTIMES.get(type(runner), "eager")
        row = BenchRow(bench.name, PEERS, stage, "peer", numeric, runtime, cost.params, cost.macs, size,
                       energy_uj=cost.energy_uj[numeric], notes=[note])  # fmt: skip
        if type(runner) in FILE_RUNTIMES:
            row.zipped_bytes = zipped_bytes(runner.path)
        peers.append(Candidate(row, runner))

    path = export_onnx(model, inputs, folder / "peer_ort_fp32.onnx")
    add(ORT_FP32, "fp32", OnnxRunner(path), _size(path), "the unoptimized model; the reference for speed-ups")
    add(EAGER_FP32, "fp32", EagerRunner(model), weight_bytes(model), "the unoptimized model in PyTorch")
    if all(x.dim() == 4 for x in inputs):
        runner = EagerRunner(model, channels_last=True)
        add(EAGER_CHANNELS_LAST, "fp32", runner, weight_bytes(model), "model and input channels-last")
    path = export_torchscript(model, inputs, folder / "peer_torchscript_fp32.pt")
    add("TorchScript fp32", "fp32", TorchScriptRunner(path), _size(path), "torch.jit.trace + freeze")
    quantize = any(p.quantized for p in pipelines) and bench.calibration is not None
    if quantize:
        for preset, note in quantize_static_presets().items():
            path = _quantize_static(model, bench, folder / f"peer_ort_qs_{preset}.onnx", preset)
            add(f"ORT quantize_static ({preset})", "int8", OnnxRunner(path), _size(path), note)
    if quantize and any(p.quantized and p.spec.backend.backend == "onnx" for p in pipelines):
        _nncf_peers(bench, folder, add, notes)
    if any(p.spec.backend.backend == "executorch" for p in pipelines):
        _executorch_peers(bench, folder, quantize, add)
    if any(p.spec.backend.backend in TFLITE_BACKENDS for p in pipelines):
        _litert_peers(bench, folder, quantize, add, _ethos_u_configs(pipelines), notes)
    for ratio in sorted({p.prune for p in pipelines if p.prune}):
        pruned = _torch_pruning(bench, ratio, notes)
        if pruned is None:
            continue
        cost = model_cost(pruned, inputs)
        trained = _fine_tune(pruned, bench, fine_tune)
        note = f"Torch-Pruning MagnitudePruner (L2), pruning_ratio {ratio:g}, {trained}"
        path = export_onnx(pruned, inputs, folder / f"peer_tp_{ratio:g}.onnx")
        add(f"Torch-Pruning {ratio:g}", "fp32", OnnxRunner(path), _size(path), note)
        if quantize:
            path = _quantize_static(pruned, bench, folder / f"peer_tp_{ratio:g}_qs_best.onnx", "best")
            stage = f"Torch-Pruning {ratio:g} + ORT quantize_static (best)"
            add(stage, "int8", OnnxRunner(path), _size(path), note)
    return peers, notes


def _nncf_peers(bench: BenchModel, folder: Path, add: Callable[..., None], notes: list[str]) -> None:
    """NNCF's PTQ at each preset, run in ORT; a missing ``nncf`` or a failure of NNCF is a note."""
    if importlib.util.find_spec("nncf") is None:
        notes.append(Note(
            PEER_NOT_INSTALLED, "NNCF is not installed (pip install 'graphopt[nncf]'): no NNCF PTQ rows",
            peer="nncf", extra="nncf",
        ))  # fmt: skip
        return
    for preset, note in NNCF_PRESETS.items():
        path = folder / f"peer_nncf_{preset}.onnx"
        try:
            nncf_quantize(bench.model, bench.example_inputs, _samples(bench), path, preset)
            runner = OnnxRunner(path)  # a file ORT refuses is NNCF's failure too
        except Exception as exc:  # a peer's failure is a finding, not a reason to stop the benchmark
            error = type(exc).__name__
            notes.append(Note(PEER_FAILED, f"{NNCF_PTQ} ({preset}) failed: {error}: {exc}", peer="nncf",
                              preset=preset, error=error))  # fmt: skip
            continue
        add(f"{NNCF_PTQ} ({preset})", "int8", runner, _size(path), note)


def _executorch_peers(bench: BenchModel, folder: Path, quantize: bool, add: Callable[..., None]) -> None:
    from graphopt.backends.executorch_backend import pt2e_executorch

    inputs = bench.example_inputs
    path = export_executorch(bench.model, inputs, folder / "peer_et_fp32.pte")
    add("ExecuTorch fp32", "fp32", ExecuTorchRunner(path), _size(path), "torch.export -> XNNPACK, fp32")
    if quantize:
        assert bench.calibration is not None
        samples = [(x[i : i + 1],) for x in bench.calibration for i in range(len(x))]
        path = pt2e_executorch(bench.model, inputs, samples, folder / "peer_et_pt2e.pte")
        note = "ExecuTorch's flow: PT2E XNNPACKQuantizer (per-channel symmetric), graphopt's calibration"
        add("ExecuTorch PT2E int8", "int8", ExecuTorchRunner(path), _size(path), note)


def _ethos_u_configs(pipelines: Sequence[Pipeline]) -> list[EthosUConfig]:
    """The Ethos-U NPUs the pipelines ship to, each once, in the pipelines' order."""
    configs = [p.spec.backend.ethos_u for p in pipelines if p.spec.backend.backend == "ethos-u"]
    return list(dict.fromkeys(configs))


def _litert_peers(
    bench: BenchModel,
    folder: Path,
    quantize: bool,
    add: Callable[..., None],
    npus: list[EthosUConfig],
    notes: list[str],
) -> None:
    """LiteRT fp32 and LiteRT's own PT2E int8 flow on the CPU, and that int8 file on each of ``npus``."""
    from graphopt.backends.ethos_u_backend import compile_tflite
    from graphopt.backends.litert_backend import pt2e_litert

    inputs = bench.example_inputs
    path = export_litert(bench.model, inputs, folder / "peer_litert_fp32.tflite")
    add("LiteRT fp32", "fp32", LiteRTRunner(path), _size(path), "litert_torch.convert, fp32")
    if not quantize:
        return
    assert bench.calibration is not None
    batch = len(inputs[0])  # the .tflite keeps the example's batch: calibrate with batches of that size
    samples = [(x[i : i + batch],) for x in bench.calibration for i in range(0, len(x) - batch + 1, batch)]
    try:
        path = pt2e_litert(bench.model, inputs, samples, folder / "peer_litert_pt2e.tflite")
    except ExportError as exc:  # a peer's failure is a finding, not a reason to stop the benchmark
        notes.append(Note(PEER_FAILED, f"{LITERT_PT2E} failed: {exc}", peer="litert_pt2e",
                          error=type(exc).__name__))  # fmt: skip
        return
    note = "LiteRT's flow: PT2E PT2EQuantizer (per-channel symmetric), graphopt's calibration, int8 I/O"
    add(LITERT_PT2E, "int8", LiteRTRunner(path), _size(path), note)
    for index, config in enumerate(npus):
        npu = folder / f"peer_litert_pt2e_npu{index}.tflite"
        estimate = compile_tflite(path.read_bytes(), npu, config, conv_on_cpu_ok=True)
        system = ", ".join(n for n in (config.system_config, config.memory_mode) if n)  # a custom target's
        stage = f"{LITERT_PT2E} on {config.accelerator}{f' ({system})' if system else ''} (Vela)"
        add(stage, "int8", EthosURunner(npu, npu_share_only=True), _size(npu), _vela_note(estimate))


def _vela_note(estimate: VelaEstimate) -> str:
    """What a Vela-costed peer's number is, and what it leaves out."""
    left = estimate.cpu_ops
    named = ", ".join(map(str, left[:6])) + (", ..." if len(left) > 6 else "")
    where = (
        f"{len(left)} op(s) left on the CPU, NOT counted in the estimate: {named}"
        if left
        else "every op on the NPU"
    )
    return f"{LITERT_PT2E} compiled by Vela: ESTIMATED {estimate.inference_ms:.4f} ms of NPU work; {where}"


def quantize_static_presets() -> dict[OrtPreset, str]:
    """The two ORT peers and what they ran: ``best`` uses reduce_range only where this CPU needs it."""
    choice = host_int8_choice()
    weights = "reduce_range" if choice.reduce_range else "full 8-bit weights"
    return {
        "default": "quantize_static with no options",
        "best": f"quantize_static, u8 activations, s8 per-channel weights, {weights} ({choice.reason})",
    }


def _fine_tune(pruned: nn.Module, bench: BenchModel, config: RecoveryConfig | None) -> str:
    """Fine-tune ``pruned`` in place on the labels alone, with the data graphopt's recovery gets (its best
    epoch chosen on the bench's validation split when there is one); say what was done."""
    if config is None or bench.train is None:
        return "no fine-tuning"
    result = fit(pruned, None, bench.train, replace(config, distill=LABELS_ONLY), val_data=bench.validation,
                 desc="fine-tune peer")  # fmt: skip
    return f"fine-tuned {result.epochs_run} epochs on labels alone (graphopt's recovery loop, no teacher)"


def _size(path: Path) -> int:
    return path.stat().st_size


def _samples(bench: BenchModel) -> list[tuple[torch.Tensor, ...]]:
    """The bench's calibration images one by one, as graphopt and the ORT peers calibrate on them."""
    assert bench.calibration is not None
    return [(x[i : i + 1],) for x in bench.calibration for i in range(len(x))]


def _quantize_static(model: nn.Module, bench: BenchModel, path: Path, preset: OrtPreset) -> Path:
    return ort_quantize_static(model, bench.example_inputs, _samples(bench), path, preset)


def _torch_pruning(bench: BenchModel, ratio: float, notes: list[str]) -> nn.Module | None:
    if importlib.util.find_spec("torch_pruning") is None:
        notes.append(Note(
            PEER_NOT_INSTALLED,
            "Torch-Pruning is not installed (pip install 'graphopt[peers]'): no Torch-Pruning rows",
            peer="torch_pruning", extra="peers",
        ))  # fmt: skip
        return None
    try:
        return torch_pruning_magnitude(bench.model, bench.example_inputs, ratio)
    except Exception as exc:  # a peer's failure is a finding, not a reason to stop the benchmark
        error = type(exc).__name__
        notes.append(Note(
            PEER_FAILED, f"Torch-Pruning at {ratio:g} failed: {error}: {exc}",
            peer="torch_pruning", ratio=ratio, error=error,
        ))  # fmt: skip
        return None


def torch_pruning_magnitude(model: nn.Module, inputs: tuple[torch.Tensor, ...], ratio: float) -> nn.Module:
    """Prune a copy of ``model`` with Torch-Pruning's magnitude pruner, the classifier kept whole."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    with torch.no_grad():
        classes = pruned(*inputs).shape[-1]
    keep = [m for m in pruned.modules() if isinstance(m, nn.Linear) and m.out_features == classes]
    pruner = tp.pruner.MagnitudePruner(
        pruned, inputs, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
        ignored_layers=keep,
    )  # fmt: skip
    pruner.step()
    return pruned
