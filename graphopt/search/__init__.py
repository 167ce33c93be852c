"""Goal-driven optimization: ``optimize(..., goals=Goals(...), search=SearchConfig(...))``.

:mod:`.goals` (what the user needs), :mod:`.space` (what may be tried), :mod:`.measure` (a candidate as it
ships), :mod:`.rows` (goals met, Pareto front, the choice), :mod:`.engine` (the loop), :mod:`.plot`.
"""

from __future__ import annotations

from graphopt.search.engine import search_optimize
from graphopt.search.goals import Goals, parse_goals
from graphopt.search.space import SearchConfig

__all__ = ["Goals", "SearchConfig", "parse_goals", "search_optimize"]
