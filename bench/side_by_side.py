"""One table row per artifact from an interleaved timing run: latency, speed-up, worst cosine, file size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from graphopt.reporting.numerics import agreement


def artifact_lines(
    benchmark: Any,
    medians: dict[str, float],
    runners: dict[str, Any],
    paths: dict[str, Path],
    expected: list[Any],
    probes: list[torch.Tensor],
    baseline: str = "ort_fp32",
) -> list[str]:
    """Record each artifact in ``benchmark.extra_info`` and return its printed line, against ``baseline``."""
    base, lines = medians[baseline], []
    for key, ms in medians.items():
        cosine = min(agreement(e, runners[key].run(x)).cosine for e, x in zip(expected, probes, strict=True))
        size = paths[key].stat().st_size
        benchmark.extra_info[key] = {"ms": round(ms, 3), "speedup_vs_ort_fp32": round(base / ms, 3),
                                     "min_cosine": round(cosine, 5), "bytes": size}  # fmt: skip
        lines.append(f"  {key:30s} {ms:8.2f} ms {base / ms:5.2f}x cosine {cosine:.5f} {size / 1e6:6.2f} MB")
    return lines
