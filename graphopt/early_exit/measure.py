"""Measuring a model with exits the way it runs: one sample at a time, over a data set.

Its cost depends on the input (an easy sample leaves early), so a latency on the example input says little
and a batched accuracy follows the whole-batch rule instead of the per-sample one. These helpers split
labelled batches into batch-1 samples, score accuracy sample by sample, and time several runners over the
same samples interleaved block by block (a block of samples through every runner in turn), so a slow patch
of the machine hits all of them alike; the result is the mean per-sample latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from graphopt.data.batches import Batch, as_input_tuple
from graphopt.early_exit.network import EarlyExitNetwork
from graphopt.reporting.evaluation import accuracy


def has_exits(model: nn.Module) -> bool:
    return any(isinstance(m, EarlyExitNetwork) for m in model.modules())


def one_by_one(data: Sequence[Batch]) -> list[Batch]:
    """Every sample of ``data`` as its own batch of one."""
    samples: list[Batch] = []
    for inputs, labels in data:
        tensors = as_input_tuple(inputs)
        samples += [(tuple(t[i : i + 1] for t in tensors), labels[i : i + 1]) for i in range(len(labels))]
    return samples


def per_sample_accuracy(predict: Callable[..., Any], data: Sequence[Batch]) -> float:
    return accuracy(predict, one_by_one(data))


def mean_latencies(runners: dict[str, Callable[..., Any]], data: Sequence[Batch]) -> dict[str, float]:
    """Mean milliseconds per sample for each runner, over every sample of ``data``, interleaved."""
    return sample_mean_latencies(runners, [as_input_tuple(inputs) for inputs, _ in one_by_one(data)])


def sample_mean_latencies(
    runners: dict[str, Callable[..., Any]], samples: Sequence[tuple[torch.Tensor, ...]], passes: int = 1
) -> dict[str, float]:
    """Mean milliseconds per sample for each runner over ``samples`` (batch-1 input tuples), interleaved;
    with ``passes > 1`` the median of the passes' means (a slow patch of the machine spoils one pass)."""
    calls = {name: [partial(run, *sample) for sample in samples] for name, run in runners.items()}
    with torch.no_grad():
        passes_ms = [interleaved_per_sample(calls) for _ in range(passes)]
    means = [{name: float(spent.mean()) for name, spent in times.items()} for times in passes_ms]
    return {name: float(np.median([m[name] for m in means])) for name in runners}


#: Samples per runner per block of :func:`interleaved_per_sample`: a block of 256 batch-1 calls of a small
#: network takes tens of milliseconds, short against a slow patch of a shared machine.
BLOCK = 256


def interleaved_per_sample(
    calls: dict[str, list[Callable[[], object]]], block: int = BLOCK
) -> dict[str, np.ndarray]:
    """Milliseconds of each call, in interleaved blocks: block ``j`` of every runner's calls (the same
    share of each runner's list; lists may differ in length) runs, runner after runner, before block
    ``j + 1``, so a slow patch of the machine hits all runners alike. Each runner's first call is made
    once untimed (warm-up).

    Blocks, not one sample through every runner in turn: a call that follows another runner's finds the
    caches holding that runner's weights and code, and the cost of refilling them falls on every call,
    so the per-sample means rise and their ratios flatten. Measured on fashion_resnet pruned 0.5 with two
    exits against the same network without exits (onnxruntime, one thread, batch 1, 3,000 test images,
    AVX2): sample by sample with the eager original between them 0.292 vs 0.303 ms (0.96x); sample by
    sample, the two alone, 0.161 vs 0.236 ms (0.68x); each over all images by itself 0.140 vs 0.216 ms
    (0.65x), the way a deployed model runs image after image.
    """
    for bound in calls.values():
        bound[0]()
    blocks = max(1, -(-max(len(bound) for bound in calls.values()) // block))
    times = {name: np.empty(len(bound)) for name, bound in calls.items()}
    for j in range(blocks):
        for name, bound in calls.items():
            spent = times[name]
            for i in range(j * len(bound) // blocks, (j + 1) * len(bound) // blocks):
                start = time.perf_counter()
                bound[i]()
                spent[i] = 1e3 * (time.perf_counter() - start)
    return times
