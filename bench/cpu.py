"""CPU accounting from /proc: how much CPU each party (worker, PostgreSQL, broker, client) spent
during a measurement, and how busy the machine was with work that is not ours.

On a 2-core machine shared with other jobs, throughput moves with the background load; CPU
seconds per saga barely do, so both are reported."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used by `pid` so far; 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # up to steal; guest time is already in user
    return (total - idle) / TICK, total / TICK


def pids_named(*names: str) -> list[int]:
    """PIDs whose command name is one of `names` (e.g. redis-server, beam.smp)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


PidSource = Callable[[], list[int]]


@dataclass
class CpuMeter:
    """Per group of processes, CPU seconds between start() and stop()."""

    groups: dict[str, PidSource]
    _start: dict[int, float] = field(default_factory=dict)
    _busy: float = 0.0
    _wall: float = 0.0

    def _pids(self) -> dict[str, list[int]]:
        return {name: sorted(set(source())) for name, source in self.groups.items()}

    def start(self) -> None:
        self._start = {pid: proc_cpu(pid) for pids in self._pids().values() for pid in pids}
        self._busy = machine_busy()[0]
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group, plus `other` (the machine's busy time that none of the groups
        account for: other jobs) and `wall` seconds."""
        out: dict[str, float] = {}
        seen: set[int] = set()
        for name, pids in self._pids().items():
            fresh = [p for p in pids if p not in seen]
            seen.update(fresh)
            out[name] = sum(max(0.0, proc_cpu(p) - self._start.get(p, 0.0)) for p in fresh)
        busy = machine_busy()[0] - self._busy
        out["other"] = max(0.0, busy - sum(out.values()))
        out["wall"] = time.monotonic() - self._wall
        return out


def wait_until_quiet(
    max_wait: float, threshold: float = 0.25, window: float = 0.5
) -> tuple[float, float]:
    """Wait (at most `max_wait` s) until the machine has been busy less than `threshold` cores
    for `window` s, our own workers being idle at that moment. Returns (waited s, busy cores)."""
    started = time.monotonic()
    while True:
        busy0, _ = machine_busy()
        time.sleep(window)
        cores = (machine_busy()[0] - busy0) / window
        waited = time.monotonic() - started
        if cores < threshold or waited >= max_wait:
            return waited, cores
