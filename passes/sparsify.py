"""Unstructured sparsity: zero the smallest-magnitude weights of every conv and linear, fine-tune with the
zeros held (masks), and leave them zero for every later stage.

Math and schedule: :mod:`graphopt.pruning.sparsity`. With ``train_data``, each step of the schedule is
followed by distillation from the original model (``recovery``, masks kept), and the pass marks the IR
(``graphopt.ir.graph.KEEP_ZERO_WEIGHTS``) so that later training (``recover``, ``qat``) keeps the zeros too.
The masks are the zeros themselves: nothing extra is stored, exported or left to remove.

Honest accounting in the report: latency is unchanged (dense kernels multiply zeros); ``sparse_macs_share``
is the share of MACs a sparse kernel would still do, the artifact row gives ``zipped_bytes``.

Skipped, with the reason: ``skipped:nothing_eligible`` (no conv or linear outside ``dense``),
``skipped:already_sparse`` (as many zeros as asked for already, and no training).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch.fx as fx
from torch import nn

from graphopt.errors import ConfigError
from graphopt.ir.graph import KEEP_ZERO_WEIGHTS, set_ir_fact
from graphopt.pipeline.pass_base import Pass, PassOptions, PassResult
from graphopt.pruning.sparsity import magnitude_masks, schedule, zero_fraction
from graphopt.recovery.config import RecoveryConfig
from graphopt.reporting.cost import node_macs
from graphopt.reporting.notes import Note

ELIGIBLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

#: Note keys (graphopt.reporting.notes): what tests and tools read instead of the sentences.
NOT_FINE_TUNED = "sparsify:not_fine_tuned"
DENSE_KERNELS = "sparsify:dense_kernels"


@dataclass(frozen=True)
class SparsifyConfig(PassOptions):
    """``sparsity``: fraction of eligible weights zeroed, in [0, 1). ``scope``: rank globally or per layer.
    ``steps``: the gradual schedule's steps (1 = one shot). ``recovery``: fine-tuning after each step (only
    with ``train_data``). ``dense``: layer names left dense (e.g. a tiny first conv)."""

    sparsity: float = 0.5
    scope: Literal["global", "local"] = "global"
    steps: int = 1
    recovery: RecoveryConfig = field(default_factory=lambda: RecoveryConfig(epochs=5))
    dense: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ConfigError(f"sparsity must be a fraction in [0, 1), got {self.sparsity!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be a fraction in [0, 1), got {self.sparsity}")
        if self.scope not in ("global", "local"):
            raise ConfigError(f"scope must be 'global' or 'local', got {self.scope!r}")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")


class Sparsify(Pass):
    name = "sparsify"
    slot = "sparsify"
    description = "Zero the smallest-magnitude weights (unstructured sparsity), fine-tune with zeros kept."
    exact = False
    Options = SparsifyConfig

    def call(self, gm: fx.GraphModule) -> PassResult:
        config, context = self.options, self.context
        layers = {
            name: m for name, m in gm.named_modules() if isinstance(m, ELIGIBLE) and name not in config.dense
        }
        if not layers or config.sparsity == 0:
            return PassResult(gm, modified=False, stats={"skipped:nothing_eligible": 1} if not layers else {})
        data = context.train_data
        if data is None:
            context.notes.append(Note(
                NOT_FINE_TUNED,
                "sparsify: no train_data given, so the zeroed weights are not recovered by fine-tuning",
            ))  # fmt: skip
        recovery = replace(config.recovery, keep_zero_weights=True)
        zeros_before = sum(int((m.weight == 0).sum()) for m in layers.values())
        for step, target in enumerate(schedule(config.sparsity, config.steps), start=1):
            weights = [m.weight for m in layers.values()]
            for weight, mask in zip(weights, magnitude_masks(weights, target, config.scope), strict=True):
                weight.data.mul_(mask)
            if data is not None:
                context.training.fit(
                    gm, context.teacher, data, recovery, desc=f"sparsify {step}/{config.steps}"
                )
        set_ir_fact(gm, KEEP_ZERO_WEIGHTS, True)
        table, stats = _accounting(gm, layers)
        if data is None and sum(int((m.weight == 0).sum()) for m in layers.values()) == zeros_before:
            return PassResult(gm, modified=False, stats={**stats, "skipped:already_sparse": 1})
        context.tables["sparsity"] = table
        context.notes.append(Note(
            DENSE_KERNELS,
            "sparsify: dense kernels multiply zeros at full cost, so latency does not change; a sparse "
            f"kernel would do {stats['sparse_macs_share']:.0%} of the MACs, and zeros shrink the compressed "
            "artifact (zipped_bytes on the artifact row)",
            sparse_macs_share=stats["sparse_macs_share"],
        ))  # fmt: skip
        return PassResult(gm, modified=True, stats=stats)


def _accounting(gm: fx.GraphModule, layers: dict[str, nn.Module]) -> tuple[list[dict[str, object]], dict]:
    """Per layer: weights, zero share, MACs and MACs a sparse kernel would skip; and the totals."""
    nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in layers]
    macs = {n.target: node_macs(gm, n) for n in nodes}
    table, total_weights, total_zeros, total_macs, kept_macs = [], 0, 0, 0, 0.0
    for name, layer in layers.items():
        zeros = zero_fraction(layer.weight)
        layer_macs = macs.get(name, 0)
        table.append({"layer": name, "weights": layer.weight.numel(), "zero": f"{zeros:.1%}",
                      "macs": layer_macs, "sparse_macs": round(layer_macs * (1 - zeros))})  # fmt: skip
        total_weights += layer.weight.numel()
        total_zeros += round(zeros * layer.weight.numel())
        total_macs += layer_macs
        kept_macs += layer_macs * (1 - zeros)
    stats = {
        "sparsity": round(total_zeros / total_weights, 4),
        "layers": len(layers),
        "sparse_macs_share": round(kept_macs / total_macs, 4) if total_macs else 1.0,
    }
    return table, stats
