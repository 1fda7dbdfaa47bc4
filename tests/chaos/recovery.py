"""Time to recover from each fault, read from the store's own timestamps after the run.

- A killed process (a prefork child, a worker's main process, a whole worker node): the
  steps it was running (found through chaos_attempt) are lost with it. It has recovered when
  each of them finished again (completed, failed for good, or was compensated) or its saga
  ended.
- A broker restart: every saga unfinished when the broker went down is affected. It has
  recovered when each of them made progress after the broker came back (a step started,
  finished or compensated, or the saga ended).

The time counts from the fault (for a broker restart, from when it went down).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from sagaq.store import SagaRecord, SagaStore


@dataclass
class Fault:
    kind: str  # "child", "main", "node", "broker_restart", "partition", ...
    at: float  # wall clock (time.time()), like the store's timestamps
    lost_steps: list[tuple[str, str]] = field(default_factory=list)  # kills: (saga_id, step)
    sagas: list[str] = field(default_factory=list)  # broker restarts: unfinished saga ids
    back_at: float | None = None  # broker restarts: when it answered again

    def recovered_at(self, records: dict[str, SagaRecord]) -> float | None:
        """When the last affected saga or step recovered; None if one never did."""
        times = []
        if self.lost_steps:
            for saga_id, name in self.lost_steps:
                record = records[saga_id]
                step = next(s for s in record.steps if s.name == name)
                done = [
                    t
                    for t in (step.finished_at, step.compensation_started_at, record.finished_at)
                    if t is not None and t > self.at
                ]
                times.append(min(done) if done else None)
        for saga_id in self.sagas:
            times.append(_progress_after(records[saga_id], self.back_at or self.at))
        if not times:
            return self.at  # nothing was lost
        if any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)


def _progress_after(record: SagaRecord, since: float) -> float | None:
    moments = [record.finished_at]
    for s in record.steps:
        moments += [s.started_at, s.finished_at, s.compensation_started_at, s.compensated_at]
    later = [t for t in moments if t is not None and t > since]
    return min(later) if later else None


def summarize(faults: list[Fault], store: SagaStore) -> dict[str, dict[str, object]]:
    """Per fault kind: how many, how many had work to lose, p50 and max seconds to recover,
    and how many never recovered."""
    ids = {sid for f in faults for sid, _ in f.lost_steps} | {s for f in faults for s in f.sagas}
    records = {sid: r for sid in ids if (r := store.get(sid)) is not None}
    summary: dict[str, dict[str, object]] = {}
    for kind in dict.fromkeys(f.kind for f in faults):
        of_kind = [f for f in faults if f.kind == kind]
        hit = [f for f in of_kind if f.lost_steps or f.sagas]
        times = [(f, f.recovered_at(records)) for f in hit]
        seconds = sorted(round(t - f.at, 2) for f, t in times if t is not None)
        summary[kind] = {
            "faults": len(of_kind),
            "with_work_lost": len(hit),
            "p50_s": round(statistics.median(seconds), 2) if seconds else None,
            "max_s": max(seconds) if seconds else None,
            "never_recovered": sum(t is None for _, t in times),
        }
    return summary


def killed_under(faults: list[Fault]) -> dict[str, set[str]]:
    """saga_id -> its steps whose process a fault killed (or cut off) while running them."""
    found: dict[str, set[str]] = {}
    for fault in faults:
        for saga_id, step in fault.lost_steps:
            found.setdefault(saga_id, set()).add(step)
    return found
