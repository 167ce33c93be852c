"""Where a benchmark result goes: ``bench.json`` (versioned schema), ``bench.md`` and ``bench.png``."""

from __future__ import annotations

from pathlib import Path

from graphopt.artifacts.destination import save_file
from graphopt.errors import WriteError

from .plot import plot as plot_png
from .render import to_markdown
from .schema import BenchResult


def write_outputs(result: BenchResult, out_dir: Path, *, plot: bool) -> dict[str, Path]:
    """Write the result files into ``out_dir`` (the PNG only when ``plot``); return them by format."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md"}
    save_file(paths["json"], result.to_json(), "bench JSON", WriteError)
    save_file(paths["markdown"], to_markdown(result) + "\n", "bench Markdown", WriteError)
    if plot:
        paths["png"] = plot_png(result, out_dir / "bench.png")
    return paths
