"""Timing spread over fresh processes: the interleaved rounds split across ``processes`` worker processes.

Why: part of a process's speed is settled when it starts (where the allocator puts weights and buffers,
which pages back them, which kernels the libraries choose), and no number of rounds inside that process
samples it. Measured here on ResNet-18 at 224: eager PyTorch's fastest call held within about 3 % across
four copies of the model in one process, and moved 4-7 % from one process to the next, the ratios against
it with it (pyperf runs its benchmarks in many processes for the same reason). Splitting the rounds over
several processes samples that draw instead of betting the run on one; the rounds of every process are
pooled, so the minimum is the fastest call of any process and paired ratios pair within a process.

Each worker (``python -m graphopt.benchmark.workers JOB``) loads the candidates from files (ONNX and
TorchScript artifacts as they are, eager models pickled with ``torch.save``), inherits the parent's pinned
core, uses one thread, warms every candidate up and runs its share of the rounds, interleaved as in one
process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from graphopt.backends import OnnxRunner, TorchScriptRunner
from graphopt.backends.timing import interleaved_rounds
from graphopt.errors import GraphoptError

from .candidates import Candidate, EagerRunner, Runner, bind


class WorkerError(GraphoptError):
    """A timing worker process failed; its output says why."""


def spread_over_processes(
    candidates: list[Candidate],
    inputs: tuple[torch.Tensor, ...],
    *,
    rounds: int,
    calls_per_round: dict[str, int],
    processes: int,
    folder: Path,
    on_share: object = None,
) -> dict[str, list[np.ndarray]]:
    """Per-call milliseconds of every candidate, round by round, from ``processes`` fresh processes that
    each run about ``rounds / processes`` interleaved rounds; ``on_share(rounds_done)`` after each."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(inputs, folder / "inputs.pt")
    specs = [_spec(c, folder, i) for i, c in enumerate(candidates)]
    samples: dict[str, list[np.ndarray]] = {c.row.key: [] for c in candidates}
    for index, share in enumerate(_shares(rounds, processes)):
        job = folder / f"job{index}.json"
        out = folder / f"samples{index}.npz"
        job.write_text(json.dumps({
            "inputs": str(folder / "inputs.pt"), "candidates": specs, "rounds": share,
            "calls_per_round": calls_per_round, "out": str(out),
        }))  # fmt: skip
        done = subprocess.run([sys.executable, "-m", __name__, str(job)], capture_output=True, text=True)
        if done.returncode != 0:
            raise WorkerError(f"timing worker {index} failed (exit {done.returncode}): {done.stderr[-2000:]}")
        with np.load(out) as arrays:
            for spec in specs:
                samples[spec["key"]] += [arrays[f"{spec['slot']}_{r}"] for r in range(share)]
        if callable(on_share):
            on_share(share)
    return samples


def _shares(rounds: int, processes: int) -> list[int]:
    """``rounds`` split as evenly as possible over ``min(processes, rounds)`` processes."""
    n = max(1, min(processes, rounds))
    return [rounds // n + (1 if i < rounds % n else 0) for i in range(n)]


def _spec(candidate: Candidate, folder: Path, slot: int) -> dict[str, object]:
    runner = candidate.runner
    spec: dict[str, object] = {"key": candidate.row.key, "slot": f"c{slot}"}
    if isinstance(runner, OnnxRunner):
        threads = runner.session.get_session_options().intra_op_num_threads
        return spec | {"kind": "onnx", "path": str(runner.path), "threads": threads}
    if isinstance(runner, TorchScriptRunner):
        return spec | {"kind": "torchscript", "path": str(runner.path), "threads": runner.threads}
    path = folder / f"eager{slot}.pt"
    torch.save(runner.model, path)
    return spec | {"kind": "eager", "path": str(path), "channels_last": runner.channels_last}


def _load(spec: dict) -> Runner:
    if spec["kind"] == "onnx":
        return OnnxRunner(spec["path"], threads=spec["threads"])
    if spec["kind"] == "torchscript":
        return TorchScriptRunner(spec["path"], threads=spec["threads"])
    return EagerRunner(torch.load(spec["path"], weights_only=False), channels_last=spec["channels_last"])


def _work(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(1)
    inputs = torch.load(job["inputs"], weights_only=False)
    calls = {spec["slot"]: bind(_load(spec), inputs) for spec in job["candidates"]}
    per_round = {spec["slot"]: job["calls_per_round"][spec["key"]] for spec in job["candidates"]}
    samples = interleaved_rounds(calls, rounds=job["rounds"], calls_per_round=per_round)
    arrays = {f"{slot}_{r}": part for slot, parts in samples.items() for r, part in enumerate(parts)}
    np.savez(job["out"], **arrays)


if __name__ == "__main__":
    _work(sys.argv[1])
