"""CPU time and resident memory of a process and its descendants, from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Usage:
    cpu_s: float  # user + system, the process and its live descendants
    rss_bytes: int


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of one process; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree(pid: int) -> list[int]:
    """``pid`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[0], []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def usage(pid: int, descendants: bool = True) -> Usage:
    pids = tree(pid) if descendants else [pid]
    cpu = sum(st[1] for p in pids if (st := _stat(p)) is not None)
    return Usage(cpu_s=cpu, rss_bytes=sum(_rss(p) for p in pids))


def rates(
    before: dict[str, Usage], after: dict[str, Usage], seconds: float
) -> dict[str, dict[str, float]]:
    """Per process: average cores used between two samples, and resident MiB at the end."""
    return {
        name: {
            "cpu_cores": round((after[name].cpu_s - before[name].cpu_s) / seconds, 3),
            "rss_mib": round(after[name].rss_bytes / 2**20, 1),
        }
        for name in after
        if name in before
    }
