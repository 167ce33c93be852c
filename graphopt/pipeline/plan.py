"""The plan: what one ``optimize()`` call will run, declared before anything runs.

A target's passes (or the caller's ``passes=``) are grouped into named slots; each option of the call
(``prune``, ``sparsify``, ``accuracy_budget``, ``train_data`` with or without ``recovery``,
``early_exit``) adds a slot through one rule of :data:`SLOT_RULES`. Slots sit in :data:`SLOT_ORDER`:

    prune -> cleanup -> sparsify -> int8_layout -> int8 -> int8_budget -> training -> exits

A new slot goes before the first slot of a later rank (a slot of custom passes ranks as the slot before
it), so on a target's pipeline the order above holds and on a ``passes=`` list the new slot lands where
the same reasoning puts it (sparsity before the first int8 pass); the budget goes right after the
calibration it measures. ``weights`` adds no slot: it rewrites the scheme of the int8 slot's
``insert_fake_quant`` (weight bits, per-tensor scales) and, with a byte budget, adds ``allocate_weight_bits``
after its ``calibrate`` (:func:`_with_weights`). Why each slot is there is
part of the plan: ``print(res.plan)`` or
``graphopt plan TARGET --prune 0.5``. A new capability adds a rule here, not a keyword splicer in the API.

Which ``optimize()`` option becomes which :func:`plan_options` keyword (``train_data`` -> ``has_train_data``)
is declared with the option, in :mod:`graphopt.call_options` (its ``PlanRule``; :func:`plan_keywords`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from graphopt.early_exit.config import EarlyExitConfig
from graphopt.errors import ConfigError
from graphopt.passes.allocate_weight_bits import AllocateWeightBitsOptions
from graphopt.passes.improve_int8 import ImproveInt8Options, step_label
from graphopt.passes.probe_int8 import ProbeInt8Options
from graphopt.passes.sparsify import SparsifyConfig
from graphopt.pipeline.pass_base import Pass
from graphopt.pipeline.registry import make_pass, pass_class
from graphopt.pruning.config import PruneConfig
from graphopt.quant.options import InsertFakeQuantOptions, WeightQuant
from graphopt.recovery.config import RecoveryConfig
from graphopt.targets import Target

SLOT_ORDER = ("prune", "cleanup", "sparsify", "int8_layout", "int8", "int8_budget", "training", "exits")
#: Slots whose passes make the model int8: the fp32 model the latency guard compares with is the one
#: just before the first of them.
INT8_SLOTS = ("int8_layout", "int8")


@dataclass(frozen=True)
class Slot:
    name: str
    passes: tuple[Pass, ...]
    why: str
    #: Placed right after the last slot holding this pass, rather than by rank (the budget follows
    #: calibration, whatever comes after it in a ``passes=`` list).
    after_pass: str | None = None

    @property
    def rank(self) -> int | None:
        return SLOT_ORDER.index(self.name) if self.name in SLOT_ORDER else None


@dataclass(frozen=True)
class Plan:
    #: The Target object itself, never only its name: passes that time candidates in the target's runtime
    #: (probe_int8, runtime-costed exits) get the caller's target even when it is not a preset.
    target: Target
    slots: tuple[Slot, ...] = ()

    def passes(self) -> list[Pass]:
        return [p for slot in self.slots for p in slot.passes]

    def has(self, pass_name: str) -> bool:
        return any(p.name == pass_name for p in self.passes())

    def with_slot(self, slot: Slot) -> Plan:
        """The plan with ``slot`` placed by rank (module docstring)."""
        assert slot.rank is not None, slot.name
        if slot.after_pass is not None:
            holders = [
                i for i, s in enumerate(self.slots) if any(p.name == slot.after_pass for p in s.passes)
            ]
            at = holders[-1] + 1
        else:
            at, rank = len(self.slots), -1
            for i, existing in enumerate(self.slots):
                rank = existing.rank if existing.rank is not None else rank  # custom: as the slot before
                if rank > slot.rank:
                    at = i
                    break
        return Plan(self.target, (*self.slots[:at], slot, *self.slots[at:]))

    def __str__(self) -> str:
        rows = [(slot.name, ", ".join(p.name for p in slot.passes), slot.why) for slot in self.slots]
        width = max((len(names) for _, names, _ in rows), default=0)
        lines = [f"plan for {self.target.name}:"]
        lines += [f"  {name:<12} {names:<{width}}  {why}" for name, names, why in rows]
        return "\n".join(lines)


@dataclass(frozen=True)
class PlanOptions:
    """The options of a call that shape its plan, checked and normalised (:func:`plan_options`)."""

    passes: tuple[Pass, ...] | None = None  # replaces the target's pipeline
    prune: PruneConfig | None = None
    sparsify: SparsifyConfig | None = None
    accuracy_budget: float | None = None
    recovery: RecoveryConfig | None = None
    has_train_data: bool = False
    early_exit: EarlyExitConfig | None = None
    weights: WeightQuant | None = None


def plan_options(
    *,
    passes: Sequence[str | Pass] | None = None,
    prune: float | PruneConfig = 0.0,
    sparsify: float | SparsifyConfig = 0.0,
    accuracy_budget: float | None = None,
    recovery: RecoveryConfig | None = None,
    has_train_data: bool = False,
    early_exit: EarlyExitConfig | None = None,
    weights: int | WeightQuant | None = None,
) -> PlanOptions:
    """Check each option's type and turn the numeric shorthands into their configs (ratio 0 is off)."""
    if recovery is not None and not isinstance(recovery, RecoveryConfig):
        raise ConfigError(f"recovery must be a graphopt.RecoveryConfig, got {type(recovery).__name__}")
    if early_exit is not None and not isinstance(early_exit, EarlyExitConfig):
        raise ConfigError(
            f"early_exit must be None or a graphopt.EarlyExitConfig, got {type(early_exit).__name__}"
        )
    if accuracy_budget is not None and (
        not isinstance(accuracy_budget, (int, float)) or isinstance(accuracy_budget, bool)
    ):
        raise ConfigError(f"accuracy_budget must be a number of percentage points, got {accuracy_budget!r}")
    return PlanOptions(
        passes=_given_passes(passes),
        prune=_prune_config(prune),
        sparsify=_sparsify_config(sparsify, recovery),
        accuracy_budget=None if accuracy_budget is None else float(accuracy_budget),
        recovery=recovery,
        has_train_data=has_train_data,
        early_exit=early_exit,
        weights=_weight_quant(weights),
    )


def _weight_quant(weights: int | WeightQuant | None) -> WeightQuant | None:
    if weights is None or isinstance(weights, WeightQuant):
        return weights
    if isinstance(weights, int) and not isinstance(weights, bool):
        return WeightQuant(bits=weights)
    raise ConfigError(
        f"weights must be a number of bits (2..8) or a graphopt.WeightQuant(bits=4, per_channel=True, "
        f"bits_by_layer={{...}}), got {weights!r}"
    )


def _given_passes(passes: Sequence[str | Pass] | None) -> tuple[Pass, ...] | None:
    if passes is None:
        return None
    if isinstance(passes, (str, Pass)):
        raise ConfigError(
            "passes must be a sequence of pass names or Pass instances, e.g. passes=['fold_batchnorm']"
        )
    return tuple(make_pass(p) for p in passes)


def _prune_config(prune: float | PruneConfig) -> PruneConfig | None:
    if isinstance(prune, PruneConfig):
        config = prune
    elif isinstance(prune, (int, float)) and not isinstance(prune, bool):
        config = PruneConfig(ratio=float(prune))
    else:
        raise ConfigError(f"prune must be a fraction in [0, 1) or a graphopt.PruneConfig, got {prune!r}")
    return config if config.ratio > 0 else None


def _sparsify_config(
    sparsify: float | SparsifyConfig, recovery: RecoveryConfig | None
) -> SparsifyConfig | None:
    if isinstance(sparsify, SparsifyConfig):
        config = sparsify
    elif isinstance(sparsify, (int, float)) and not isinstance(sparsify, bool):
        config = SparsifyConfig(sparsity=float(sparsify), recovery=recovery or RecoveryConfig(epochs=5))
    else:
        raise ConfigError(
            f"sparsify must be a fraction in [0, 1) or a graphopt.SparsifyConfig, got {sparsify!r}"
        )
    return config if config.sparsity > 0 else None


# --- the rules: one per option that adds a slot -------------------------------------------------------


def _with_weights(o: PlanOptions, plan: Plan) -> Plan:
    """``weights``: every ``insert_fake_quant`` of the plan gets the scheme with these weights (a new pass
    instance: a caller's ``passes=`` instance is not changed). Only static int8 has a weight scheme to set."""
    if o.weights is None:
        return plan
    if not plan.has("insert_fake_quant"):
        dynamic = " (dynamic int8 keeps 8-bit per-channel weights)" if plan.has("quantize_dynamic") else ""
        raise ConfigError(
            f"weights={o.weights} applies to static int8 targets (pipelines with insert_fake_quant: "
            f"x86-int8, arm-int8, xnnpack-int8, ...); {plan.target.name} has none{dynamic}: pick an int8 "
            "target or drop weights="
        )
    slots = []
    for slot in plan.slots:
        passes = tuple(q for p in slot.passes for q in _reweighted(p, o.weights))
        if passes != slot.passes:
            slot = dataclasses.replace(slot, passes=passes, why=f"{slot.why}; weights: {o.weights}")
        slots.append(slot)
    return Plan(plan.target, tuple(slots))


def _reweighted(p: Pass, weights: WeightQuant) -> tuple[Pass, ...]:
    """``p`` as ``weights`` has it: ``insert_fake_quant`` with their scheme; ``calibrate`` followed by
    ``allocate_weight_bits`` when they set a byte budget (the widths are chosen on the calibrated layers)."""
    if isinstance(p.options, InsertFakeQuantOptions):
        scheme, widths = weights.scheme_for(p.options.scheme), weights.bits_by_layer
        return (type(p)(dataclasses.replace(p.options, scheme=scheme, weight_bits_by_layer=widths)),)
    if p.name == "calibrate" and weights.max_weight_bytes is not None:
        keep = tuple(name for name, _ in weights.bits_by_layer)
        options = AllocateWeightBitsOptions(weights.max_weight_bytes, narrow_bits=weights.bits, keep=keep)
        return (p, make_pass("allocate_weight_bits", options))
    return (p,)


def _budget(o: PlanOptions, plan: Plan) -> Slot | None:
    if o.accuracy_budget is None:
        return None
    if not plan.has("calibrate"):
        raise ConfigError("accuracy_budget applies to int8 targets (pipelines with calibrate); this has none")
    improve = make_pass("improve_int8", ImproveInt8Options(budget_pp=o.accuracy_budget))
    budget = pass_class("accuracy_budget")(budget_pp=o.accuracy_budget)
    steps = ", ".join(step_label(step) for step in improve.options.steps)
    why = (
        f"accuracy_budget={o.accuracy_budget:g} pp: {steps} while they help, then int8 layers back in "
        "fp32 (the bits are kept as long as they can be)"
    )
    return Slot("int8_budget", (improve, budget), why, after_pass="calibrate")


def _sparsify(o: PlanOptions, plan: Plan) -> Slot | None:
    if o.sparsify is None:
        return None
    return Slot("sparsify", (make_pass("sparsify", o.sparsify),),
                f"sparsify={o.sparsify.sparsity:g}: zero weights before int8 calibrates them")  # fmt: skip


def _prune(o: PlanOptions, plan: Plan) -> Slot | None:
    """First, while BatchNorm is still there to rank channels and be re-estimated."""
    if o.prune is None:
        return None
    passes = [make_pass("prune_channels", o.prune), make_pass("reestimate_batchnorm")]
    why = f"prune={o.prune.ratio:g}: channels out, BatchNorm statistics re-estimated"
    if o.has_train_data:
        probe = _int8_probe(o, plan)
        if probe is not None:
            passes.append(probe)
            why += ", int8 timed against fp32 (int8 and QAT only if faster)"
        passes.append(make_pass("recover", o.recovery or RecoveryConfig()))
        why += ", then distillation from the original on train_data"
    return Slot("prune", tuple(passes), why)


def _int8_probe(o: PlanOptions, plan: Plan) -> Pass | None:
    """``probe_int8`` when a target's int8 pipeline will be followed by QAT (the training rule adds it):
    it declines the int8 passes and QAT, and moves QAT's epochs to recovery, when int8 is not faster."""
    wanted = o.prune is not None and o.prune.skip_int8_if_slower
    if not wanted or o.passes is not None or not plan.has("calibrate"):
        return None
    int8 = [p.name for slot in plan.slots if slot.name in (*INT8_SLOTS, "int8_budget") for p in slot.passes]
    qat = make_pass("qat", o.recovery)
    return make_pass("probe_int8", ProbeInt8Options(target=plan.target, declines=(*int8, "qat"),
                                                    moved_epochs=qat.options.epochs))  # fmt: skip


def _training(o: PlanOptions, plan: Plan) -> Slot | None:
    """``train_data`` trains after the pipeline: QAT after int8 calibration, distillation recovery after
    other lossy passes (or whenever ``recovery`` is given), nothing when the plan already trains."""
    if not o.has_train_data or plan.has("qat"):
        return None
    if plan.has("calibrate"):
        return Slot("training", (make_pass("qat", o.recovery),), "train_data: quantization-aware training")
    if plan.has("recover"):
        return None
    if o.recovery is not None or any(not p.exact for p in plan.passes()):
        return Slot("training", (make_pass("recover", o.recovery or RecoveryConfig()),),
                    "train_data: distillation from the original after lossy passes")  # fmt: skip
    return None


def _exits(o: PlanOptions, plan: Plan) -> Slot | None:
    """Last, on the finished backbone: heads learn the features the deployed backbone computes."""
    if o.early_exit is None:
        return None
    config = o.early_exit  # exit paths are timed in the runtime of the target they ship to
    if config.target is None:
        config = dataclasses.replace(config, target=plan.target)
    return Slot("exits", (make_pass("insert_early_exit", config),), "early_exit: exit heads")


#: Applied in this order: each sees the plan the ones before it built (training looks for lossy passes,
#: pruning's recovery included).
SLOT_RULES: tuple[Callable[[PlanOptions, Plan], Slot | None], ...] = (
    _budget,
    _sparsify,
    _prune,
    _training,
    _exits,
)


def make_plan(target: Target, options: PlanOptions) -> Plan:
    """The plan for ``target`` with ``options`` (module docstring). Pruning that does not say how to round
    kept widths rounds them to the target's ``channel_multiple`` (the kernels' SIMD block)."""
    if options.prune is not None and options.prune.round_to is None:
        prune = dataclasses.replace(options.prune, round_to=target.backend.channel_multiple, soft_round=True)
        options = dataclasses.replace(options, prune=prune)
    if options.passes is not None:
        plan = Plan(target, _group(options.passes, "passes="))
    else:
        plan = Plan(target, _group([make_pass(p.name, p.options) for p in target.passes], target.name))
    plan = _with_weights(options, plan)
    for rule in SLOT_RULES:
        slot = rule(options, plan)
        if slot is not None:
            plan = plan.with_slot(slot)
    return plan


def _group(passes: Sequence[Pass], source: str) -> tuple[Slot, ...]:
    """Consecutive passes of the same slot form one slot."""
    slots: list[Slot] = []
    for p in passes:
        if slots and slots[-1].name == p.slot:
            slots[-1] = Slot(p.slot, (*slots[-1].passes, p), slots[-1].why)
        else:
            slots.append(Slot(p.slot, (p,), f"from {source}"))
    return tuple(slots)
