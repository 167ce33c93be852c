"""Measuring a model with exits the way it runs: one sample at a time, over a data set.

Its cost depends on the input (an easy sample leaves early), so a latency on the example input says little
and a batched accuracy follows the whole-batch rule instead of the per-sample one. These helpers split
labelled batches into batch-1 samples, score accuracy sample by sample, and time several runners over the
same samples interleaved (each sample through every runner in turn), so a slow patch of the machine hits
all of them alike; the result is the mean per-sample latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from graphopt.early_exit.network import EarlyExitNetwork
from graphopt.evaluation import Batch, accuracy, as_input_tuple


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
    return {name: float(times.mean()) for name, times in sample_latencies(runners, data).items()}


def sample_latencies(runners: dict[str, Callable[..., Any]], data: Sequence[Batch]) -> dict[str, np.ndarray]:
    """Milliseconds of each sample of ``data`` through each runner, interleaved sample by sample."""
    samples = [as_input_tuple(inputs) for inputs, _ in one_by_one(data)]
    spent = {name: np.empty(len(samples)) for name in runners}
    with torch.no_grad():
        for run in runners.values():
            run(*samples[0])  # warm-up
        for i, inputs in enumerate(samples):
            for name, run in runners.items():
                start = time.perf_counter()
                run(*inputs)
                spent[name][i] = 1e3 * (time.perf_counter() - start)
    return spent
