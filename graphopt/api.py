"""``graphopt.optimize``: the public facade. It builds an :class:`~graphopt.pipeline.driver.OptimizeCall` from
its keywords and runs it with the driver (:mod:`graphopt.pipeline.driver`), or, given goals or a search
configuration, hands it to the search (:mod:`graphopt.search`), which runs each candidate with the same
driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphopt.artifacts.result import OptimizeResult
from graphopt.early_exit.config import EarlyExitConfig
from graphopt.passes.sparsify import SparsifyConfig
from graphopt.pipeline.driver import OptimizeCall, run_call
from graphopt.pipeline.instruments import Instrument
from graphopt.pipeline.pass_base import Pass
from graphopt.pruning.config import PruneConfig
from graphopt.recovery.config import RecoveryConfig
from graphopt.reporting.evaluation import Batch
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
    goals: Goals | None = None,
    search: SearchConfig | None = None,
) -> OptimizeResult:
    """Optimize ``model`` for ``target`` and report every stage.

    ``passes`` replaces the target's pipeline (names and/or Pass instances). ``eval_data`` (an iterable of
    ``(inputs, labels)``) adds accuracy to every row. ``steps > 1`` repeats the pipeline up to a fixed point.
    ``dump_ir`` writes the IR after each pass to ``NNN_<pass>.txt`` in that folder.

    With ``train_data``, a training stage runs after the pipeline: ``qat`` (quantization-aware training) when
    it calibrates int8, else ``recover`` (distillation from the original model) when it has a lossy pass or
    ``recovery`` (a :class:`RecoveryConfig`, used by either stage) is given; unless the pipeline already
    names one of them.

    ``prune`` (a fraction of channels, or a :class:`PruneConfig`) puts a pruning stage first: structured
    channel pruning, BatchNorm re-estimation (on ``calibration_data``, else the inputs of ``train_data``),
    and with ``train_data`` distillation recovery; quantization, if the target has it, follows.

    ``sparsify`` (a fraction of weights, or a :class:`SparsifyConfig`) zeroes the smallest-magnitude weights
    of every conv and linear just before quantization (or last), fine-tuning with the zeros held when
    ``train_data`` is given; later training keeps them zero. Latency does not change (dense kernels); the
    compressed artifact shrinks (``zipped_bytes``).

    ``accuracy_budget`` (percentage points, needs ``eval_data``) keeps the layers most sensitive to int8 in
    fp32 until the drop int8 causes (against the fp32 model that entered quantization, so after pruning
    the pruned one) is within the budget (pass ``accuracy_budget``, right after ``calibrate``); the
    report's ``accuracy_budget`` table says which layers and why.

    ``validation_data`` (labelled batches the model was *not* trained on) is what early exit calibrates its
    thresholds on, so that the accuracy it promises holds on new data; without it a share of
    ``train_data`` is held out instead, and the report warns that the thresholds are optimistic when the
    model was trained on those samples. Recovery and QAT keep their best epoch by it too (all of
    ``train_data`` then trains): a share of ``train_data`` that the original was trained on favours the
    starting point (on Fashion-MNIST, QAT of the calibrated ResNet never beat its start's 94.1 % on such a
    share, so the calibrated start shipped and QAT's training was thrown away, on all 3 seeds).

    ``dynamic_shapes`` names the input dimensions that vary besides the batch (always dynamic), e.g.
    ``{"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}}``: capture keeps them symbolic, the ONNX
    artifact declares them, and the artifact is checked at other sizes of each. Names are identifiers other
    than ``batch`` (dim 0's), each named dim is at least 2 long in the example (torch.export specialises
    size 1), a dim shared by several inputs is declared on each, and one the model's code fixes (a view to a
    constant size, a Linear over it) is refused at capture with the fix.

    ``goals`` (a :class:`~graphopt.search.goals.Goals`: speed-up over ORT fp32, accuracy drop, bytes) and/or
    ``search`` (a :class:`~graphopt.search.space.SearchConfig`) turn the call into a search over the plan
    slots (prune ratio, int8 with or without fp32 fall-backs, early exits, backend): every candidate is
    optimized, exported, timed in its runtime and scored on ``validation_data``; the result is the best
    artifact meeting every goal, or the closest with what it misses, and ``res.search`` holds every
    candidate (:mod:`graphopt.search.engine`).
    """
    call = OptimizeCall(
        model, target, example_inputs, calibration_data, train_data, prune, early_exit, passes,
        eval_data=eval_data, steps=steps, dump_ir=dump_ir, instruments=tuple(instruments), recovery=recovery,
        accuracy_budget=accuracy_budget, sparsify=sparsify, validation_data=validation_data,
        dynamic_shapes=dynamic_shapes,
    )  # fmt: skip
    if goals is None and search is None:
        return run_call(call)
    return search_optimize(call, goals or Goals(), search or SearchConfig())
