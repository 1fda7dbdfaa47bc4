"""Starting a saga in the store: the saga and its steps in one transaction, an idempotency
key that finds the saga it started, and undoing a start whose publish failed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from sagaq.status import SagaStatus, StepStatus, saga_move
from sagaq.store.compensation import CompensationTransitions
from sagaq.store.schema import saga, saga_step

S, T = SagaStatus, StepStatus

_PUBLISHED = saga_move([S.PENDING], S.RUNNING)
# Built once (a call binds its values).
_ADD_SAGA, _ADD_STEPS = insert(saga), insert(saga_step)


class StartTransitions(CompensationTransitions):
    def create_saga(
        self,
        saga_id: str,
        name: str,
        input: dict[str, Any],
        steps: Sequence[str],
        idempotency_key: str | None = None,
        deadline_at: float | None = None,
        headers: dict[str, str] | None = None,
        parent_id: str | None = None,
        *,
        undoable: Sequence[str] = (),
        parent_step: str | None = None,
    ) -> tuple[str, bool]:
        """Insert the saga (RUNNING) and its PENDING steps in one transaction. Returns
        (id, created); a known idempotency key returns the existing saga's id. `undoable`:
        the steps that have a compensation to run (from the plan)."""
        if idempotency_key is not None and (found := self._find_by_key(name, idempotency_key)):
            return found, False
        now = self.clock()
        can_undo = set(undoable)
        try:
            with self._begin() as conn:
                conn.execute(
                    _ADD_SAGA,
                    {
                        "id": saga_id,
                        "name": name,
                        "status": S.RUNNING,
                        "input": input,
                        "idempotency_key": idempotency_key,
                        "deadline_at": deadline_at,
                        "headers": headers,
                        "parent_id": parent_id,
                        "parent_step": parent_step,
                        "steps_left": len(steps),
                        "created_at": now,
                        "updated_at": now,
                    },
                )
                conn.execute(
                    _ADD_STEPS,
                    [
                        {
                            "saga_id": saga_id,
                            "name": step,
                            "position": i,
                            "status": T.PENDING,
                            "attempts": 0,
                            "compensation_attempts": 0,
                            "applied": False,
                            "undoable": step in can_undo,
                        }
                        for i, step in enumerate(steps)
                    ],
                )
                self._event(conn, saga_id, "saga", now, status=S.RUNNING)
        except IntegrityError:
            # Another start with the same key won the race.
            if idempotency_key is not None and (found := self._find_by_key(name, idempotency_key)):
                return found, False
            raise
        return saga_id, True

    def _find_by_key(self, name: str, key: str) -> str | None:
        with self._begin() as conn:
            found: str | None = conn.execute(
                select(saga.c.id).where(saga.c.name == name, saga.c.idempotency_key == key)
            ).scalar()
        return found

    def mark_published(self, saga_id: str) -> None:
        """PENDING->RUNNING: for sagas recorded PENDING by an older sagaq (new ones start
        RUNNING: the sweeper finds a lost publish by its steps, none of which ever ran)."""
        now = self.clock()
        with self._begin() as conn:
            moved = conn.execute(
                update(saga)
                .where(saga.c.id == saga_id, saga.c.status.in_(_PUBLISHED))
                .values(status=S.RUNNING, updated_at=now)
            )
            if moved.rowcount == 1:
                self._event(conn, saga_id, "saga", now, status=S.RUNNING)

    def delete_saga(self, saga_id: str) -> None:
        """Remove a saga whose canvas could not be published (nothing of it ran)."""
        with self._begin() as conn:
            conn.execute(delete(saga).where(saga.c.id == saga_id))  # cascades (steps, events)
