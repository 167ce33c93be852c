"""Typed options of structured channel pruning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from graphopt.errors import ConfigError
from graphopt.pipeline.pass_base import PassOptions

Importance = Literal["l1", "l2", "bn_scale", "taylor", "activation", "random"]
Scope = Literal["local", "global"]
Heads = Literal["whole", "narrow"]


@dataclass(frozen=True)
class PruneConfig(PassOptions):
    """How many channels go, and which.

    - ``ratio``: the fraction of each group's prunable channels to remove (``local``), or of all prunable
      channels ranked together (``global``, scores normalised by their group's mean so groups compare).
    - ``importance``: ``l1`` / ``l2`` magnitude of every weight slice a channel owns (producer rows and
      consumer columns, aggregated over the coupled group), ``bn_scale`` (``|gamma|`` of its BatchNorms),
      ``taylor`` (``|sum w * dL/dw|`` over its weights, first order, needs labelled ``train_data``),
      ``activation`` (the output energy it feeds the layers reading it, on ``train_data`` inputs or else
      ``calibration_data``, no labels needed: the criterion for attention heads), ``random``.
    - ``round_to``: kept widths are rounded up to a multiple (SIMD-friendly); None (the default): the
      target's ``channel_multiple`` inside ``optimize``, 1 when the pass runs on its own; ``min_channels``:
      no group keeps fewer channels.
    - ``protect``: module names whose output channels are never pruned.
    - ``heads``: what an attention loses. ``whole`` (the default): whole heads, Q/K/V rows and the output
      projection's columns of a head together, so the head count falls and every kept head keeps its width
      and its ``1/sqrt(head_dim)`` scale (the kernels' favourite shape). ``narrow``: the same channels of
      every head, so the head count stays and the softmax scale is pinned to the original width.
    - ``skip_int8_if_slower``: on an int8 target with ``train_data``, time the pruned graph as int8 and as
      fp32 in the target's runtime before recovery trains (``probe_int8``); when int8 is not faster, int8
      and QAT are skipped (the latency guard would ship fp32 anyway) and QAT's epochs go to recovery.
      False: quantize and train QAT whatever the timing says.
    """

    ratio: float = 0.3
    importance: Importance = "l2"
    scope: Scope = "local"
    round_to: int | None = None
    #: Set by ``optimize`` when ``round_to`` is the target's multiple rather than the caller's: a group
    #: the rounding would leave unpruned keeps its unrounded width instead (a unit can span several
    #: channels, as in a channel shuffle, so "8 units" may already be a multiple of 8 channels).
    soft_round: bool = False
    min_channels: int = 1
    protect: tuple[str, ...] = ()
    taylor_batches: int = 8
    seed: int = 0
    skip_int8_if_slower: bool = True
    heads: Heads = "whole"

    def __post_init__(self) -> None:
        if (
            isinstance(self.ratio, bool)
            or not isinstance(self.ratio, (int, float))
            or not 0 <= self.ratio < 1
        ):
            raise ConfigError(
                f"prune ratio must be a fraction in [0, 1), got {self.ratio!r}: it is the share of channels "
                "removed (0.5 removes half)"
            )
        if self.importance not in get_args(Importance):
            raise ConfigError(
                f"importance must be one of {', '.join(get_args(Importance))}; got {self.importance!r}"
            )
        if self.heads not in ("whole", "narrow"):
            raise ConfigError(
                f"heads must be 'whole' (remove whole attention heads) or 'narrow' (the same channels of "
                f"every head), got {self.heads!r}"
            )
        if self.scope not in ("local", "global"):
            raise ConfigError(f"scope must be 'local' or 'global', got {self.scope!r}")
        if (
            (self.round_to is not None and self.round_to < 1)
            or self.min_channels < 1
            or self.taylor_batches < 1
        ):
            raise ConfigError(
                f"round_to, min_channels and taylor_batches must be >= 1, got {self.round_to}, "
                f"{self.min_channels}, {self.taylor_batches}"
            )
        if isinstance(self.protect, str):
            raise ConfigError("protect must be a tuple of module names, e.g. protect=('stem.0',)")
