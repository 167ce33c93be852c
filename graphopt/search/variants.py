"""From a search point to the optimize call that runs it: the caller's call with the point's plan options.

A point's int8 mode picks the pipeline (the target's, or the target's without its int8 passes), its weight
bits the int8 weights (:class:`WeightQuant`, the caller's per-tensor and per-layer settings kept), its prune
ratio and importance a :class:`PruneConfig`, ``exits`` the exit configuration, ``fallbacks`` an
``accuracy_budget`` of half the accuracy goal (QAT and exits may cost the other half), ``improved`` the
accuracy driver alone (``improve_int8`` after ``calibrate``, stopping within that same half, or trying
every step without an accuracy goal) with no layer put back in fp32; training configs
go only to the points that train (pruning recovery, QAT), made quiet when the search is.

A dynamic int8 target (``x86-dynamic-int8``) falls back by itself: its ``quantize_dynamic`` puts layers
back in fp32 until the output cosine on calibration data holds (``min_cosine``). There ``fallbacks`` is
the target as it is and ``on`` the same pass without its fall-back, whatever the goals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from graphopt.data.batches import Batch
from graphopt.data.labelled import labelled_batches
from graphopt.early_exit.config import EarlyExitConfig
from graphopt.errors import ConfigError
from graphopt.passes.improve_int8 import ImproveInt8Options
from graphopt.pipeline.driver import OptimizeCall
from graphopt.pipeline.pass_base import Pass
from graphopt.pipeline.plan import INT8_SLOTS
from graphopt.pipeline.registry import make_pass, pass_class
from graphopt.pruning.config import PruneConfig
from graphopt.quant.options import WeightQuant
from graphopt.quant.scheme import INT4_BITS
from graphopt.recovery.config import RecoveryConfig
from graphopt.search.byte_budget import weight_budget
from graphopt.search.goals import Goals
from graphopt.search.space import SearchConfig, SearchPoint
from graphopt.targets import Target


@dataclasses.dataclass(frozen=True)
class Variants:
    call: OptimizeCall
    config: SearchConfig
    goals: Goals
    spec: Target
    #: An int8 file's estimated bytes besides its weights, for a mixed point's weight budget (byte_budget.py).
    int8_overhead: int = 0

    def of(self, point: SearchPoint) -> OptimizeCall:
        trains = point.prune > 0 or point.int8 != "off"
        dynamic = falls_back_by_itself(self.spec)
        budget = point.int8 == "fallbacks" and not dynamic
        return dataclasses.replace(
            self.call,
            target=self.spec,
            passes=self._passes(point, dynamic),
            prune=self._prune(point),
            early_exit=self.exit_config() if point.exits else None,
            accuracy_budget=self._fallback_budget() if budget else None,
            recovery=self._recovery() if trains else None,
            # the tuning share: fall-backs decide on it, rows show it; without labels no candidate decision
            # reads it (recovery then holds out a share of train_data, as without validation data)
            validation_data=self._labelled_validation(),
            eval_data=self._labelled_validation(),
            weights=self._weights(point),
        )

    def _passes(self, point: SearchPoint, dynamic: bool) -> Any:
        """The target's pipeline (None), without its int8 passes (``off``), or for a dynamic int8 target's
        ``on`` point, with its ``quantize_dynamic`` falling back to nothing."""
        if point.int8 == "off":
            return fp32_passes(self.spec, self.call.passes)
        if point.int8 == "improved":
            return self._improved_passes()
        if dynamic and point.int8 == "on":
            return [make_pass(p.name, _without_fallback(p.name, p.options)) for p in self.spec.passes]
        return None

    def _improved_passes(self) -> list[Pass]:
        """The caller's pipeline (or the target's) with the accuracy driver right after ``calibrate``."""
        given = self.call.passes or [make_pass(p.name, p.options) for p in self.spec.passes]
        passes = [p if isinstance(p, Pass) else make_pass(p) for p in given]
        budget = self._fallback_budget() if self.goals.max_accuracy_drop is not None else None
        at = next((i for i, p in enumerate(passes) if p.name == "calibrate"), None)
        if at is None:
            raise ConfigError(
                "SearchConfig.int8 'improved' runs the accuracy driver after calibrate, and these passes "
                "have no calibrate: add it or leave 'improved' out"
            )
        improve = make_pass("improve_int8", ImproveInt8Options(budget_pp=budget))
        return [*passes[: at + 1], improve, *passes[at + 1 :]]

    def _labelled_validation(self) -> list[Batch] | None:
        data = self.call.validation_data
        return data if labelled_batches(data) else None

    def _weights(self, point: SearchPoint) -> int | WeightQuant | None:
        """The caller's ``weights=``; at the point's width where the search has a weight-bits axis."""
        given = self.call.weights
        if point.int8 == "off" or self.config.weight_bits == (8,):
            return given
        base = given if isinstance(given, WeightQuant) else WeightQuant()
        # the caller's per-group scales apply at 2..4 bits; a byte budget allocates per-channel layers
        groups = base.group_size if point.weight_bits <= INT4_BITS and not point.mixed else None
        base = dataclasses.replace(base, group_size=groups)
        if point.mixed:  # the size goal sets the weight budget (byte_budget.py)
            assert self.goals.max_bytes is not None
            budget = weight_budget(self.goals.max_bytes, self.int8_overhead, point.prune)
            return dataclasses.replace(base, bits=point.weight_bits, max_weight_bytes=max(budget, 1))
        # one width for every layer: a caller's own byte budget is not the axis's
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


def falls_back_by_itself(spec: Target) -> bool:
    """Whether ``spec`` quantizes dynamically with a fall-back of its own (module docstring)."""
    return any(
        p.name == "quantize_dynamic" and getattr(p.options, "min_cosine", None) is not None
        for p in spec.passes
    )


def _without_fallback(name: str, options: Any) -> Any:
    if name != "quantize_dynamic" or options is None:
        return options
    return dataclasses.replace(options, min_cosine=None)


def calibrates(spec: Target, passes: Sequence[str | Pass] | None = None) -> bool:
    """Whether the pipeline (the caller's ``passes``, else ``spec``'s) calibrates static int8, what the
    accuracy driver (``improve_int8``) works on."""
    names = [p if isinstance(p, str) else p.name for p in passes] if passes else [p.name for p in spec.passes]
    return "calibrate" in names


def quantizes(spec: Target) -> bool:
    return any(pass_class(p.name).slot in INT8_SLOTS for p in spec.passes)


def fp32_passes(spec: Target, passes: Any) -> list[Any]:
    """The target's (or the caller's) pipeline without its int8 passes."""
    chosen = passes if passes is not None else [make_pass(p.name, p.options) for p in spec.passes]
    return [p for p in chosen if (make_pass(p) if isinstance(p, str) else p).slot not in INT8_SLOTS]
