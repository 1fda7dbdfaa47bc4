"""Retention: delete finished sagas (with their steps and history) once they are old enough.

    sagaq purge --older-than 30d                      # COMPLETED and COMPENSATED sagas
    sagaq purge --older-than 90d --status FAILED      # FAILED ones too, once looked at

or, on a schedule: every engine has the `sagaq.purge` task; add `purge_schedule("30d")` to the
app's beat_schedule to run it hourly.

It deletes in small batches, each its own short transaction, so no lock is held for long and
workers keep writing meanwhile. An unfinished saga (PENDING, RUNNING, COMPENSATING) is never
deleted: it is refused as a status, and every batch re-checks the status it deletes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, delete, func, select

from sagaq.errors import InvalidInputError
from sagaq.status import SagaStatus
from sagaq.store import SagaStore
from sagaq.store.schema import saga, saga_event, saga_step

if TYPE_CHECKING:
    from sagaq.client import SagaQ

# FAILED sagas wait for an operator: purged only when asked for by name.
DEFAULT_STATUSES = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)
BATCH = 500
PURGE_TASK = "sagaq.purge"
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class PurgeReport:
    sagas: int  # sagas deleted (their steps and events went with them)
    batches: int
    seconds: float


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '2w' -> seconds."""
    match = _AGE.match(text)
    if match is None:
        raise InvalidInputError(f"{text!r} is not an age like 30d, 12h, 90m or 2w")
    return float(match[1]) * _SECONDS[match[2]]


def finished_statuses(statuses: Iterable[SagaStatus | str] | None) -> tuple[SagaStatus, ...]:
    chosen = tuple(SagaStatus(str(s).upper()) for s in statuses or DEFAULT_STATUSES)
    unfinished = [s for s in chosen if not s.is_terminal]
    if unfinished:
        raise InvalidInputError(
            f"{', '.join(unfinished)} sagas are unfinished and are never purged "
            "(cancel them first, or let them finish)"
        )
    return chosen


def purge(
    store: SagaStore,
    *,
    older_than: float,
    statuses: Iterable[SagaStatus | str] | None = None,
    batch: int = BATCH,
    pause: float = 0.0,
    now: float | None = None,
) -> PurgeReport:
    """Delete sagas in `statuses` created and finished more than `older_than` seconds ago, `batch`
    at a time; `pause` seconds between batches lets a busy database breathe."""
    chosen = finished_statuses(statuses)
    cutoff = (time.time() if now is None else now) - older_than
    started = time.monotonic()
    deleted = batches = 0
    while True:
        count = _purge_batch(store, chosen, cutoff, batch)
        if count == 0:
            break
        deleted += count
        batches += 1
        if count < batch:
            break
        if pause:
            time.sleep(pause)
    return PurgeReport(deleted, batches, round(time.monotonic() - started, 3))


def count_purgeable(
    store: SagaStore,
    *,
    older_than: float,
    statuses: Iterable[SagaStatus | str] | None = None,
    now: float | None = None,
) -> int:
    """How many sagas `purge` would delete now."""
    cutoff = (time.time() if now is None else now) - older_than
    query = select(func.count()).select_from(
        _candidates(finished_statuses(statuses), cutoff).subquery()
    )
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _candidates(statuses: tuple[SagaStatus, ...], cutoff: float) -> Select[tuple[str]]:
    # The (status, created_at) index finds the oldest candidates without reading the rest.
    return select(saga.c.id).where(
        saga.c.status.in_(statuses),
        saga.c.created_at < cutoff,
        saga.c.finished_at < cutoff,  # a saga retried lately is kept
    )


def _purge_batch(
    store: SagaStore, statuses: tuple[SagaStatus, ...], cutoff: float, batch: int
) -> int:
    candidates = _candidates(statuses, cutoff).order_by(saga.c.created_at).limit(batch)
    if not store.is_sqlite:
        candidates = candidates.with_for_update(skip_locked=True)  # never wait on a worker
    with store.engine.begin() as conn:
        ids = list(conn.execute(candidates).scalars())
        if not ids:
            return 0
        conn.execute(delete(saga_event).where(saga_event.c.saga_id.in_(ids)))
        conn.execute(delete(saga_step).where(saga_step.c.saga_id.in_(ids)))
        conn.execute(delete(saga).where(saga.c.id.in_(ids), saga.c.status.in_(statuses)))
    return len(ids)


def install_purge_task(engine: SagaQ) -> Any:
    """Register `sagaq.purge` on the engine's Celery app (SagaQ does, as it does sagaq.sweep),
    for beat: see purge_schedule."""

    @engine.app.task(name=PURGE_TASK, shared=False)
    def purge_task(older_than: str = "30d", statuses: list[str] | None = None) -> dict[str, Any]:
        report = purge(engine.store, older_than=parse_age(older_than), statuses=statuses)
        return {"sagas": report.sagas, "batches": report.batches, "seconds": report.seconds}

    return purge_task


def purge_schedule(
    older_than: str = "30d", statuses: Iterable[str] = (), every: float = 3600.0
) -> dict[str, dict[str, Any]]:
    """A beat_schedule entry: `app.conf.beat_schedule |= purge_schedule("30d")`."""
    parse_age(older_than)  # fail at configuration, not an hour later
    finished_statuses(list(statuses) or None)
    return {
        "sagaq-purge": {
            "task": PURGE_TASK,
            "schedule": every,
            "kwargs": {"older_than": older_than, "statuses": list(statuses) or None},
        }
    }
