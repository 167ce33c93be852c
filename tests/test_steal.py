"""CPU steal time while a benchmark timed, read from /proc/stat."""

from __future__ import annotations

import pytest

from graphopt.benchmark.steal import CPU_STEAL, NOISY_STEAL, core_ticks, steal_note, steal_share

STAT = """cpu  100 0 50 800 0 0 0 50 0 0
cpu0 60 0 30 400 0 0 0 {steal} 7 0
cpu1 40 0 20 400 0 0 0 0 0 0
intr 12345
"""


def test_steal_share_of_the_pinned_core(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(STAT.format(steal=10))
    before = core_ticks(0, stat)
    stat.write_text(STAT.format(steal=60).replace("cpu0 60 0 30 400", "cpu0 60 0 30 450"))
    after = core_ticks(0, stat)
    assert before is not None and after is not None
    assert before.total == 60 + 30 + 400 + 10  # guest (7) is inside user already
    assert steal_share(before, after) == pytest.approx(50 / 100)
    assert core_ticks(5, stat) is None  # no such core
    assert core_ticks(None, stat).steal == 50


def test_without_proc_stat_nothing_is_recorded(tmp_path):
    assert core_ticks(0, tmp_path / "missing") is None
    assert steal_share(None, None) is None and steal_note(None, 0) is None


def test_only_a_noisy_run_gets_a_note():
    assert steal_note(NOISY_STEAL / 2, 0) is None
    note = steal_note(0.25, 0)
    assert note is not None and note.key == CPU_STEAL and note.facts == {"share": 0.25, "core": 0}


def test_this_machine_reports_its_steal_when_linux():
    ticks = core_ticks(None)
    if ticks is None:
        pytest.skip("no /proc/stat here")
    assert 0 <= ticks.steal <= ticks.total
