"""What ``insert_early_exit`` tells: the per-exit table, the timing of the paths, why exits are off."""

from __future__ import annotations

import torch

from graphopt.early_exit.paths import PathTiming
from graphopt.early_exit.segments import Cut
from graphopt.early_exit.selection import ExitChoice
from graphopt.early_exit.thresholds import NEVER, Routing, harm_allowed, samples_needed


def disabled_note(samples: int, budget_pp: float) -> str:
    """Why no exit threshold was certified, with the held-out samples the budget needs when too few."""
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


def timing_stats(routing: Routing, timing: PathTiming) -> dict[str, float]:
    """Expected milliseconds per held-out input, the network without exits, and their ratio."""
    return {
        "expected_ms": round(routing.expected_cost, 4),
        "without_exits_ms": round(timing.without_exits_ms, 4),
        "expected_latency_share": round(routing.expected_cost / timing.without_exits_ms, 4),
    }


def timing_note(chosen: list[Cut], choice: ExitChoice, timing: PathTiming) -> str:
    """Where each input may leave and what that path measured; which exits were dropped, and why."""
    if not choice.kept:
        return (
            f"insert_early_exit: no exits inserted: timed in {timing.runtime}, every set of exits expects "
            f"more time per held-out input than the network without them ({timing.without_exits_ms:.3f} ms)"
        )
    names = [chosen[k].name for k in choice.kept] + ["the end"]
    paths = ", ".join(f"{name} {ms:.3f} ms" for name, ms in zip(names, choice.costs, strict=True))
    note = (
        f"insert_early_exit: exit paths timed in {timing.runtime}: leaving at {paths}; without exits "
        f"{timing.without_exits_ms:.3f} ms; expected {choice.routing.expected_cost:.3f} ms per held-out input"
    )
    dropped = [chosen[k].name for k in range(len(chosen)) if k not in choice.kept]
    if dropped:
        note += f"; dropped {', '.join(dropped)}: the exits kept expect less time without it"
    return note


def threshold_text(threshold: float | None) -> str:
    if threshold is None:
        return "-"
    return "never" if threshold == NEVER else f"{threshold:.4f}"


def exit_table(
    cuts: list[Cut],
    routing: Routing,
    logits: list[torch.Tensor],
    labels: torch.Tensor,
    macs: list[float],
    ms: list[float] | None,
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    names = [c.name for c in cuts] + ["final classifier"]
    for k, name in enumerate(names):
        taken = routing.exit_of == k
        hits = (logits[k].argmax(-1) == labels)[taken]
        threshold = routing.thresholds[k] if k < len(cuts) else None
        rows.append({
            "exit": name,
            "threshold": threshold_text(threshold),
            "exit_rate": f"{float(taken.float().mean()):.1%}",
            "accuracy_of_exited": f"{float(hits.float().mean()):.1%}" if len(hits) else "-",
            "head_alone_accuracy": f"{float((logits[k].argmax(-1) == labels).float().mean()):.1%}",
            "macs_per_sample": int(macs[k]),
            **({"ms_per_sample": round(ms[k], 4)} if ms is not None else {}),
        })  # fmt: skip
    return rows
