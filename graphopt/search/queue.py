"""The queue of a search: every point of the space, each either queued or ruled out by the estimates
(:func:`~graphopt.search.space.SearchPoint.speedup_ceiling`, ``bytes_floor``) with the reason, and the
queue cut at ``max_candidates``. When the estimates rule out every point, the one they put closest to the
goals is measured anyway: a search never returns nothing."""

from __future__ import annotations

from graphopt.backends import BACKENDS
from graphopt.errors import ConfigError
from graphopt.search.goals import Goals
from graphopt.search.rows import CandidateRow
from graphopt.search.space import SearchConfig, SearchPoint, SpaceLimits, enumerate_points


def build_queue(
    config: SearchConfig, goals: Goals, limits: SpaceLimits, params: int, first_exit: float
) -> list[CandidateRow]:
    for name in limits.backends:
        if name not in BACKENDS:
            raise ConfigError(
                f"SearchConfig.backends: unknown backend {name!r}; known: {', '.join(BACKENDS)}"
            )
    rows = []
    for point in enumerate_points(config, limits):
        why = _ruled_out(goals, point, params, first_exit)
        rows.append(CandidateRow(point, "ruled out" if why else "queued", why))
    queued = [r for r in rows if r.status == "queued"]
    if not queued and rows:
        closest = min(rows, key=lambda r: _estimated_gap(goals, r.point, params, first_exit))
        closest.status = "queued"
        closest.why = (
            f"every candidate is estimated to miss; measured as the closest estimate ({closest.why})"
        )
        queued = [closest]
    for row in queued[config.max_candidates :]:
        row.status, row.why = "not run", f"over max_candidates={config.max_candidates}"
    return rows


def _ruled_out(goals: Goals, point: SearchPoint, params: int, first_exit: float) -> str:
    ceiling = point.speedup_ceiling(first_exit)
    if goals.min_speedup is not None and ceiling < goals.min_speedup:
        return f"speed-up at most {ceiling:.2f}x (estimate) < {goals.min_speedup:g}x"
    if goals.max_bytes is not None and point.bytes_floor(params) > goals.max_bytes:
        return f"at least {point.bytes_floor(params) / 1e6:.3g} MB of weights (estimate) > goal"
    return ""


def _estimated_gap(goals: Goals, point: SearchPoint, params: int, first_exit: float) -> float:
    estimate = {"speedup": point.speedup_ceiling(first_exit), "bytes": point.bytes_floor(params)}
    return sum(m.relative_gap for m in goals.misses(estimate) if m.goal.metric in estimate)
