"""Benchmarks a user can trust: a model through graphopt pipelines and through the tools people use instead,
timed side by side on one pinned core, with the machine stated and the result written as JSON, Markdown and
a PNG plot. ``graphopt bench`` on the command line; :func:`run_bench` from Python."""

from __future__ import annotations

from .compare import Comparison, compare_results
from .machine import MachineFacts, machine_facts
from .models import BenchModel, known_models, load_bench_model
from .pipelines import Pipeline, parse_pipeline
from .render import to_markdown, to_text
from .runner import BenchConfig, run_bench
from .schema import SCHEMA, BenchError, BenchResult, BenchRow

__all__ = [
    "SCHEMA",
    "BenchConfig",
    "BenchError",
    "BenchModel",
    "BenchResult",
    "BenchRow",
    "Comparison",
    "MachineFacts",
    "Pipeline",
    "compare_results",
    "known_models",
    "load_bench_model",
    "machine_facts",
    "parse_pipeline",
    "run_bench",
    "to_markdown",
    "to_text",
]
