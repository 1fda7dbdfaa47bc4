"""The read side of the saga history: what happened to a saga, finding sagas, counting them.

The store's transitions write `saga_event` rows; this module only reads them (and `record`s an
event for operator tools and tests). Every query here is bounded by an index, so none grows with
the table: searches page with a cursor, counts stop at COUNT_CAP per status.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Select, and_, case, func, insert, literal, select, tuple_, union_all

from sagaq.errors import InvalidInputError
from sagaq.status import SagaStatus
from sagaq.store.schema import saga, saga_event, saga_step
from sagaq.store.store import SagaStore

# Counting stops here per status: exact below, "at least" at the cap. A count that reads every
# row of a million-row table costs a full index scan; a capped one reads at most this many.
COUNT_CAP = 10_000
UNFINISHED = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)
CAUSES = ("failure", "cancel", "deadline")


@dataclass(frozen=True)
class EventRecord:
    """One row of a saga's history (see schema.saga_event for what each kind carries)."""

    id: int
    saga_id: str
    at: float
    kind: str
    step: str | None
    status: str | None
    attempt: int | None
    worker: str | None
    task_id: str | None
    error: str | None
    duration_ms: float | None
    actor: str | None
    reason: str | None


@dataclass(frozen=True)
class SagaSummary:
    """A saga without its steps, as lists and searches show it."""

    id: str
    name: str
    status: SagaStatus
    idempotency_key: str | None
    cause: str | None  # why compensation began: failure, cancel, deadline
    failed_step: str | None
    error: str | None
    created_at: float
    finished_at: float | None
    parent_id: str | None

    @property
    def duration_ms(self) -> float | None:
        if self.finished_at is None:
            return None
        return round((self.finished_at - self.created_at) * 1000, 3)


@dataclass(frozen=True)
class SagaFilter:
    """What to look for; every field left None matches everything."""

    name: str | None = None
    status: SagaStatus | None = None
    cause: str | None = None
    key: str | None = None  # the idempotency key (the caller's business id), exact
    id_prefix: str | None = None
    since: float | None = None  # created at or after (epoch seconds)
    until: float | None = None  # created before

    def __post_init__(self) -> None:
        if self.cause is not None and self.cause not in CAUSES:
            raise InvalidInputError(f"cause must be one of {', '.join(CAUSES)}, not {self.cause!r}")


@dataclass(frozen=True)
class SagaPage:
    sagas: list[SagaSummary]
    next_cursor: str | None  # pass it back for the next (older) page; None: this was the last


@dataclass(frozen=True)
class StatusCounts:
    counts: dict[SagaStatus, int]
    cap: int  # a count equal to the cap means "at least this many"

    def shown(self, status: SagaStatus) -> str:
        n = self.counts.get(status, 0)
        return f"{n}+" if n >= self.cap else str(n)


class SagaHistory:
    """Queries over one store's sagas and their events."""

    def __init__(self, store: SagaStore) -> None:
        self.store = store

    # -- one saga -------------------------------------------------------------------------

    def events(self, saga_id: str, *, after: int = 0, limit: int = 1000) -> list[EventRecord]:
        """The saga's history in the order it happened (after event id `after`)."""
        query = (
            select(saga_event)
            .where(saga_event.c.saga_id == saga_id, saga_event.c.id > after)
            .order_by(saga_event.c.id)
            .limit(limit)
        )
        with self.store.engine.connect() as conn:
            return [_record(EventRecord, row) for row in conn.execute(query)]

    def summary(self, saga_id: str) -> SagaSummary | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(*_SUMMARY_COLUMNS).where(saga.c.id == saga_id)).first()
        return None if row is None else _summary(row)

    def step_task_ids(self, saga_id: str) -> dict[str, str]:
        """The Celery task id of each step's latest attempt (for links to Flower)."""
        query = select(saga_step.c.name, saga_step.c.task_id).where(
            saga_step.c.saga_id == saga_id, saga_step.c.task_id.is_not(None)
        )
        with self.store.engine.connect() as conn:
            return {name: task_id for name, task_id in conn.execute(query)}

    def record(self, saga_id: str, kind: str, **values: Any) -> None:
        """Append one event (the store's transitions write their own in their transaction)."""
        with self.store.engine.begin() as conn:
            conn.execute(
                insert(saga_event).values(saga_id=saga_id, kind=kind, at=time.time(), **values)
            )

    # -- many sagas -----------------------------------------------------------------------

    def search(
        self, where: SagaFilter = SagaFilter(), *, cursor: str | None = None, limit: int = 50
    ) -> SagaPage:
        """Newest first; `cursor` (from the previous page) continues after its last saga.
        Keyset paging: every page costs the same, however deep."""
        query = _filtered(select(*_SUMMARY_COLUMNS), where)
        if cursor is not None:
            created_at, saga_id = _decode_cursor(cursor)
            query = query.where(tuple_(saga.c.created_at, saga.c.id) < (created_at, saga_id))
        query = query.order_by(saga.c.created_at.desc(), saga.c.id.desc()).limit(limit + 1)
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        sagas = [_summary(row) for row in rows[:limit]]
        more = len(rows) > limit
        return SagaPage(sagas, _encode_cursor(sagas[-1]) if more and sagas else None)

    def count_by_status(
        self, where: SagaFilter = SagaFilter(), *, cap: int = COUNT_CAP
    ) -> StatusCounts:
        """Sagas per status matching `where` (its status ignored), in one query: one capped,
        index-bounded subquery per status, so the cost is flat in the table's size."""
        unfiltered = SagaFilter(**{**_as_dict(where), "status": None})
        parts = [
            select(literal(str(status)).label("status"), func.count().label("n")).select_from(
                _filtered(select(saga.c.id), unfiltered)
                .where(saga.c.status == status)
                .limit(cap)
                .subquery()
            )
            for status in SagaStatus
        ]
        with self.store.engine.connect() as conn:
            rows = conn.execute(union_all(*parts)).all()
        return StatusCounts({SagaStatus(s): n for s, n in rows}, cap)

    def count_by_name_status_cause(
        self, *, cap: int = COUNT_CAP
    ) -> dict[tuple[str, SagaStatus, str | None], int]:
        """For the `sagaq_sagas` gauges: per status at most `cap` rows are read, so the query
        stays flat however many sagas the table holds."""
        capped = union_all(
            *(
                select(saga.c.name, saga.c.status, saga.c.cause)
                .where(saga.c.status == status)
                .limit(cap)
                for status in SagaStatus
            )
        ).subquery()
        columns = (capped.c.name, capped.c.status, capped.c.cause)
        query = select(*columns, func.count()).group_by(*columns)
        with self.store.engine.connect() as conn:
            return {(name, SagaStatus(st), cause): n for name, st, cause, n in conn.execute(query)}

    def oldest_unfinished(self) -> dict[tuple[str, SagaStatus], float]:
        """Per saga name and unfinished status, since when the longest-waiting saga has been in
        that status: its creation for PENDING and RUNNING, the history's COMPENSATING event
        for COMPENSATING (its creation when there is none). Unfinished sagas are few and the
        status index finds them; each one's events are found by the (saga_id, id) index."""
        entered = (
            select(func.max(saga_event.c.at))
            .where(
                saga_event.c.saga_id == saga.c.id,
                saga_event.c.kind == "saga",
                saga_event.c.status == SagaStatus.COMPENSATING,
            )
            .scalar_subquery()
        )
        since = case(
            (saga.c.status == SagaStatus.COMPENSATING, func.coalesce(entered, saga.c.created_at)),
            else_=saga.c.created_at,
        )
        query = (
            select(saga.c.name, saga.c.status, func.min(since))
            .where(saga.c.status.in_(UNFINISHED))
            .group_by(saga.c.name, saga.c.status)
        )
        with self.store.engine.connect() as conn:
            return {(name, SagaStatus(st)): at for name, st, at in conn.execute(query)}

    def oldest_created(self) -> dict[str, float]:
        """Per saga name, when its oldest unfinished saga was created."""
        query = (
            select(saga.c.name, func.min(saga.c.created_at))
            .where(saga.c.status.in_(UNFINISHED))
            .group_by(saga.c.name)
        )
        with self.store.engine.connect() as conn:
            return {name: at for name, at in conn.execute(query)}


_SUMMARY_COLUMNS = [saga.c[f.name] for f in fields(SagaSummary) if f.name in saga.c]


def _filtered(query: Select[Any], where: SagaFilter) -> Select[Any]:
    conditions = []
    if where.name is not None:
        conditions.append(saga.c.name == where.name)
    if where.status is not None:
        conditions.append(saga.c.status == where.status)
    if where.cause is not None:
        conditions.append(saga.c.cause == where.cause)
    if where.key is not None:
        conditions.append(saga.c.idempotency_key == where.key)
    if where.id_prefix:
        conditions.append(saga.c.id.startswith(where.id_prefix, autoescape=True))
    if where.since is not None:
        conditions.append(saga.c.created_at >= where.since)
    if where.until is not None:
        conditions.append(saga.c.created_at < where.until)
    return query.where(and_(*conditions)) if conditions else query


def _as_dict(where: SagaFilter) -> dict[str, Any]:
    return {f.name: getattr(where, f.name) for f in fields(where)}


def _record(cls: type[EventRecord], row: Any) -> EventRecord:
    values = row._mapping
    return cls(**{f.name: values[f.name] for f in fields(cls)})


def _summary(row: Any) -> SagaSummary:
    values = dict(row._mapping)
    values["status"] = SagaStatus(values["status"])
    return SagaSummary(**values)


def _encode_cursor(last: SagaSummary) -> str:
    raw = json.dumps([last.created_at, last.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, saga_id = json.loads(raw)
        return float(created_at), str(saga_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidInputError(f"not a cursor from a previous page: {cursor!r}") from exc
