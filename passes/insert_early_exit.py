"""Early exit: cut the network at chosen points, attach exit heads, train them, calibrate their thresholds.

Annotate, then insert: :func:`~graphopt.early_exit.segments.find_cuts` marks the nodes every path goes
through, the config picks some (names, or MAC fractions), then one rewrite replaces the graph by a call to
an :class:`~graphopt.early_exit.network.EarlyExitNetwork` holding the backbone segments, a head per exit
and the ``torch.cond`` branch between them. The heads train with the backbone frozen (labels + distillation
from the final output) and the thresholds are calibrated on held-out labelled data (``validation_data``,
else a share of ``train_data``) to minimise expected MACs with the expected accuracy drop on new data
within the budget. Lossy by nature; with every threshold at +inf it computes exactly the original graph.

Report: the ``early_exit`` table lists every exit with its threshold, exit rate, accuracy of the samples it
takes and MACs per sample there; ``stats`` hold the expected MACs, the held-out accuracy with and without
exits and the harm (held-out samples the exits get wrong that the network without them gets right). Needs
``train_data``.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from graphopt.cost import count_macs, measure_module_macs
from graphopt.early_exit.config import EarlyExitConfig
from graphopt.early_exit.network import EarlyExitNetwork, exit_head
from graphopt.early_exit.segments import Cut, choose_cuts, find_cuts, split_at
from graphopt.early_exit.thresholds import NEVER, Routing, calibrate, harm_allowed, samples_needed
from graphopt.early_exit.training import cached_features, fine_tune_jointly, train_heads
from graphopt.errors import InvalidInputError
from graphopt.ir import shape_of
from graphopt.keys import EXPECTED_MACS_SHARE
from graphopt.pass_base import Pass, PassResult
from graphopt.recovery.data import LabelledTensors
from graphopt.shapes import propagate_shapes


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
        classes = classifier_width(gm)
        cuts, total = find_cuts(gm)
        chosen = choose_cuts(cuts, total, config.exits, config.fractions)
        segments = split_at(gm, chosen)
        heads = [exit_head(c.channels, classes, config.head) for c in chosen]
        network = EarlyExitNetwork(segments, heads, config.criterion)
        train, held_out = self._training_and_held_out(config)
        held_out_features = cached_features(network, held_out)  # the backbone as given
        reference = held_out_features[-1].argmax(-1) == held_out.labels  # the network without exits
        stats = train_heads(network, train, config)
        if config.joint_epochs:  # the backbone changed: its held-out features too
            stats.update(fine_tune_jointly(network, train, config))
            held_out_features = cached_features(network, held_out)
        macs = _macs_per_exit(network, context.example_inputs)
        with torch.no_grad():
            exits = [h(f) for h, f in zip(network.heads, held_out_features[:-1], strict=True)]
        all_logits = [*exits, held_out_features[-1]]
        routing = calibrate(
            all_logits, held_out.labels, macs, config.accuracy_budget, config.criterion, reference
        )
        network.thresholds.copy_(torch.tensor(routing.thresholds))
        _replace_graph(gm, network)
        context.tables["early_exit"] = _table(chosen, routing, all_logits, held_out.labels, macs)
        if all(t == NEVER for t in routing.thresholds):
            context.notes.append(_disabled_note(len(held_out), config.accuracy_budget))
        stats[EXPECTED_MACS_SHARE] = round(routing.expected_macs / macs[-1], 4)
        stats.update(
            exits=len(chosen),
            heldout_samples=len(held_out),
            heldout_accuracy=round(routing.accuracy, 4),
            heldout_accuracy_without_exits=round(float(reference.float().mean()), 4),
            heldout_harm=routing.harm,
        )
        return PassResult(gm, modified=True, stats=stats)

    def _training_and_held_out(self, config: EarlyExitConfig) -> tuple[LabelledTensors, LabelledTensors]:
        """Heads train on ``train_data``; thresholds calibrate on ``validation_data``, or without it on a
        held-out share of ``train_data`` (with a report note: the model may have seen those samples)."""
        context = self.context
        validation = context.validation_data
        if validation is not None:
            return context.train_data, validation
        train, held_out = _split(context.train_data, config)
        context.notes.append(
            f"insert_early_exit: thresholds calibrated on {len(held_out)} samples held out of train_data "
            "(no validation_data given); if the model was trained on them, its confidence there is higher "
            "than on new data and the accuracy drop on new data can exceed the budget: pass "
            "validation_data=... (labelled batches the model never saw)"
        )
        return train, held_out


def _disabled_note(samples: int, budget_pp: float) -> str:
    note = (
        f"insert_early_exit: no exit threshold keeps the expected accuracy drop within {budget_pp} pp of "
        "the network without exits; the exits stay disabled"
    )
    if harm_allowed(samples, budget_pp) < 0:
        needed = samples_needed(budget_pp)
        note += (
            f" (certifying {budget_pp} pp needs at least {needed} held-out samples, got {samples})"
            if needed is not None
            else " (a 0 pp budget can never be certified on finite data)"
        )
    return note


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
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed))
    cut = int(len(data) * (1 - config.holdout_fraction))
    if cut < 1 or cut >= len(data):
        raise InvalidInputError(
            f"train_data has {len(data)} samples: too few to train heads and hold some out"
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


def _replace_graph(gm: fx.GraphModule, network: EarlyExitNetwork) -> None:
    graph = fx.Graph()
    inputs = [graph.placeholder(n.name) for n in gm.graph.nodes if n.op == "placeholder"]
    gm.add_submodule("early_exit", network)
    graph.output(graph.call_module("early_exit", tuple(inputs)))
    gm.graph = graph
    gm.delete_all_unused_submodules()


def _threshold_text(threshold: float | None) -> str:
    if threshold is None:
        return "-"
    return "never" if threshold == NEVER else f"{threshold:.4f}"


def _table(
    cuts: list[Cut], routing: Routing, logits: list[torch.Tensor], labels: torch.Tensor, macs: list[float]
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    names = [c.name for c in cuts] + ["final classifier"]
    for k, name in enumerate(names):
        taken = routing.exit_of == k
        hits = (logits[k].argmax(-1) == labels)[taken]
        threshold = routing.thresholds[k] if k < len(cuts) else None
        rows.append({
            "exit": name,
            "threshold": _threshold_text(threshold),
            "exit_rate": f"{float(taken.float().mean()):.1%}",
            "accuracy_of_exited": f"{float(hits.float().mean()):.1%}" if len(hits) else "-",
            "head_alone_accuracy": f"{float((logits[k].argmax(-1) == labels).float().mean()):.1%}",
            "macs_per_sample": int(macs[k]),
        })  # fmt: skip
    return rows
