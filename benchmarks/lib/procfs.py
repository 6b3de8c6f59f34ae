"""Process measurement from /proc (no psutil): CPU time and RSS of process trees, over a window.

A window is two `read_cpu` readings; `cpu_use(before, after)` turns them into % of one core for any
set of the processes read, for this process (the load generator) and for the whole machine.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, utime+stime in clock ticks), or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def alive(pid: int) -> bool:
    return _proc_stat(pid) is not None


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    found: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop()
        if pid not in found and alive(pid):
            found.append(pid)
            pending.extend(children.get(pid, ()))
    return found


def cpu_ticks(pids: Iterable[int]) -> dict[int, int]:
    """utime+stime (clock ticks) of each of `pids` that is alive."""
    ticks: dict[int, int] = {}
    for pid in pids:
        stat = _proc_stat(pid)
        if stat is not None:
            ticks[pid] = stat[1]
    return ticks


def machine_busy_ticks() -> int:
    """Clock ticks all CPUs spent busy (not idle, not waiting for I/O) since boot."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest time is already counted in user time
    return sum(values[:8]) - idle


def own_cpu_seconds() -> float:
    """This process's user+system CPU seconds (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes(pids: Iterable[int]) -> int:
    """The sum of the VmRSS of `pids` (those still alive)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


@dataclass(frozen=True, slots=True)
class CpuReading:
    """The CPU counters at one moment: the processes read, this process, the machine."""

    at: float  # time.monotonic()
    ticks: dict[int, int]
    own_seconds: float
    busy_ticks: int


def read_cpu(pids: Iterable[int]) -> CpuReading:
    return CpuReading(time.monotonic(), cpu_ticks(pids), own_cpu_seconds(), machine_busy_ticks())


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU used between two readings, in % of one core."""

    elapsed: float  # seconds
    by_pid: dict[int, float]  # the processes alive at the second reading
    own_pct: float  # this process (the load generator)
    machine_pct: float  # every CPU's busy time

    def pct(self, pids: Iterable[int]) -> float:
        """The sum over `pids` (those of the second reading; others count 0)."""
        return sum(self.by_pid.get(pid, 0.0) for pid in set(pids))

    def other_pct(self, *counted: float) -> float:
        """The machine's busy time less this process and the `counted` figures: other work, noise."""
        return max(0.0, self.machine_pct - self.own_pct - sum(counted))


def cpu_use(before: CpuReading, after: CpuReading) -> CpuUse:
    """CPU over the window between two readings. A process of `after` that `before` did not read counts from
    zero (it was born in the window, or was not asked for: read the same process tree both times)."""
    elapsed = after.at - before.at
    if elapsed <= 0:
        raise ValueError("the second reading is not after the first")
    scale = 100 / CLK_TCK / elapsed
    by_pid = {pid: (ticks - before.ticks.get(pid, 0)) * scale for pid, ticks in after.ticks.items()}
    return CpuUse(
        elapsed,
        by_pid,
        (after.own_seconds - before.own_seconds) / elapsed * 100,
        (after.busy_ticks - before.busy_ticks) * scale,
    )
