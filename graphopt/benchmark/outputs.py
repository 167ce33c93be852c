"""Where a benchmark result goes: ``bench.json`` (versioned schema), ``bench.md`` and ``bench.png``."""

from __future__ import annotations

from pathlib import Path

from .plot import plot as plot_png
from .render import to_markdown
from .schema import BenchResult


def write_outputs(result: BenchResult, out_dir: Path, *, plot: bool) -> dict[str, Path]:
    """Write the result files into ``out_dir`` (the PNG only when ``plot``); return them by format."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md"}
    paths["json"].write_text(result.to_json())
    paths["markdown"].write_text(to_markdown(result) + "\n")
    if plot:
        paths["png"] = plot_png(result, out_dir / "bench.png")
    return paths
