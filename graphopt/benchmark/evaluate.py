"""Accuracy and output agreement of every candidate, each run in its own runtime.

- ``accuracy``: top-1 on the labelled held-out split (digits models). A model with early exits, or any file
  traced at batch 1, is scored one sample at a time, the way it runs. A row whose accuracy ``optimize``
  already measured in the candidate's own runtime on the same data (``Candidate.accuracy_measured``) keeps it.
- ``cosine``: the smallest cosine similarity between the candidate's and the original model's outputs over
  the probes (one input each); ``top1``: the fraction of probes whose argmax matches the original's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from graphopt.backends import OnnxRunner
from graphopt.data.batches import Batch
from graphopt.early_exit.measure import per_sample_accuracy
from graphopt.reporting.evaluation import accuracy
from graphopt.reporting.numerics import agreement

from .candidates import Candidate, EagerRunner

Probe = tuple[torch.Tensor, ...]


def probes_of(
    probes: Sequence[Probe] | None, eval_data: Sequence[Batch] | None, count: int = 16
) -> list[Probe]:
    """The given probes, else the first ``count`` held-out samples one by one."""
    if probes is not None:
        return list(probes)
    if not eval_data:
        return []
    inputs = eval_data[0][0]
    first = inputs if isinstance(inputs, torch.Tensor) else inputs[0]
    return [(first[i : i + 1],) for i in range(min(count, len(first)))]


def reference_outputs(model: nn.Module, probes: Sequence[Probe]) -> list[Any]:
    with torch.no_grad():
        return [model(*p) for p in probes]


def evaluate(
    candidate: Candidate,
    probes: Sequence[Probe],
    references: Sequence[Any],
    eval_data: Sequence[Batch] | None,
    *,
    per_sample: bool,
) -> None:
    """Fill the candidate row's accuracy, cosine and top1."""
    row = candidate.row
    if probes:
        matches = [agreement(ref, candidate.run(*p)) for ref, p in zip(references, probes, strict=True)]
        row.cosine = min(m.cosine for m in matches)
        tops = [m.top1 for m in matches if m.top1 is not None]
        row.top1 = sum(tops) / len(tops) if tops else None
    if eval_data is None or (candidate.accuracy_measured and candidate.row.accuracy is not None):
        return
    runner = candidate.runner
    if per_sample:
        row.accuracy = per_sample_accuracy(candidate.run, eval_data)
    elif isinstance(runner, OnnxRunner):
        row.accuracy = accuracy(runner.run_batched, eval_data)
    elif isinstance(runner, EagerRunner):
        row.accuracy = accuracy(runner.run, eval_data)
    else:  # TorchScript files are traced at batch 1
        row.accuracy = per_sample_accuracy(candidate.run, eval_data)
