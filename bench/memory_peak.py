"""Peak memory of ``optimize`` + ``export`` above the process's baseline, against the fp32 weight bytes.

    python bench/memory_peak.py --model resnet152            # x86-int8, ONNX
    python bench/memory_peak.py --model vit_b16 --target x86-dynamic-int8
    python bench/memory_peak.py --model all --json out.json --cap-gib 15

Each measurement runs in a fresh Python process: the baseline is that process's resident set (RSS) once the
model and its inputs are built (the caller's model is the caller's memory), and the peak is ``ru_maxrss``,
the kernel's exact high-water mark, so ``peak - baseline`` is the most ``optimize`` + ``export`` ever held
beyond what the caller already had. The phases (optimize, export) and the report's per-stage peaks come from
:class:`graphopt.reporting.memory.PeakWatch` (sampled every 5 ms plus ``ru_maxrss``). The goal (issue 39):
``peak - baseline <= 4 x fp32 weight bytes``. Inputs are small (memory here is about weights, not
activations) and calibration uses 4 random samples. Not a test (no ``test_`` prefix): it takes minutes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

GOAL_RATIO = 4.0


def _resnet152() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from graphopt.zoo.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, (3, 8, 36, 3)), (torch.randn(1, 3, 64, 64),)


class _VitLogits(nn.Module):
    """A Hugging Face ViT returning its pooled features as one tensor (what a classifier head reads)."""

    def __init__(self, **config: int):
        super().__init__()
        import transformers

        self.vit = transformers.ViTModel(transformers.ViTConfig(**config))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=pixels).pooler_output


def _vit_b16() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return _VitLogits(image_size=64), (torch.randn(1, 3, 64, 64),)


def _vit_600m() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    # ViT-H/14's width and MLP with 32 layers: 630 M parameters; a 56x56 image keeps activations small.
    model = _VitLogits(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                       intermediate_size=5120, patch_size=14, image_size=56)  # fmt: skip
    return model, (torch.randn(1, 3, 56, 56),)


def _resnet_600m() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    # ResNet-152's blocks at 3.25x its width: 620 M parameters, the size of RegNetY-128GF or ViT-H/14, on
    # the int8 path that runs in minutes on 2 cores (ViT-B/16's dynamic int8 takes 6 minutes already).
    from graphopt.zoo.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, (3, 8, 36, 3), base_width=208), (torch.randn(1, 3, 32, 32),)


MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]] = {
    "resnet152": _resnet152,
    "vit_b16": _vit_b16,
    "resnet_600m": _resnet_600m,
    "vit_600m": _vit_600m,
}
DEFAULT_TARGET = {"resnet152": "x86-int8", "vit_b16": "x86-dynamic-int8", "resnet_600m": "x86-int8",
                  "vit_600m": "x86-dynamic-int8"}  # fmt: skip


def weight_bytes(model: nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def stop_above(cap_bytes: int, phase: list[str]) -> None:
    """Watch this process's RSS; above ``cap_bytes`` print why and exit at once (before the machine's OOM
    killer picks a process, maybe someone else's)."""
    from graphopt.reporting.memory import MIB, current_rss_bytes

    def watch() -> None:
        while True:
            rss = current_rss_bytes() or 0
            if rss > cap_bytes:
                print(json.dumps({"error": f"RSS {rss / MIB:.0f} MiB passed the cap of {cap_bytes / MIB:.0f} "
                                  f"MiB during {phase[0]}"}), flush=True)  # fmt: skip
                os._exit(3)
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()


def measure_one(
    name: str, target: str, backend: str, latency_guard: bool, cap_gib: float
) -> dict[str, object]:
    """Build ``name``, then optimize + export it, in this process (run it in a fresh one)."""
    import graphopt
    from graphopt.reporting.memory import MIB, PeakWatch, current_rss_bytes, max_rss_bytes

    phase = ["build"]
    stop_above(int(cap_gib * 2**30), phase)

    torch.manual_seed(0)
    with torch.no_grad():
        model, inputs = MODELS[name]()
    model.eval()
    calibration = [tuple(torch.randn_like(x) for x in inputs) for _ in range(4)]
    gc.collect()
    baseline = current_rss_bytes() or 0
    high_before = max_rss_bytes() or 0
    watch = PeakWatch()
    started = time.perf_counter()
    phase[0] = "optimize"
    with watch:
        res = graphopt.optimize(model, target, example_inputs=inputs, calibration_data=calibration)
    optimize_peak, optimize_s = watch.peak or 0, time.perf_counter() - started
    suffix = ".onnx" if backend == "onnx" else ".pt"
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        phase[0] = "export"
        with watch:
            artifact = res.export(Path(tmp) / f"{name}{suffix}", latency_guard=latency_guard)
        export_peak, export_s = watch.peak or 0, time.perf_counter() - started
        artifact_bytes = artifact.stat().st_size
    peak = max(max_rss_bytes() or 0, optimize_peak, export_peak)
    fp32 = weight_bytes(model)
    stages = [{"stage": r.stage, "peak_mib": getattr(r, "peak_rss_mib", None)} for r in res.report.stages]
    return {
        "model": name, "target": target, "backend": backend, "latency_guard": latency_guard,
        "params": sum(p.numel() for p in model.parameters()), "fp32_weight_mib": round(fp32 / MIB, 1),
        "baseline_mib": round(baseline / MIB, 1),
        "build_peak_above_baseline_mib": round((high_before - baseline) / MIB, 1),
        "optimize_peak_above_baseline_mib": round((optimize_peak - baseline) / MIB, 1),
        "export_peak_above_baseline_mib": round((export_peak - baseline) / MIB, 1),
        "peak_above_baseline_mib": round((peak - baseline) / MIB, 1),
        "ratio": round((peak - baseline) / fp32, 2), "artifact_mib": round(artifact_bytes / MIB, 1),
        "optimize_s": round(optimize_s, 1), "export_s": round(export_s, 1), "stages": stages,
    }  # fmt: skip


def run_in_fresh_process(
    name: str, target: str, backend: str, latency_guard: bool, cap_gib: float
) -> dict[str, object]:
    command = [sys.executable, __file__, "--one", "--model", name, "--target", target, "--backend", backend,
               "--cap-gib", str(cap_gib)]  # fmt: skip
    if not latency_guard:
        command.append("--no-latency-guard")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0:
        error = json.loads(last)["error"] if last.startswith("{") else (done.stderr or done.stdout)[-2000:]
        return {"model": name, "target": target, "error": error}
    return json.loads(last)


def table(results: list[dict[str, object]]) -> str:
    lines = [
        "| model | target | params | fp32 weights MiB | optimize peak MiB | export peak MiB | "
        "peak above baseline MiB | ratio | <= 4x |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['target']} | error: {str(r['error']).splitlines()[-1]} |")
            continue
        params = f"{int(r['params']) / 1e6:.1f} M"  # type: ignore[call-overload]
        ok = "yes" if float(r["ratio"]) <= GOAL_RATIO else "no"  # type: ignore[arg-type]
        lines.append(
            f"| {r['model']} | {r['target']} | {params} | {r['fp32_weight_mib']} | "
            f"{r['optimize_peak_above_baseline_mib']} | {r['export_peak_above_baseline_mib']} | "
            f"{r['peak_above_baseline_mib']} | {r['ratio']}x | {ok} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODELS, "all"], default="resnet152")
    parser.add_argument("--target", help="default: x86-int8 for CNNs, x86-dynamic-int8 for ViTs")
    parser.add_argument("--backend", choices=["onnx", "torchscript"], default="onnx")
    parser.add_argument("--no-latency-guard", action="store_true", help="export without timing fp32")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--cap-gib", type=float, default=15.0, help="stop a run whose RSS passes this")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    guard = not args.no_latency_guard
    if args.one:
        print(json.dumps(measure_one(args.model, args.target, args.backend, guard, args.cap_gib)))
        return 0
    names = list(MODELS) if args.model == "all" else [args.model]
    results = []
    for name in names:
        target = args.target or DEFAULT_TARGET[name]
        result = run_in_fresh_process(name, target, args.backend, guard, args.cap_gib)
        print(json.dumps(result), file=sys.stderr, flush=True)
        results.append(result)
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
