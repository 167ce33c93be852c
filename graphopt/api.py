"""``graphopt.optimize``: the public facade. It builds an :class:`~graphopt.pipeline.driver.OptimizeCall` from
its keywords and runs it with the driver (:mod:`graphopt.pipeline.driver`), or, given goals or a search
configuration, hands it to the search (:mod:`graphopt.search`), which runs each candidate with the same
driver. It has no branch per option: what each keyword is, means and becomes is declared once in
:mod:`graphopt.call_options`, and the call's fields are taken from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphopt.artifacts.result import OptimizeResult
from graphopt.call_options import call_keywords, docstring_args
from graphopt.data.batches import Batch
from graphopt.early_exit.config import EarlyExitConfig
from graphopt.passes.sparsify import SparsifyConfig
from graphopt.pipeline.driver import OptimizeCall, run_call
from graphopt.pipeline.instruments import Instrument
from graphopt.pipeline.pass_base import Pass
from graphopt.pruning.config import PruneConfig
from graphopt.quant.options import WeightQuant
from graphopt.recovery.config import RecoveryConfig
from graphopt.search import search_optimize
from graphopt.search.goals import Goals
from graphopt.search.space import SearchConfig
from graphopt.targets import Target


def optimize(
    model: nn.Module,
    target: str | Target = "generic-fp32",
    example_inputs: tuple[torch.Tensor, ...] | None = None,
    calibration_data: Iterable[Any] | None = None,
    train_data: Iterable[Any] | None = None,
    prune: float | PruneConfig = 0.0,
    early_exit: EarlyExitConfig | None = None,
    passes: Sequence[str | Pass] | None = None,
    *,
    eval_data: Iterable[Batch] | None = None,
    steps: int = 1,
    dump_ir: str | Path | None = None,
    instruments: Sequence[Instrument] = (),
    recovery: RecoveryConfig | None = None,
    accuracy_budget: float | None = None,
    sparsify: float | SparsifyConfig = 0.0,
    validation_data: Iterable[Batch] | None = None,
    dynamic_shapes: Mapping[str | int, Mapping[int, str]] | Sequence[Mapping[int, str]] | None = None,
    weights: int | WeightQuant | None = None,
    goals: Goals | None = None,
    search: SearchConfig | None = None,
) -> OptimizeResult:
    """Optimize ``model`` for ``target`` and report every stage: ``res.model``, ``res.report``,
    ``res.plan`` (what ran, slot by slot), ``res.export(path)``.

    Every option is declared once in :mod:`graphopt.call_options` (type, default, doc, plan rule, CLI flag,
    bench token); the entries below are built from it.

    Args:
        model: the trained ``torch.nn.Module``; never mutated (graphopt works on a private copy).
        {options}
    """
    given = dict(locals())  # the first statement: exactly the keywords above, by name
    call = OptimizeCall(model, **call_keywords(given))
    if goals is None and search is None:
        return run_call(call)
    return search_optimize(call, goals or Goals(), search or SearchConfig())


# The Args entries come from the registry, so the docstring cannot drift from the options (a test holds the
# signature to the registry too).
optimize.__doc__ = (optimize.__doc__ or "").replace("        {options}", docstring_args(indent="        "))
