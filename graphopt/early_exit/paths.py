"""What each path of an exit network costs where it ships: every path timed in the target's runtime.

MACs misjudge exits on a small CPU: per-operator costs (re-layout at branch boundaries, the branch itself,
heads and confidence tests) do not shrink with the MACs, and layers of the same MACs differ in speed.
Measured on fashion_resnet pruned 0.5 with exits at 19 % and 50 % of its MACs (ONNX Runtime 1.32, one
thread, batch 1, AVX2): leaving at the first exit costs 0.36x of the network without exits (its 28x28
stem and first block, 8 channels, are the slowest part per MAC), leaving at the second 0.9x, and the path
through both exits to the end 1.25x. Calibrated on MACs, the second exit looks like half the cost.

So exits are chosen on measured costs: every candidate set of exits is built, each of its paths is forced
(threshold ``-inf`` at its head, ``+inf`` before it; ``+inf`` everywhere for the path to the end), lowered
with the target's backend and timed side by side with the network without exits, by the run's timing
service (:class:`~graphopt.pipeline.services.TimingService`). Weights do not decide which kernels run, so one
timing per path answers for every input that takes it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from graphopt.early_exit.network import EarlyExitNetwork
from graphopt.early_exit.thresholds import NEVER
from graphopt.ir.shapes import propagate_shapes
from graphopt.pipeline.services import TimingService
from graphopt.targets import Target


@dataclass(frozen=True)
class PathTiming:
    runtime: str  # where the paths were timed
    without_exits_ms: float  # the network without exits, timed with them


def forced(network: EarlyExitNetwork, k: int) -> EarlyExitNetwork:
    """A copy of ``network`` in which every input leaves at head ``k`` (``k == len(heads)``: at the end)."""
    copied = copy.deepcopy(network)
    thresholds = torch.full_like(copied.thresholds, NEVER)
    if k < len(thresholds):
        thresholds[k] = -NEVER
    copied.thresholds.copy_(thresholds)
    return copied


def as_graph(network: EarlyExitNetwork, example_inputs: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    """``network`` as the one call of a graph, the form the pass leaves and the backends lower."""
    graph = fx.Graph()
    inputs = [graph.placeholder(f"input_{i}") for i in range(len(example_inputs))]
    root = nn.Module()
    root.early_exit = network
    graph.output(graph.call_module("early_exit", tuple(inputs)))
    gm = fx.GraphModule(root, graph)
    propagate_shapes(gm, example_inputs)
    return gm


def time_paths(
    timing: TimingService,
    target: Target,
    plain: fx.GraphModule,
    networks: Mapping[str, EarlyExitNetwork],
    example_inputs: tuple[torch.Tensor, ...],
) -> tuple[PathTiming, dict[str, list[float]]]:
    """Where they were timed and the milliseconds per call of ``plain`` (the network without exits), and
    of every path of each of ``networks`` (by name: one entry per head, then the path to the end), all
    timed side by side in ``target``'s runtime."""
    models: dict[str, nn.Module] = {"plain": plain}
    for name, network in networks.items():
        for k in range(len(network.heads) + 1):
            models[f"{name}/{k}"] = as_graph(forced(network, k), example_inputs)
    timed = timing.time(target, models, example_inputs)
    ms = timed.ms
    paths = {name: [ms[f"{name}/{k}"] for k in range(len(n.heads) + 1)] for name, n in networks.items()}
    return PathTiming(timed.runtime, ms["plain"]), paths


def path_names(kept: Sequence[int]) -> str:
    """A name for a set of exits (indices into the trained ones)."""
    return "exits " + ",".join(str(k) for k in kept)
