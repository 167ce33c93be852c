"""What ``insert_early_exit`` tells: the per-exit table, the timing of the paths, why exits are off."""

from __future__ import annotations

import torch

from graphopt.early_exit.paths import PathTiming
from graphopt.early_exit.segments import Cut
from graphopt.early_exit.selection import ExitChoice
from graphopt.early_exit.thresholds import NEVER, Routing, harm_allowed, samples_needed
from graphopt.reporting.notes import Note

#: Note keys (graphopt.reporting.notes): what tests and tools read instead of the sentences.
EXITS_DISABLED = "insert_early_exit:exits_disabled"
NO_EXIT_PAYS = "insert_early_exit:no_exit_pays"
EXIT_PATHS_TIMED = "insert_early_exit:exit_paths_timed"


def disabled_note(samples: int, budget_pp: float) -> Note:
    """Why no exit threshold was certified, with the held-out samples the budget needs when too few
    (facts: ``samples``, ``budget_pp``, ``too_few_samples``, ``samples_needed``: None when enough, or when
    no number is: a 0 pp budget)."""
    too_few = harm_allowed(samples, budget_pp) < 0
    needed = samples_needed(budget_pp) if too_few else None
    text = (
        f"insert_early_exit: no exit threshold keeps the expected accuracy drop within {budget_pp} pp of "
        "the network without exits; the exits stay disabled"
    )
    if too_few:
        text += (
            f" (certifying {budget_pp} pp needs at least {needed} held-out samples, got {samples})"
            if needed is not None
            else " (a 0 pp budget can never be certified on finite data)"
        )
    facts = {"samples": samples, "budget_pp": budget_pp, "too_few_samples": too_few, "samples_needed": needed}
    return Note(EXITS_DISABLED, text, **facts)


def timing_stats(routing: Routing, timing: PathTiming) -> dict[str, float]:
    """Expected milliseconds per held-out input, the network without exits, and their ratio."""
    return {
        "expected_ms": round(routing.expected_cost, 4),
        "without_exits_ms": round(timing.without_exits_ms, 4),
        "expected_latency_share": round(routing.expected_cost / timing.without_exits_ms, 4),
    }


def timing_note(chosen: list[Cut], choice: ExitChoice, timing: PathTiming) -> Note:
    """Where each input may leave and what that path measured; which exits were dropped, and why (facts:
    ``runtime``, ``without_exits_ms``; with exits also ``kept`` and ``dropped``, names of cuts)."""
    measured = {"runtime": timing.runtime, "without_exits_ms": timing.without_exits_ms}
    if not choice.kept:
        return Note(
            NO_EXIT_PAYS,
            f"insert_early_exit: no exits inserted: timed in {timing.runtime}, every set of exits expects "
            f"more time per held-out input than the network without them ({timing.without_exits_ms:.3f} ms)",
            **measured,
        )
    kept = [chosen[k].name for k in choice.kept]
    ends = [*kept, "the end"]
    paths = ", ".join(f"{name} {ms:.3f} ms" for name, ms in zip(ends, choice.costs, strict=True))
    text = (
        f"insert_early_exit: exit paths timed in {timing.runtime}: leaving at {paths}; without exits "
        f"{timing.without_exits_ms:.3f} ms; expected {choice.routing.expected_cost:.3f} ms per held-out input"
    )
    dropped = [chosen[k].name for k in range(len(chosen)) if k not in choice.kept]
    if dropped:
        text += f"; dropped {', '.join(dropped)}: the exits kept expect less time without it"
    return Note(EXIT_PATHS_TIMED, text, kept=tuple(kept), dropped=tuple(dropped), **measured)


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
