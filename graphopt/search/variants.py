"""From a search point to the optimize call that runs it: the caller's call with the point's plan options.

A point's int8 mode picks the pipeline (the target's, or the target's without its int8 passes), its weight
bits the int8 weights (:class:`WeightQuant`, the caller's per-tensor and per-layer settings kept), its prune
ratio and importance a :class:`PruneConfig`, ``exits`` the exit configuration, ``fallbacks`` an
``accuracy_budget`` of half the accuracy goal (QAT and exits may cost the other half); training configs
go only to the points that train (pruning recovery, QAT), made quiet when the search is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from graphopt.early_exit.config import EarlyExitConfig
from graphopt.pipeline.driver import OptimizeCall
from graphopt.pipeline.plan import INT8_SLOTS
from graphopt.pipeline.registry import make_pass, pass_class
from graphopt.pruning.config import PruneConfig
from graphopt.quant.options import WeightQuant
from graphopt.recovery.config import RecoveryConfig
from graphopt.search.goals import Goals
from graphopt.search.space import SearchConfig, SearchPoint
from graphopt.targets import Target


@dataclasses.dataclass(frozen=True)
class Variants:
    call: OptimizeCall
    config: SearchConfig
    goals: Goals
    spec: Target

    def of(self, point: SearchPoint) -> OptimizeCall:
        trains = point.prune > 0 or point.int8 != "off"
        return dataclasses.replace(
            self.call,
            target=self.spec,
            passes=None if point.int8 != "off" else fp32_passes(self.spec, self.call.passes),
            prune=self._prune(point),
            early_exit=self.exit_config() if point.exits else None,
            accuracy_budget=self._fallback_budget() if point.int8 == "fallbacks" else None,
            recovery=self._recovery() if trains else None,
            eval_data=self.call.validation_data,  # the tuning share: fall-backs decide on it, rows show it
            weights=self._weights(point),
        )

    def _weights(self, point: SearchPoint) -> int | WeightQuant | None:
        """The caller's ``weights=``; at the point's width where the search has a weight-bits axis."""
        given = self.call.weights
        if point.int8 == "off" or self.config.weight_bits == (8,):
            return given
        base = given if isinstance(given, WeightQuant) else WeightQuant()
        # the axis sets one width for every layer: a byte budget's mixed widths are the caller's own plan
        return dataclasses.replace(base, bits=point.weight_bits, max_weight_bytes=None)

    @staticmethod
    def _prune(point: SearchPoint) -> PruneConfig | float:
        """The point's pruning. Its int8 mode is the point's own: the search times int8 and fp32 points
        itself, so pruning's int8 probe would only turn an int8 point into a copy of the fp32 one."""
        if not point.prune:
            return 0.0
        return PruneConfig(ratio=point.prune, importance=point.importance, skip_int8_if_slower=False)

    def exit_config(self) -> EarlyExitConfig:
        config = self.config.early_exit or self.call.early_exit or EarlyExitConfig()
        return dataclasses.replace(config, quiet=True) if self.config.quiet else config

    def _recovery(self) -> RecoveryConfig | None:
        recovery = self.call.recovery
        if recovery is None or not self.config.quiet:
            return recovery
        return dataclasses.replace(recovery, quiet=True)  # a quiet search trains quietly too

    def _fallback_budget(self) -> float:
        assert self.goals.max_accuracy_drop is not None
        return self.goals.max_accuracy_drop / 2


def quantizes(spec: Target) -> bool:
    return any(pass_class(p.name).slot in INT8_SLOTS for p in spec.passes)


def fp32_passes(spec: Target, passes: Any) -> list[Any]:
    """The target's (or the caller's) pipeline without its int8 passes."""
    chosen = passes if passes is not None else [make_pass(p.name, p.options) for p in spec.passes]
    return [p for p in chosen if (make_pass(p) if isinstance(p, str) else p).slot not in INT8_SLOTS]
