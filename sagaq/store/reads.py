"""Reading the store: one saga, recent sagas, what the sweeper must look at, history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select, tuple_, update

from sagaq.status import SAGA_UNFINISHED, SagaStatus
from sagaq.store.base import StoreBase
from sagaq.store.records import SagaRecord, saga_record
from sagaq.store.schema import saga, saga_event, saga_step

# Where a sweep pass resumes: (created_at, id) of the last saga it examined.
SweepCursor = tuple[float, str] | None


class StoreReads(StoreBase):
    def get(self, saga_id: str) -> SagaRecord | None:
        with self._begin() as conn:
            head = conn.execute(select(saga).where(saga.c.id == saga_id)).first()
            if head is None:
                return None
            steps = conn.execute(
                select(saga_step)
                .where(saga_step.c.saga_id == saga_id)
                .order_by(saga_step.c.position)
            ).all()
        return saga_record(head, steps)

    def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        name: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[SagaRecord]:
        """Newest first, without step rows (use get() for those)."""
        query = select(saga).order_by(saga.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(saga.c.status == status)
        if name is not None:
            query = query.where(saga.c.name == name)
        if since is not None:
            query = query.where(saga.c.created_at >= since)
        with self._begin() as conn:
            return [saga_record(row, []) for row in conn.execute(query)]

    def unfinished(
        self, *, created_before: float, after: SweepCursor = None, limit: int = 500
    ) -> list[SagaRecord]:
        """Unfinished sagas created before `created_before`, oldest first, resuming after the
        cursor `after` (keyset paging: each pass goes on where the last one stopped, so stuck
        sagas cannot starve the others). The status+created_at index keeps it flat."""
        query = (
            select(saga)
            .where(saga.c.status.in_(SAGA_UNFINISHED), saga.c.created_at < created_before)
            .order_by(saga.c.created_at, saga.c.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(tuple_(saga.c.created_at, saga.c.id) > tuple_(*after))
        with self._begin() as conn:
            heads = conn.execute(query).all()
            if not heads:
                return []
            steps = conn.execute(
                select(saga_step)
                .where(saga_step.c.saga_id.in_([h.id for h in heads]))
                .order_by(saga_step.c.saga_id, saga_step.c.position)
            ).all()
        by_saga: dict[str, list[Any]] = {}
        for row in steps:
            by_saga.setdefault(row.saga_id, []).append(row)
        return [saga_record(h, by_saga.get(h.id, [])) for h in heads]

    def children(self, parent_id: str, step: str) -> list[str]:
        """The ids of the sub-sagas a parent's step started, oldest first."""
        with self._begin() as conn:
            ids = conn.execute(
                select(saga.c.id)
                .where(saga.c.parent_id == parent_id, saga.c.parent_step == step)
                .order_by(saga.c.created_at)
            ).scalars()
            return list(ids)

    def touch(self, saga_id: str, seen_updated_at: float, action: str | None = None) -> bool:
        """Claim a saga for a recovery action: only one sweeper wins per observed version.
        `action` is written to the history (what the sweeper does)."""
        now = self.clock()
        with self._begin() as conn:
            done = conn.execute(
                update(saga)
                .where(saga.c.id == saga_id, saga.c.updated_at == seen_updated_at)
                .values(updated_at=now)
            )
            if done.rowcount == 1 and action:
                self._event(conn, saga_id, "sweeper", now, reason=action)
        return done.rowcount == 1

    def events(self, saga_id: str) -> list[dict[str, Any]]:
        """The saga's history, oldest first."""
        with self._begin() as conn:
            rows = conn.execute(
                select(saga_event).where(saga_event.c.saga_id == saga_id).order_by(saga_event.c.id)
            )
            return [dict(row._mapping) for row in rows]


# The saga row joined with the rows of the steps a step (or compensation) reads; parameters
# `sid` and `wanted` (a list of step names).
STEP_INPUTS = (
    select(
        saga.c.input,
        saga.c.headers,
        saga_step.c.name,
        saga_step.c.status,
        saga_step.c.result,
        saga_step.c.data,
    )
    .select_from(
        saga.outerjoin(
            saga_step,
            (saga_step.c.saga_id == saga.c.id)
            & saga_step.c.name.in_(bindparam("wanted", expanding=True)),
        )
    )
    .where(saga.c.id == bindparam("sid"))
    .order_by(saga_step.c.position)
)
