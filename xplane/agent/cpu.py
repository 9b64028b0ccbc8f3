"""CPU utilisation from two reads of ``/proc/stat`` (busy jiffies / total jiffies)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

PROC_STAT = Path("/proc/stat")


class CpuTimes(NamedTuple):
    """Aggregate jiffies of the ``cpu`` line: idle (idle + iowait) and the total."""

    idle: int
    total: int


def parse_proc_stat(text: str) -> CpuTimes:
    """Read the aggregate ``cpu`` line of a ``/proc/stat`` text.

    Fields: user nice system idle iowait irq softirq steal guest guest_nice. guest and
    guest_nice are already counted in user and nice, so they are left out of the total.
    """
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            try:
                values = [int(v) for v in parts[1:]]
            except ValueError as exc:
                raise ValueError(f"/proc/stat: non-numeric cpu field in {line!r}") from exc
            if len(values) < 4:
                raise ValueError(f"/proc/stat: cpu line has {len(values)} fields, need >= 4")
            counted = values[:8]
            idle = counted[3] + (counted[4] if len(counted) > 4 else 0)
            return CpuTimes(idle=idle, total=sum(counted))
    raise ValueError("/proc/stat: no aggregate 'cpu' line")


def busy_fraction(prev: CpuTimes, cur: CpuTimes) -> float:
    """Share of the interval spent busy, in [0, 1]; 0 when no time passed (or counters reset)."""
    total = cur.total - prev.total
    idle = cur.idle - prev.idle
    if total <= 0 or idle < 0:
        return 0.0
    return min(1.0, max(0.0, (total - idle) / total))


def read_cpu_times(path: Path = PROC_STAT) -> CpuTimes:
    """Thin I/O wrapper over :func:`parse_proc_stat`."""
    return parse_proc_stat(path.read_text())


class CpuSampler:
    """Keeps the previous read so each call returns utilisation since the last one."""

    def __init__(self, path: Path = PROC_STAT) -> None:
        self._path = path
        self._prev = read_cpu_times(path)

    def sample(self) -> float:
        cur = read_cpu_times(self._path)
        value = busy_fraction(self._prev, cur)
        self._prev = cur
        return value
