"""Small models and a runner shared by the pass tests."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from graphopt.capture import capture
from graphopt.pass_base import Pass, PassContext
from graphopt.pass_manager import PassManager, PassRecord
from graphopt.zoo import randomize_batchnorm


def captured(model: nn.Module) -> fx.GraphModule:
    """Capture ``model`` in eval mode, with trained-looking BN statistics."""
    randomize_batchnorm(model)
    return capture(model.eval()).gm


def run_pass(pass_: Pass, gm: fx.GraphModule, *inputs: torch.Tensor) -> PassRecord:
    """Run one pass through a PassManager (lint, recompile, numeric check of exact passes)."""
    (record,) = PassManager([pass_]).run(gm, PassContext(example_inputs=inputs))
    return record


def outputs(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(*inputs)


def count_modules(gm: fx.GraphModule, kind: type) -> int:
    return sum(
        1 for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), kind)
    )
