"""Goal-driven optimization: ``optimize(..., goals=Goals(...), search=SearchConfig(...))``.

:mod:`.goals` (what the user needs), :mod:`.space` (what may be tried), :mod:`.measure` (a candidate as it
ships), :mod:`.rows` (goals met, Pareto front, the choice), :mod:`.engine` (the loop), :mod:`.plot`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphopt.search.goals import Goals, parse_goals
from graphopt.search.space import SearchConfig

if TYPE_CHECKING:
    from graphopt.api import OptimizeCall
    from graphopt.result import OptimizeResult


def search_optimize(call: OptimizeCall, goals: Goals, config: SearchConfig) -> OptimizeResult:
    """See :mod:`graphopt.search.engine` (imported here on use: the engine imports the API)."""
    from graphopt.search.engine import search_optimize as run

    return run(call, goals, config)


__all__ = ["Goals", "SearchConfig", "parse_goals", "search_optimize"]
