"""The compensation half of SagaStore: from the first failure to COMPENSATED (or FAILED).

Reverse order is enforced here, not only by the canvas: a step is undone only once every step
that depends on it is settled (undone, or never applied), whatever order messages arrive in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, bindparam, exists, func, or_, select, true, update

from sagaq.status import (
    SAGA_ACTIVE,
    STEP_BLOCKS_COMPENSATED,
    SagaStatus,
    StepStatus,
    needs_undo,
    saga_move,
    step_move,
)
from sagaq.store.base import STEP_KEY, step_key, task_of
from sagaq.store.reads import STEP_INPUTS, StoreReads
from sagaq.store.records import Claim, StepClaim, run_claim
from sagaq.store.schema import saga, saga_event, saga_step

S, T = SagaStatus, StepStatus

_SKIPPED = step_move([T.PENDING], T.SKIPPED)
_WRITTEN_OFF = step_move([T.RUNNING], T.FAILED)
_UNDOING = step_move([T.COMPLETED, T.FAILED, T.COMPENSATING], T.COMPENSATING)
_UNDONE = step_move([T.COMPENSATING], T.COMPENSATED)
_UNDO_FAILED = step_move([T.COMPENSATING], T.COMPENSATION_FAILED)
_COMPENSATED = saga_move([S.COMPENSATING], S.COMPENSATED)
_GAVE_UP = saga_move([S.COMPENSATING], S.FAILED)
_RESUMED = saga_move([S.FAILED], S.COMPENSATING)
_UNDO_AGAIN = step_move([T.COMPENSATION_FAILED], T.COMPENSATING)

LOST_ERROR = "its attempt stopped without reporting (worker lost or hard time limit)"


def _needs_undo(table: Any = saga_step) -> Any:
    """Rows whose effect may stand and that have a compensation to run."""
    return and_(
        table.c.undoable,
        or_(table.c.status == T.COMPLETED, and_(table.c.status == T.FAILED, table.c.applied)),
    )


def _unsettled(table: Any = saga_step) -> Any:
    """Rows that keep the saga from being COMPENSATED (and their ancestors from being undone)."""
    return or_(table.c.status.in_(STEP_BLOCKS_COMPENSATED), _needs_undo(table))


def _first_reason(saga_id: str) -> Any:
    """The error recorded when the saga began compensating (its history's first such row)."""
    return (
        select(saga_event.c.error)
        .where(
            saga_event.c.saga_id == saga_id,
            saga_event.c.kind == "saga",
            saga_event.c.status == S.COMPENSATING,
            saga_event.c.error.is_not(None),
        )
        .order_by(saga_event.c.id)
        .limit(1)
        .scalar_subquery()
    )


# -- the statements of the compensation path, built once (a call binds its values) ----------

_SAGA_STATUS = select(saga.c.status).where(saga.c.id == bindparam("sid"))
_STEP_ROW = select(saga_step).where(STEP_KEY)
_UNSETTLED_DEPENDENT = select(saga_step.c.name).where(
    saga_step.c.saga_id == bindparam("sid"),
    saga_step.c.name.in_(bindparam("dependents", expanding=True)),
    _unsettled(),
)
_CLAIM_UNDO = (
    update(saga_step)
    .where(STEP_KEY, saga_step.c.status.in_(_UNDOING))
    .values(
        status=T.COMPENSATING,
        compensation_attempts=saga_step.c.compensation_attempts + 1,
        compensation_started_at=func.coalesce(
            saga_step.c.compensation_started_at, bindparam("now")
        ),
        heartbeat_at=bindparam("now"),
        task_id=bindparam("claimer"),
        resume_token=None,
    )
    .returning(saga_step.c.compensation_attempts, saga_step.c.result)
)
_UNDONE_STEP = (
    update(saga_step)
    .where(
        STEP_KEY,
        saga_step.c.status.in_(_UNDONE),
        saga_step.c.compensation_attempts == bindparam("attempt"),
    )
    .values(status=T.COMPENSATED, compensated_at=bindparam("now"))
)
_FINISH_UNDO = (
    update(saga)
    .where(
        saga.c.id == bindparam("sid"),
        saga.c.status.in_(_COMPENSATED),
        ~exists().where(saga_step.c.saga_id == bindparam("sid"), _unsettled()),
    )
    .values(status=S.COMPENSATED, updated_at=bindparam("now"), finished_at=bindparam("now"))
    .returning(saga.c.created_at)
)


@dataclass(frozen=True)
class Begun:
    """What begin_compensation decided: `steps` to put in the undo canvas (those that may have
    applied, and those still running so that their ancestors wait), or why it refused."""

    steps: list[str] | None  # None: refused
    status: SagaStatus | None = None  # the saga's status when refused
    finished: bool = False  # nothing to undo: the saga is COMPENSATED already


@dataclass(frozen=True)
class Decided:
    failed_step: str | None  # what the saga names as its cause
    error: str | None
    todo: list[str]  # the steps the undo canvas covers


def decide_compensation(
    rows: Sequence[Any], cause: str, failed_step: str | None, reason: str | None
) -> Decided:
    """From the step rows (ordered by when they finished): the culprit is the first failure in
    time (wait-all lets several happen; `error` lists the others), or the step whose errback
    came while it is still RUNNING (its attempt was lost). A cancel or a deadline gives its
    reason instead. The canvas covers what may have applied and what still runs."""
    failed = [r for r in rows if r.status == T.FAILED]
    named = next((r for r in rows if r.name == failed_step), None)
    culprit = failed[0] if failed and cause == "failure" else named
    others = [r for r in failed if culprit is not None and r.name != culprit.name]
    error = f"cancelled: {reason}" if cause == "cancel" else reason
    if culprit is not None and culprit.status == T.RUNNING:
        error = error or LOST_ERROR
    error = error or (culprit.error if culprit else None)
    if others and error:
        error += "; also failed: " + "; ".join(f"{r.name}: {r.error}" for r in others)
    todo = [
        r.name for r in rows if r.status == T.RUNNING or needs_undo(r.status, r.undoable, r.applied)
    ]
    return Decided(culprit.name if culprit else None, error, todo)


class CompensationTransitions(StoreReads):
    """From COMPENSATING to COMPENSATED (or FAILED): every move one conditional UPDATE."""

    def begin_compensation(
        self,
        saga_id: str,
        *,
        cause: str,
        failed_step: str | None = None,
        reason: str | None = None,
        allowed: Sequence[SagaStatus] = tuple(SAGA_ACTIVE),
        pivot: str | None = None,
        actor: str | None = None,
        only_if_failed: bool = False,
    ) -> Begun:
        """->COMPENSATING in one conditional UPDATE: only the first caller gets the steps to
        undo; later callers are refused. Steps that never started become SKIPPED in the same
        transaction, so none of them can start any more. Refused once the `pivot` started
        (past it nothing is undone), and with `only_if_failed` unless `failed_step` is FAILED.
        `cause`: "failure", "cancel" or "deadline"; `reason` becomes the saga's error
        (otherwise the failed steps' errors do)."""
        now = self.clock()
        steps = saga_step.c.saga_id == saga_id
        step_failed = exists().where(
            steps, saga_step.c.name == failed_step, saga_step.c.status == T.FAILED
        )
        pivot_started = (
            exists().where(
                steps,
                saga_step.c.name == pivot,
                saga_step.c.status.in_((T.RUNNING, T.COMPLETED)),
            )
            if pivot
            else None
        )
        with self._begin() as conn:
            won = conn.execute(
                update(saga)
                .where(
                    saga.c.id == saga_id,
                    saga.c.status.in_(saga_move(allowed, S.COMPENSATING)),
                    ~pivot_started if pivot_started is not None else true(),
                    step_failed if only_if_failed else true(),
                )
                .values(status=S.COMPENSATING, cause=cause, updated_at=now, finished_at=None)
            )
            if won.rowcount != 1:
                status = conn.execute(select(saga.c.status).where(saga.c.id == saga_id)).scalar()
                return Begun(None, SagaStatus(status) if status else None)
            conn.execute(
                update(saga_step)
                .where(steps, saga_step.c.status.in_(_SKIPPED))
                .values(status=T.SKIPPED)
            )
            rows = conn.execute(
                select(saga_step)
                .where(steps)
                .order_by(saga_step.c.finished_at, saga_step.c.position)
            ).all()
            decided = decide_compensation(rows, cause, failed_step, reason)
            conn.execute(
                update(saga)
                .where(saga.c.id == saga_id)
                .values(failed_step=decided.failed_step, error=decided.error)
            )
            if actor is not None or cause == "cancel":
                self._event(
                    conn, saga_id, "operator", now, status="CANCEL", actor=actor, reason=reason
                )
            self._event(
                conn,
                saga_id,
                "saga",
                now,
                status=S.COMPENSATING,
                reason=cause,
                error=decided.error,
            )
            finished = not decided.todo and self._try_finish_compensation(conn, saga_id, now)
        return Begun(decided.todo, S.COMPENSATING, finished)

    def claim_compensation(
        self,
        saga_id: str,
        step: str,
        *,
        dependents: Sequence[str],
        wanted: Sequence[str],
        lease: float,
        stop_running: bool = False,
        token: str = "",
        worker: str | None = None,
    ) -> StepClaim:
        """May this attempt undo the step? RUN when it may have applied (COMPLETED, or FAILED
        and `applied`), it has a compensation, and every step that depends on it is settled.
        A RUNNING step is waited for while its lease lives; once the lease expired it is
        written off as FAILED+applied (outcome unknown) and undone. `stop_running`: do not wait
        (a sub-saga step: its child is cancelled instead).

        Otherwise WAIT (something must finish first), DONE (nothing to undo, or already
        undone: the saga may be finished here), HALT (the saga FAILED) or STOP."""
        now = self.clock()
        params = {
            "sid": saga_id,
            "step": step,
            "now": now,
            "dependents": list(dependents),
            "claimer": task_of(token),
        }
        with self._begin() as conn:
            self._lock_saga(conn, saga_id)
            head = conn.execute(_SAGA_STATUS, params).first()
            row = conn.execute(_STEP_ROW, params).first()
            if head is None or row is None:
                return StepClaim(Claim.STOP)
            if head.status == S.FAILED:
                return StepClaim(Claim.HALT)
            if head.status != S.COMPENSATING:
                return StepClaim(Claim.DONE)
            if dependents:
                waiting_on = conn.execute(_UNSETTLED_DEPENDENT, params).first()
                if waiting_on is not None:
                    return StepClaim(Claim.WAIT, retry_in=0.1)
            status, applied = StepStatus(row.status), bool(row.applied)
            alive = row.heartbeat_at is not None and row.heartbeat_at > now - lease
            if status == T.RUNNING:
                if alive and not stop_running:
                    return StepClaim(Claim.WAIT, retry_in=max(0.05, row.heartbeat_at + lease - now))
                error = "stopped: the saga is compensating" if stop_running else LOST_ERROR
                conn.execute(
                    update(saga_step)
                    .where(step_key(saga_id, step), saga_step.c.status.in_(_WRITTEN_OFF))
                    .values(status=T.FAILED, applied=True, error=error, finished_at=now)
                )
                self._event(conn, saga_id, "step", now, step=step, status=T.FAILED, error=error)
                status, applied = T.FAILED, True
            elif status == T.COMPENSATING and alive and row.resume_token != token:
                return StepClaim(Claim.WAIT, retry_in=max(0.05, row.heartbeat_at + lease - now))
            may_stand = status in (T.COMPLETED, T.COMPENSATING) or (status == T.FAILED and applied)
            if not (row.undoable and may_stand):
                if status == T.COMPENSATION_FAILED:
                    return StepClaim(Claim.HALT)
                self._try_finish_compensation(conn, saga_id, now)
                return StepClaim(Claim.DONE)
            claimed = conn.execute(_CLAIM_UNDO, params).one()
            self._event(
                conn,
                saga_id,
                "compensation",
                now,
                step=step,
                status=T.COMPENSATING,
                attempt=claimed.compensation_attempts,
                worker=worker,
                task_id=task_of(token),
            )
            wanted = sorted({*wanted, step})
            rows = conn.execute(STEP_INPUTS, {"sid": saga_id, "wanted": wanted}).all()
            return run_claim(rows, (), claimed.compensation_attempts, claimed.result)

    def retry_compensation(
        self,
        saga_id: str,
        step: str,
        attempt: int,
        error: str | None,
        delay: float,
        next_token: str,
        *,
        task_id: str | None = None,
    ) -> bool:
        """The undo failed (or waits for a sub-saga) and is tried again in `delay` s by the
        message `next_token`: the lease is reserved for it until then."""
        now = self.clock()
        with self._begin() as conn:
            done = conn.execute(
                update(saga_step)
                .where(
                    step_key(saga_id, step),
                    saga_step.c.status == T.COMPENSATING,
                    saga_step.c.compensation_attempts == attempt,
                )
                .values(compensation_error=error, heartbeat_at=now + delay, resume_token=next_token)
            )
            if done.rowcount == 1 and error is not None:
                self._event(
                    conn,
                    saga_id,
                    "attempt",
                    now,
                    step=step,
                    attempt=attempt,
                    error=error,
                    reason="compensation",
                    task_id=task_id,
                )
        return done.rowcount == 1

    def complete_compensation(
        self, saga_id: str, step: str, attempt: int, *, duration_ms: float | None = None
    ) -> tuple[bool, bool]:
        """COMPENSATING->COMPENSATED, then the saga ->COMPENSATED if nothing is left to undo.
        Returns (step undone, saga done)."""
        now = self.clock()
        with self._begin() as conn:
            self._lock_saga(conn, saga_id)
            params = {"sid": saga_id, "step": step, "attempt": attempt, "now": now}
            done = conn.execute(_UNDONE_STEP, params)
            if done.rowcount != 1:
                return False, False
            self._event(
                conn,
                saga_id,
                "compensation",
                now,
                step=step,
                status=T.COMPENSATED,
                attempt=attempt,
                duration_ms=duration_ms,
            )
            return True, self._try_finish_compensation(conn, saga_id, now)

    def fail_compensation(self, saga_id: str, step: str, attempt: int, error: str) -> bool:
        """The step could not be undone: the saga is FAILED and needs an operator."""
        now = self.clock()
        message = f"compensation of step {step!r} failed: {error}"
        with self._begin() as conn:
            done = conn.execute(
                update(saga_step)
                .where(
                    step_key(saga_id, step),
                    saga_step.c.status.in_(_UNDO_FAILED),
                    saga_step.c.compensation_attempts == attempt,
                )
                .values(status=T.COMPENSATION_FAILED, compensation_error=error)
            )
            if done.rowcount != 1:
                return False
            self._event(
                conn,
                saga_id,
                "compensation",
                now,
                step=step,
                status=T.COMPENSATION_FAILED,
                attempt=attempt,
                error=error,
            )
            moved = conn.execute(
                update(saga)
                .where(saga.c.id == saga_id, saga.c.status.in_(_GAVE_UP))
                .values(status=S.FAILED, error=message, updated_at=now, finished_at=now)
            )
            if moved.rowcount == 1:
                self._event(conn, saga_id, "saga", now, status=S.FAILED, error=message)
                self._finished(conn, saga_id)
        return True

    def finish_compensation(self, saga_id: str) -> bool:
        """COMPENSATING->COMPENSATED, unless some step is still to undo, running or failed."""
        with self._begin() as conn:
            self._lock_saga(conn, saga_id)
            return self._try_finish_compensation(conn, saga_id, self.clock())

    def _try_finish_compensation(self, conn: Connection, saga_id: str, now: float) -> bool:
        done = conn.execute(_FINISH_UNDO, {"sid": saga_id, "now": now}).first()
        if done is None:
            return False
        took = round((now - done.created_at) * 1000, 3)
        self._event(conn, saga_id, "saga", now, status=S.COMPENSATED, duration_ms=took)
        self._finished(conn, saga_id)
        return True

    def resume_compensation(
        self, saga_id: str, *, actor: str | None = None, reason: str | None = None
    ) -> list[str] | None:
        """FAILED (a compensation gave up) -> COMPENSATING again, its retry budget renewed.
        Returns the steps still to undo, or None if the saga is not in that state."""
        now = self.clock()
        steps = saga_step.c.saga_id == saga_id
        with self._begin() as conn:
            won = conn.execute(
                update(saga)
                .where(
                    saga.c.id == saga_id,
                    saga.c.status.in_(_RESUMED),
                    exists().where(steps, saga_step.c.status == T.COMPENSATION_FAILED),
                )
                # The compensation's failure stays in the history (and on the dashboard); the
                # saga's error goes back to why it compensated (the failure, cancel, deadline).
                .values(
                    status=S.COMPENSATING,
                    error=_first_reason(saga_id),
                    updated_at=now,
                    finished_at=None,
                )
            )
            if won.rowcount != 1:
                return None
            conn.execute(
                update(saga_step)
                .where(steps, saga_step.c.status.in_(_UNDO_AGAIN))
                .values(
                    status=T.COMPENSATING,
                    compensation_attempts=0,
                    compensation_error=None,
                    heartbeat_at=None,  # no attempt holds it: the next claim takes it
                )
            )
            self._event(conn, saga_id, "operator", now, status="RETRY", actor=actor, reason=reason)
            self._event(conn, saga_id, "saga", now, status=S.COMPENSATING)
            names = conn.execute(select(saga_step.c.name).where(steps, _unsettled()))
            return list(names.scalars())
