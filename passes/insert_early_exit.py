"""Early exit: cut the network at chosen points, attach exit heads, train them, calibrate their thresholds.

Annotate, then insert: :func:`~graphopt.early_exit.segments.find_cuts` marks the nodes every path goes
through, the config picks some (names, or MAC fractions), then one rewrite replaces the graph by a call to
an :class:`~graphopt.early_exit.network.EarlyExitNetwork` holding the backbone segments, a head per exit
and the ``torch.cond`` branch between them. The heads train with the backbone frozen (labels + distillation
from the final output) and the thresholds are calibrated on held-out labelled data (``validation_data``,
else a share of ``train_data``) to minimise the expected cost per sample with the expected accuracy drop
on new data within the budget. The cost is each exit path's latency measured in the target's runtime
(:mod:`~graphopt.early_exit.paths`), and the subset of the trained exits that minimises it is kept
(:mod:`~graphopt.early_exit.selection`); or MACs (``cost="macs"``, or when the runtime cannot be timed
here), keeping every exit. Lossy by nature; with every threshold at +inf it computes exactly the original
graph.

Report: the ``early_exit`` table lists every kept exit with its threshold, exit rate, accuracy of the
samples it takes, MACs per sample there and, when timed, milliseconds; ``stats`` hold the expected MACs
(and milliseconds against the network without exits), the held-out accuracy with and without exits and the
harm (held-out samples the exits get wrong that the network without them gets right). Needs
``train_data``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from graphopt.data.labelled import LabelledTensors
from graphopt.early_exit.config import EarlyExitConfig
from graphopt.early_exit.network import EarlyExitNetwork, exit_head
from graphopt.early_exit.paths import PathTiming, path_names, time_paths
from graphopt.early_exit.reporting import disabled_note, exit_table, timing_note, timing_stats
from graphopt.early_exit.segments import Cut, choose_cuts, find_cuts, split_at
from graphopt.early_exit.selection import Candidate, ExitChoice, choose_exits, exit_subsets
from graphopt.early_exit.thresholds import NEVER
from graphopt.early_exit.training import cached_features
from graphopt.errors import ConfigError, GraphoptError, InvalidInputError
from graphopt.ir.graph import shape_of
from graphopt.ir.keys import EXPECTED_MACS_SHARE
from graphopt.ir.shapes import propagate_shapes
from graphopt.pipeline.pass_base import Pass, PassResult
from graphopt.reporting.cost import count_macs, measure_module_macs
from graphopt.reporting.notes import Note
from graphopt.targets import Target, resolve_target

#: Note keys (graphopt.reporting.notes; the exit timing notes' are in graphopt.early_exit.reporting).
COSTED_IN_MACS = "insert_early_exit:costed_in_macs"
HELD_OUT_OF_TRAIN_DATA = "insert_early_exit:held_out_of_train_data"


@dataclass
class TrainedExits:
    cuts: list[Cut]  # where the heads sit
    network: EarlyExitNetwork  # the backbone cut there, with every trained head
    logits: list[torch.Tensor]  # on the held-out data: each head's, then the final classifier's
    labels: torch.Tensor  # of the held-out data
    reference: torch.Tensor  # per held-out sample: is the network without exits right
    stats: dict[str, object]  # of head training


class InsertEarlyExit(Pass):
    name = "insert_early_exit"
    slot = "exits"
    description = (
        "Attach exit heads at cut points, train them, calibrate confidence thresholds (needs train_data)."
    )
    exact = False
    Options = EarlyExitConfig
    options: EarlyExitConfig
    needs = ("train_data",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        config, context = self.options, self.context
        trained = self._train_exits(gm)
        candidates, timing = self._candidates(gm, trained.cuts, trained.network)
        choice, choices = choose_exits(
            candidates, trained.logits, trained.labels, config.accuracy_budget, config.criterion,
            trained.reference,
        )  # fmt: skip
        routing = choice.routing
        stats = {
            **trained.stats,
            "exits": len(choice.kept),
            "exits_trained": len(trained.cuts),
            "heldout_samples": len(trained.labels),
            "heldout_accuracy": round(routing.accuracy, 4),
            "heldout_accuracy_without_exits": round(float(trained.reference.float().mean()), 4),
            "heldout_harm": routing.harm,
        }
        if timing is not None:
            stats.update(timing_stats(routing, timing))
            context.notes.append(timing_note(trained.cuts, choice, timing))
        if all(t == NEVER for c in choices for t in c.routing.thresholds):
            context.notes.append(disabled_note(len(trained.labels), config.accuracy_budget))
        if choice.network is None:  # timed: the network without exits is the fastest
            return PassResult(gm, modified=False, stats={**stats, EXPECTED_MACS_SHARE: 1.0})
        stats[EXPECTED_MACS_SHARE] = self._install(gm, trained, choice, timing)
        return PassResult(gm, modified=True, stats=stats)

    def _train_exits(self, gm: fx.GraphModule) -> TrainedExits:
        """Heads at the chosen cuts, trained on the frozen backbone (and jointly with it when asked), and
        every head's and the final classifier's logits on the held-out data."""
        config = self.options
        classes = classifier_width(gm)
        cuts, total = find_cuts(gm)
        chosen = choose_cuts(cuts, total, config.exits, config.fractions)
        with torch.random.fork_rng():  # seeded: the same heads whatever ran before in this process
            torch.manual_seed(config.seed)
            heads = [exit_head(c.channels, classes, config.head) for c in chosen]
        network = EarlyExitNetwork(split_at(gm, chosen), heads, config.criterion)
        train, held_out = self._training_and_held_out(config)
        held_out_features = cached_features(network, held_out)  # the backbone as given
        reference = held_out_features[-1].argmax(-1) == held_out.labels  # the network without exits
        stats = self.context.training.train_exit_heads(network, train, config)
        if config.joint_epochs:  # the backbone changed: its held-out features too
            stats.update(self.context.training.fine_tune_exits(network, train, config))
            held_out_features = cached_features(network, held_out)
        with torch.no_grad():
            exits = [h(f) for h, f in zip(network.heads, held_out_features[:-1], strict=True)]
        logits = [*exits, held_out_features[-1]]
        return TrainedExits(chosen, network, logits, held_out.labels, reference, stats)

    def _install(
        self,
        gm: fx.GraphModule,
        trained: TrainedExits,
        choice: ExitChoice,
        timing: PathTiming | None,
    ) -> float:
        """Put the network ``choice`` keeps in ``gm`` with its thresholds and report its exits; return its
        expected share of the MACs."""
        network, routing = choice.network, choice.routing
        assert network is not None  # the caller returns early when no exits are kept
        network.thresholds.copy_(torch.tensor(routing.thresholds))
        # costed in MACs, the choice already holds them; timed, its costs are milliseconds
        macs = choice.costs if timing is None else _macs_per_exit(network, self.context.example_inputs)
        logits = [trained.logits[k] for k in choice.kept] + [trained.logits[-1]]
        _replace_graph(gm, network)
        self.context.tables["early_exit"] = exit_table(
            [trained.cuts[k] for k in choice.kept], routing, logits, trained.labels, macs,
            choice.costs if timing is not None else None,
        )  # fmt: skip
        return round(routing.mean_cost(macs) / macs[-1], 4)

    def _candidates(
        self, gm: fx.GraphModule, chosen: list[Cut], network: EarlyExitNetwork
    ) -> tuple[list[Candidate], PathTiming | None]:
        """The exit sets to calibrate, each with its cost per path, and where they were timed: every
        subset timed in the target's runtime, or the whole set costed in MACs (with ``cost="macs"``, or a
        note saying why the runtime could not be timed)."""
        config, inputs = self.options, self.context.example_inputs
        whole = tuple(range(len(chosen)))
        target, runtime = self._timed_target() if config.cost == "runtime" else (None, "cost='macs'")
        if target is not None:
            # joint fine-tuning changed the segments: a subset re-cut from the graph would not hold them
            subsets = [whole] if config.joint_epochs else exit_subsets(len(chosen))
            networks = {
                path_names(s): network if s == whole else _subset(gm, chosen, network, s) for s in subsets
            }
            try:
                timing, paths = time_paths(self.context.timing, target, gm, networks, inputs)
            except GraphoptError as error:
                runtime = f"the exit network could not be timed ({error})"
            else:
                timed = [(s, networks[path_names(s)], paths[path_names(s)]) for s in subsets]
                return [*timed, ((), None, [timing.without_exits_ms])], timing  # last: no exits at all
        if config.cost == "runtime":
            self.context.notes.append(
                Note(COSTED_IN_MACS, f"insert_early_exit: exits costed in MACs: {runtime}", why=runtime)
            )
        return [(whole, network, _macs_per_exit(network, inputs))], None

    def _timed_target(self) -> tuple[Target | None, str]:
        """The target whose runtime times the exit paths (the config's, else the run's: ``context.target``),
        or None and why it cannot."""
        named = self.options.target
        if named is None or isinstance(named, Target) or named == self.context.target.name:
            target = named if isinstance(named, Target) else self.context.target
        else:  # a preset the caller named on the config itself (the plan fills in the run's Target object)
            try:
                target = resolve_target(named)
            except ConfigError as error:
                return None, str(error)
        unavailable = self.context.timing.unavailable(target)
        return (None, unavailable) if unavailable is not None else (target, "")

    def _training_and_held_out(self, config: EarlyExitConfig) -> tuple[LabelledTensors, LabelledTensors]:
        """Heads train on ``train_data``; thresholds calibrate on ``validation_data``, or without it on a
        held-out share of ``train_data`` (with a report note: the model may have seen those samples)."""
        context = self.context
        validation = context.validation_data
        if validation is not None:
            return context.train_data, validation
        train, held_out = _split(context.train_data, config)
        context.notes.append(Note(
            HELD_OUT_OF_TRAIN_DATA,
            f"insert_early_exit: thresholds calibrated on {len(held_out)} samples held out of train_data "
            "(no validation_data given); if the model was trained on them, its confidence there is higher "
            "than on new data and the accuracy drop on new data can exceed the budget: pass "
            "validation_data=... (labelled batches the model never saw)",
            samples=len(held_out),
        ))  # fmt: skip
        return train, held_out


def check_classifier_output(output: object) -> None:
    """Raise InvalidInputError unless ``output`` is one ``[batch, classes]`` tensor."""
    if not (isinstance(output, torch.Tensor) and output.dim() == 2):
        what = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise InvalidInputError(
            "early exit needs a classifier-like model whose output is one [batch, classes] tensor of logits; "
            f"this model returns {what}"
        )


def classifier_width(gm: fx.GraphModule) -> int:
    """The number of classes: the output must be one ``[N, classes]`` tensor."""
    (output,) = [n for n in gm.graph.nodes if n.op == "output"]
    value = output.args[0]
    shape = shape_of(value)
    if not isinstance(value, fx.Node) or shape is None or len(shape) != 2:
        raise InvalidInputError(
            "early exit needs a classifier-like model whose output is one [batch, classes] tensor; this "
            f"model returns {shape if shape is not None else type(value).__name__}"
        )
    return shape[1]


def _split(data: LabelledTensors, config: EarlyExitConfig) -> tuple[LabelledTensors, LabelledTensors]:
    """Heads train on a seeded ``1 - holdout_fraction`` of ``data`` (``floor``), thresholds calibrate on the
    rest. Not :func:`~graphopt.data.labelled.split_validation`: that one holds out ``round(share * n)``
    samples from the other end of the permutation, and the reported runs of early exit were made with
    these held-out samples."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed))
    cut = int(len(data) * (1 - config.holdout_fraction))
    if cut < 1 or cut >= len(data):
        raise InvalidInputError(
            f"train_data has {len(data)} samples: too few to train heads and hold some out; give more "
            "labelled samples, or validation_data=... to calibrate the thresholds on"
        )
    return data.subset(order[:cut]), data.subset(order[cut:])


def _macs_per_exit(network: EarlyExitNetwork, inputs: tuple[torch.Tensor, ...]) -> list[float]:
    """MACs per sample when leaving at each head (backbone so far + heads so far), then for the full path."""
    batch = inputs[0].shape[0]
    costs, spent, args = [], 0.0, inputs
    for k, segment in enumerate(network.segments):
        propagate_shapes(segment, args)
        spent += count_macs(segment) / batch
        with torch.no_grad():
            features = segment(*args)
        if k < len(network.heads):
            head_macs, _ = measure_module_macs(network.heads[k], (features,), {})
            spent += head_macs / batch
        costs.append(spent)
        args = (features,)
    return costs


def _subset(
    gm: fx.GraphModule, chosen: list[Cut], network: EarlyExitNetwork, kept: tuple[int, ...]
) -> EarlyExitNetwork:
    """``network`` with only the exits ``kept``: the graph cut at their points, their trained heads."""
    segments = split_at(gm, [chosen[k] for k in kept])
    return EarlyExitNetwork(segments, [network.heads[k] for k in kept], network.criterion)


def _replace_graph(gm: fx.GraphModule, network: EarlyExitNetwork) -> None:
    graph = fx.Graph()
    inputs = [graph.placeholder(n.name) for n in gm.graph.nodes if n.op == "placeholder"]
    gm.add_submodule("early_exit", network)
    graph.output(graph.call_module("early_exit", tuple(inputs)))
    gm.graph = graph
    gm.delete_all_unused_submodules()
