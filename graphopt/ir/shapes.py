"""Shape and dtype propagation into ``node.meta``.

An interpreter runs the graph once on the example inputs and stores, for every node that yields a tensor,
``node.meta["shape"]`` (a tuple of ints), ``node.meta["dtype"]`` and ``node.meta["contiguous"]`` (whether
the tensor was contiguous in memory, which decides if ``.contiguous()`` after it is a no-op); for tuple
outputs it stores the per-element lists ``node.meta["shapes"]`` / ``node.meta["dtypes"]``. Passes read
these instead of re-running the model. The PassManager refreshes them after every pass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from graphopt.reporting.cost import measure_module_macs

META_KEYS = ("shape", "dtype", "contiguous", "shapes", "dtypes", "leaf_macs")


class _ShapeRecorder(fx.Interpreter):
    def call_module(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        module = self.fetch_attr(str(target))
        if next(module.children(), None) is not None:
            # A module with children in the graph is an opaque leaf: measure what runs inside it.
            self._leaf_macs, output = measure_module_macs(module, args, kwargs)
            return output
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        for key in META_KEYS:
            n.meta.pop(key, None)
        if getattr(self, "_leaf_macs", None) is not None:
            n.meta["leaf_macs"], self._leaf_macs = self._leaf_macs, None
        if isinstance(result, torch.Tensor):
            n.meta["shape"] = tuple(result.shape)
            n.meta["dtype"] = result.dtype
            n.meta["contiguous"] = result.is_contiguous()
        elif isinstance(result, (tuple, list)) and all(isinstance(r, torch.Tensor) for r in result):
            n.meta["shapes"] = [tuple(r.shape) for r in result]
            n.meta["dtypes"] = [r.dtype for r in result]
        return result


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> Any:
    """Annotate every node of ``gm`` with its output shape and dtype; return the graph's outputs."""
    with torch.no_grad():
        return _ShapeRecorder(gm).run(*example_inputs)
