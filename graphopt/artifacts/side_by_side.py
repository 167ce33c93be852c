"""Models lowered by one backend and timed side by side, in the runtime that will run the artifact.

The latency guard (int8 artifact against its fp32 twin, at export) and the int8 probe (the pruned graph as
int8 and as fp32, before any training: ``probe_int8``) both ask the same question, "which of these is
faster where it will ship?", and answer it here: every model is lowered with the target's backend
settings into a temporary folder, loaded by the backend's runner with the target's threads, and timed
batch 1 in interleaved rounds (a slow patch of a shared machine hits every model of a round alike), on
one pinned core (the caller's cores come back afterwards: training around it keeps them). What a round
times is the runner's pre-bound call where it has one (:func:`bound_call`: the inputs converted once).
A backend whose runners give an estimate instead (``estimated_ms``: an NPU compiler's cost model, such as
Vela for Ethos-U) answers with the estimate: nothing here can run the NPU, and timing the CPU stand-in
would answer another question.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphopt.backends import Backend
from graphopt.backends.timing import calls_for, edge_timing, interleaved_medians
from graphopt.data.dims import DynamicDims
from graphopt.early_exit.measure import sample_mean_latencies
from graphopt.targets import BackendSettings

#: Each interleaved round runs every model for about this long; five rounds, median of round medians.
ROUND_MS = 50
ROUNDS = 5


def time_side_by_side(
    backend: Backend,
    settings: BackendSettings,
    models: Mapping[str, nn.Module],
    example_inputs: tuple[torch.Tensor, ...],
    *,
    dynamic: DynamicDims | None = None,
    samples: Sequence[tuple[torch.Tensor, ...]] = (),
) -> dict[str, float]:
    """Milliseconds per call of each of ``models`` lowered by ``backend``: the median of interleaved
    rounds on ``example_inputs``, or, given ``samples`` (batch-1 input tuples; an early-exit model's cost
    depends on its input), the mean per sample, each sample through every model in turn, median of 3
    passes."""
    known = _costs_without_lowering(backend, models)
    with tempfile.TemporaryDirectory() as tmp, edge_timing(settings.threads):
        runners = {name: _load(backend, settings, model, example_inputs, Path(tmp) / name, dynamic)
                   for name, model in models.items() if name not in known}  # fmt: skip
        if all(hasattr(r, "estimated_ms") for r in runners.values()):  # a cost model (Ethos-U: Vela)
            return {name: known[name] if name in known else runners[name].estimated_ms() for name in models}
        if samples:
            return sample_mean_latencies({name: r.run for name, r in runners.items()}, samples, passes=3)
        calls = {name: bound_call(r, example_inputs) for name, r in runners.items()}
        per_round = min(calls_for(call, round_ms=ROUND_MS) for call in calls.values())
        return interleaved_medians(calls, rounds=ROUNDS, calls_per_round=per_round)


def bound_call(runner: Any, inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
    """What a round times: the runner's pre-bound call where it has one (``bind``: LiteRT, Ethos-U's LiteRT
    stand-in, ExecuTorch), whose inputs are converted (LiteRT: quantized) and set once, so that what is
    timed is the interpreter's invoke, as the runner's own ``time`` does; else ``run`` on the inputs."""
    bind = getattr(runner, "bind", None)
    return bind(inputs) if bind is not None else lambda: runner.run(*inputs)


def _costs_without_lowering(backend: Backend, models: Mapping[str, nn.Module]) -> dict[str, float]:
    """The costs a cost-model backend's runner knows before lowering (Ethos-U: ``inf`` for an fp32 model,
    which no NPU runs), by model name; timed runners know nothing before they run."""
    cost_of = getattr(backend.runner, "cost_without_lowering", None)
    costs = {name: cost_of(model) for name, model in models.items()} if cost_of else {}
    return {name: cost for name, cost in costs.items() if cost is not None}


def lower_with(
    backend: Backend,
    settings: BackendSettings,
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    dynamic: DynamicDims | None = None,
) -> Path:
    """``model`` lowered by ``backend`` to ``path`` with the target's settings (all of them: LiteRT reads
    ``integer_io``, Ethos-U the NPU of ``ethos_u``): what export writes, and so what the guard and the probe
    time."""
    return backend.lower(model, example_inputs, path, opset=settings.opset, engine=settings.torch_engine,
                         dynamic=dynamic or DynamicDims(), settings=settings)  # fmt: skip


def _load(
    backend: Backend,
    settings: BackendSettings,
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    stem: Path,
    dynamic: DynamicDims | None,
) -> Any:
    """``model`` lowered to ``stem`` + the backend's suffix and loaded by its runner."""
    path = lower_with(backend, settings, model, example_inputs, stem.with_suffix(backend.suffix), dynamic)
    return backend.runner(path, threads=settings.threads)
