"""How much of the timing core the hypervisor took while a benchmark timed (CPU steal time).

On a virtual machine the host may run other guests on the physical core behind ours; Linux counts the time
our core was ready but not running as ``steal`` in ``/proc/stat``. Interleaving spreads such gaps over every
candidate of a round, but not evenly over models that differ in size and memory traffic, so ratios from a
run with much steal may not repeat. On this project's machine kind ``top`` showed 50 % steal at one moment
and 0 % at others; two consecutive ResNet-18 runs with 0.0 and 0.2 % steal still differed by up to 6.4 % on
the ratios against PyTorch (ONNX Runtime's ratios within 2 %), so steal is one cause of run-to-run
movement, not the only one. The share is recorded in every result so a reader can rule it in or out, and a
run above :data:`NOISY_STEAL` carries a note saying its ratios may not repeat.

``/proc/stat`` per-core line: ``cpuN user nice system idle iowait irq softirq steal guest guest_nice`` in
clock ticks; steal share = Δsteal / Δ(user..steal). Elsewhere (no ``/proc/stat``) nothing is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from graphopt.reporting.notes import Note

#: Above this share of steal during timing a result says its ratios may not repeat.
NOISY_STEAL = 0.02
#: Note key (graphopt.reporting.notes) of a run whose timing lost too much of its core to the host.
CPU_STEAL = "bench:cpu_steal"
_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CoreTicks:
    steal: int
    total: int


def core_ticks(core: int | None, stat: Path = _STAT) -> CoreTicks | None:
    """Steal and total ticks of ``core`` (all cores when None) so far; None without ``/proc/stat``."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    name = "cpu" if core is None else f"cpu{core}"
    for line in lines:
        fields = line.split()
        if fields and fields[0] == name and len(fields) >= 9:
            ticks = [int(v) for v in fields[1:9]]  # user .. steal; guest time is already in user
            return CoreTicks(steal=ticks[7], total=sum(ticks))
    return None


def steal_share(before: CoreTicks | None, after: CoreTicks | None) -> float | None:
    """The share of the ticks between ``before`` and ``after`` that were stolen (None when unknown)."""
    if before is None or after is None or after.total <= before.total:
        return None
    return (after.steal - before.steal) / (after.total - before.total)


def steal_note(share: float | None, core: int | None) -> Note | None:
    """A note for a result whose timing lost more than :data:`NOISY_STEAL` of its core to the host (key
    :data:`CPU_STEAL`; facts ``share`` and ``core``, None for every core)."""
    if share is None or share <= NOISY_STEAL:
        return None
    where = f"core {core}" if core is not None else "the cores"
    text = (
        f"the hypervisor took {share:.1%} of {where} while timing (CPU steal): other guests were running on "
        "this machine's cores, so ratios from this run may not repeat; run again when it is quieter"
    )
    return Note(CPU_STEAL, text, share=share, core=core)
