"""Structured channel pruning: remove whole channels, coupled groups at a time, so MACs really fall.

The dependency analysis (:mod:`graphopt.pruning.dependency`) finds the units of channels that must go
together and the ones that cannot go (network outputs, ops outside its table, protected layers); importance
scores rank the units, the selection picks ``ratio`` of them under the width constraints, and the surgery
edits modules, parameters and shape literals. Lossy: run ``reestimate_batchnorm`` and ``recover`` after it
(``optimize(prune=...)`` does).

Report: the ``pruning`` table lists every group with its producers, widths before and after, and why any of
its channels were kept (``status``, the sentence; ``blocked``, the kinds of reason). ``stats`` counts the
blocked units by the kind of reason, ``blocked:<kind>`` (``network_output``, ``not_in_table``,
``grouped_conv``, ``group_input_positions``, ``protected``, ...; a unit counts once per kind). Skipped, with
the reason in ``stats``: ``skipped:nothing_prunable``, ``skipped:ratio_zero``.
"""

from __future__ import annotations

import difflib
import itertools

import torch
import torch.fx as fx
from torch import nn

from graphopt.errors import ConfigError
from graphopt.pipeline.pass_base import Pass, PassContext, PassOptions, PassResult
from graphopt.pruning import PruneConfig, analyze, choose, remove_units, unit_scores
from graphopt.pruning.channel_map import BlockReason
from graphopt.pruning.dependency import DependencyGraph, Group
from graphopt.pruning.selection import Selection
from graphopt.reporting.notes import Note

#: Note keys (graphopt.reporting.notes): what tests and tools read instead of the sentences.
NOTHING_PRUNABLE = "prune_channels:nothing_prunable"
NOT_RECOVERED = "prune_channels:not_recovered"
CLAMPED = "prune_channels:clamped"


class PruneChannels(Pass):
    name = "prune_channels"
    slot = "prune"
    description = "Remove the least important channels of every coupled group (structured pruning)."
    exact = False
    Options = PruneConfig
    options: PruneConfig

    def __init__(self, options: PassOptions | None = None, **fields: object):
        super().__init__(options, **fields)
        if self.options.importance == "taylor":
            self.needs = ("train_data",)
        elif self.options.importance == "activation":
            self.needs = ("train_data|calibration_data",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        config = self.options
        if config.ratio == 0:
            return PassResult(gm, modified=False, stats={"skipped:ratio_zero": 1})
        graph = analyze(gm, whole_heads=config.heads == "whole")
        _protect(graph, config.protect)
        groups = graph.groups()
        if not any(g.prunable for g in groups):
            self.context.tables["pruning"] = _table(groups, Selection())
            self.context.notes.append(
                Note(NOTHING_PRUNABLE, "prune_channels: nothing is prunable (see the pruning table for why)")
            )
            stats = {"skipped:nothing_prunable": 1, "groups": len(groups), **_blocked_stats(groups)}
            return PassResult(gm, modified=False, stats=stats)
        train = self.context.train_data if config.importance == "taylor" else None
        samples = (
            _sample_inputs(self.context, config.taylor_batches) if config.importance == "activation" else ()
        )
        selection = choose(groups, unit_scores(graph, config, train, samples), config)
        remove_units(graph, selection.removed)
        if self.context.train_data is None:
            self.context.notes.append(Note(
                NOT_RECOVERED,
                "prune_channels: no train_data given, so accuracy is not recovered (only BatchNorm "
                "statistics are re-estimated); pass train_data=... to fine-tune with distillation",
            ))  # fmt: skip
        self.context.tables["pruning"] = _table(groups, selection)
        self.context.notes.extend(
            _clamped_note(g, config.min_channels) for g in groups if g.index in selection.clamped
        )
        return PassResult(gm, modified=bool(selection.removed), stats=_stats(groups, selection))


def _clamped_note(group: Group, min_channels: int) -> Note:
    """A group that would have lost more channels than ``min_channels`` leaves (facts: ``group``, its index;
    ``layers``, the names in it; ``min_channels``)."""
    text = f"prune_channels: group {group.index} ({_names(group)}) was clamped to min_channels={min_channels}"
    return Note(CLAMPED, text, group=group.index, layers=tuple(group.producers), min_channels=min_channels)


def check_protected_names(names: tuple[str, ...], model: nn.Module) -> None:
    """Raise ConfigError, with close matches, for a protected name that is no module of ``model``."""
    modules = [name for name, _ in model.named_modules() if name]
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, modules, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"PruneConfig.protect names {name!r}, which is not a module of this model{hint}"
            )


def _protect(graph: DependencyGraph, names: tuple[str, ...]) -> None:
    """Block the producers named in ``protect`` (a module, or every producer inside a parent module)."""
    check_protected_names(names, graph.gm)
    for name in names:
        for target in [t for t in graph.producers if t == name or t.startswith(name + ".")]:
            graph.coupling.block_all(
                graph.producers[target].atoms, BlockReason("protected", f"protected ({name})")
            )


def _sample_inputs(context: PassContext, batches: int) -> list[tuple[torch.Tensor, ...]]:
    """Up to ``batches`` input batches for ``importance="activation"``: the training inputs (the data the
    pruned model is recovered on), else the calibration batches."""
    if context.train_data is not None:
        return [inputs for inputs, _ in itertools.islice(context.train_data.batches(32), batches)]
    if context.calibration_data:
        return list(context.calibration_data[:batches])
    raise ConfigError(
        "importance='activation' ranks channels by what they feed the next layers on sample inputs: pass "
        "calibration_data=... or train_data=... (inputs alone are enough)"
    )


def _names(group: Group, limit: int = 3) -> str:
    shown = ", ".join(group.producers[:limit])
    return shown + (f" +{len(group.producers) - limit}" if len(group.producers) > limit else "")


def _table(groups: list[Group], selection: Selection) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for g in groups:
        kept = selection.kept.get(g.index, len(g.units))
        reasons = "; ".join(sorted(g.reasons))
        status = "pruned" if kept < len(g.units) else "kept"
        if g.blocked:
            status += f" ({len(g.blocked)}/{len(g.units)} blocked: {reasons})"
        rows.append({"group": g.index, "producers": _names(g), "channels": f"{len(g.units)} -> {kept}",
                     "status": status, "blocked": tuple(sorted(g.blocked_by_kind()))})  # fmt: skip
    return rows


def _stats(groups: list[Group], selection: Selection) -> dict[str, float]:
    return {
        "groups": len(groups),
        "groups_pruned": sum(1 for g in groups if selection.kept.get(g.index, len(g.units)) < len(g.units)),
        "groups_blocked": sum(1 for g in groups if not g.prunable),
        "units_before": sum(len(g.units) for g in groups),
        "units_removed": len(selection.removed),
        "clamped": len(selection.clamped),
        **_blocked_stats(groups),
    }


def _blocked_stats(groups: list[Group]) -> dict[str, float]:
    """``blocked:<kind>``: how many units each kind of reason kept, over all groups, in a stable order."""
    counts: dict[str, float] = {}
    for group in groups:
        for kind, units in group.blocked_by_kind().items():
            counts[f"blocked:{kind}"] = counts.get(f"blocked:{kind}", 0) + units
    return dict(sorted(counts.items()))
