"""SagaStore: the SQL state of sagas and steps. Every state change is a conditional UPDATE whose
condition comes from the transition table (sagaq.status), written with its history row in one
transaction, so concurrent, duplicated and redelivered tasks cannot corrupt state.

Forward transitions are here; starting a saga in start.py, compensation transitions in
compensation.py, reads in reads.py."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import Connection, bindparam, exists, func, select, update
from sqlalchemy.engine import make_url

from sagaq.status import SAGA_ACTIVE, STEP_DONE, SagaStatus, StepStatus, saga_move, step_move
from sagaq.store.base import STEP_KEY, step_key, task_of
from sagaq.store.reads import STEP_INPUTS
from sagaq.store.records import Claim, StepClaim, run_claim
from sagaq.store.schema import saga, saga_step
from sagaq.store.start import StartTransitions

S, T = SagaStatus, StepStatus

_FINISHED = saga_move(SAGA_ACTIVE, S.COMPLETED)
_FAILED_FORWARD = saga_move(SAGA_ACTIVE, S.FAILED)
_CLAIMED = step_move([T.PENDING, T.RUNNING], T.RUNNING)
_RETRY_LATER = step_move([T.RUNNING], T.PENDING)
_GAVE_UP = step_move([T.RUNNING], T.FAILED)
_RESUMED = saga_move([S.FAILED], S.RUNNING)
_RESET = step_move([T.FAILED, T.SKIPPED], T.PENDING)

# -- the hot statements, built once per shape: a call binds its values (sid, step, now, ...)
# instead of building SQL each time ----------------------------------------------------------

_ACTIVE = exists().where(saga.c.id == bindparam("sid"), saga.c.status.in_(SAGA_ACTIVE))
_LOCK_ACTIVE_SAGA = (
    update(saga)
    .where(saga.c.id == bindparam("sid"), saga.c.status.in_(SAGA_ACTIVE))
    .values(updated_at=saga.c.updated_at)
)


def _saga_ok(past_pivot: bool) -> Any:
    """The saga is active, and within its deadline unless the step is past the pivot."""
    in_time = saga.c.deadline_at.is_(None) | (saga.c.deadline_at > bindparam("now"))
    return exists().where(
        saga.c.id == bindparam("sid"),
        saga.c.status.in_(SAGA_ACTIVE),
        *(() if past_pivot else (in_time,)),
    )


@cache
def _resume(past_pivot: bool) -> Any:
    """The poll an attempt scheduled for itself takes its step back."""
    return (
        update(saga_step)
        .where(
            STEP_KEY,
            saga_step.c.status == T.RUNNING,
            saga_step.c.resume_token == bindparam("token"),
            _saga_ok(past_pivot),
        )
        .values(heartbeat_at=bindparam("now"), resume_token=None)
        .returning(saga_step.c.attempts)
    )


@cache
def _complete(status: StepStatus) -> Any:
    """The attempt that holds the step ends it (COMPLETED, or SKIPPED by its `when`)."""
    return (
        update(saga_step)
        .where(
            STEP_KEY,
            saga_step.c.status.in_(step_move([T.RUNNING], status)),
            saga_step.c.attempts == bindparam("attempt"),
        )
        .values(
            status=status,
            result=bindparam("b_result", type_=saga_step.c.result.type),
            data=bindparam("b_data", type_=saga_step.c.data.type),
            finished_at=bindparam("now"),
        )
    )


_COUNT_DOWN = (
    update(saga)
    .where(saga.c.id == bindparam("sid"))
    .values(steps_left=saga.c.steps_left - 1)
    .returning(saga.c.steps_left)
)
_FINISH = (
    update(saga)
    .where(
        saga.c.id == bindparam("sid"),
        saga.c.status.in_(_FINISHED),
        ~exists().where(
            saga_step.c.saga_id == bindparam("sid"), saga_step.c.status.not_in(STEP_DONE)
        ),
    )
    .values(status=S.COMPLETED, updated_at=bindparam("now"), finished_at=bindparam("now"))
    .returning(saga.c.created_at)
)


@cache
def _claim(is_pivot: bool, past_pivot: bool, with_deps: bool) -> Any:
    """PENDING (or RUNNING with an expired lease) -> RUNNING, as claim_step describes."""
    saga_ok = _saga_ok(past_pivot)
    fresh = saga_step.c.status == T.PENDING
    lost = (saga_step.c.status == T.RUNNING) & (saga_step.c.heartbeat_at <= bindparam("expired"))
    # A pivot that started before the deadline may have applied: a lost attempt is taken over
    # whatever the deadline (compensation is refused once it started).
    allowed = ((fresh & saga_ok) | (lost & _ACTIVE)) if is_pivot else ((fresh | lost) & saga_ok)
    deps_done = ~exists().where(
        saga_step.c.saga_id == bindparam("sid"),
        saga_step.c.name.in_(bindparam("deps", expanding=True)),
        saga_step.c.status.not_in(STEP_DONE),
    )
    return (
        update(saga_step)
        .where(
            STEP_KEY,
            saga_step.c.status.in_(_CLAIMED),
            allowed,
            *((deps_done,) if with_deps else ()),
        )
        .values(
            status=T.RUNNING,
            attempts=saga_step.c.attempts + 1,
            task_id=bindparam("claimer"),
            resume_token=None,
            heartbeat_at=bindparam("now"),
            started_at=func.coalesce(saga_step.c.started_at, bindparam("now")),
        )
        .returning(saga_step.c.attempts)
    )


class SagaStore(StartTransitions):
    """Creates its tables on first use. `SagaStore(url)` picks SQLite or PostgreSQL (whose
    hot statements have a fast path: postgres.py)."""

    def __new__(cls, url: str, **options: Any) -> SagaStore:
        if cls is SagaStore and make_url(url).get_backend_name() == "postgresql":
            from sagaq.store.postgres import PostgresStore

            return super().__new__(PostgresStore)
        return super().__new__(cls)

    # -- forward steps --------------------------------------------------------------------

    def claim_step(
        self,
        saga_id: str,
        step: str,
        *,
        deps: Sequence[str],
        wanted: Sequence[str],
        token: str,
        lease: float,
        past_pivot: bool = False,
        is_pivot: bool = False,
        worker: str | None = None,
    ) -> StepClaim:
        """May this attempt run the step? RUN when the step is PENDING (or its last attempt's
        lease expired), its dependencies are done and the saga is active and within its
        deadline (a step after the pivot ignores the deadline). The poll an attempt scheduled for
        itself (`token` matches its resume_token: a sub-saga step waiting for its child) resumes
        that attempt.

        Otherwise: DONE (completed before: return its result), WAIT (an attempt with a live
        lease holds it, or a dependency is not done yet), EXPIRED (the deadline passed) or STOP
        (the saga moved on). A refused claim never changes anything."""
        now = self.clock()
        params = {
            "sid": saga_id,
            "step": step,
            "now": now,
            "expired": now - lease,
            "deps": list(deps),
            "token": token,
            "claimer": task_of(token),
            "wanted": sorted({*wanted, *deps}),
        }
        with self._begin() as conn:
            if is_pivot:  # serialize with cancel/deadline, which refuse once the pivot started
                # (updated_at unchanged: a pivot polling for a dependency is no sign of life,
                # or the sweeper would never see the saga stalled and re-publish what was lost)
                conn.execute(_LOCK_ACTIVE_SAGA, params)
            # A resume token is always a retry's (Delivery.next_token, "#1" or more): a first
            # delivery cannot resume anything, which spares the statement on the common path.
            mine = None
            if not token.endswith("#0"):
                mine = conn.execute(_resume(past_pivot), params).first()
            if mine is not None:
                rows = conn.execute(STEP_INPUTS, params).all()
                return run_claim(rows, deps, mine.attempts, resumed=True)
            row = conn.execute(_claim(is_pivot, past_pivot, bool(deps)), params).first()
            if row is None:
                return self._refused_claim(
                    conn, saga_id, step, deps, now, lease, past_pivot, is_pivot=is_pivot
                )
            self._event(
                conn,
                saga_id,
                "step",
                now,
                step=step,
                status=T.RUNNING,
                attempt=row.attempts,
                worker=worker,
                task_id=task_of(token),
            )
            rows = conn.execute(STEP_INPUTS, params).all()
            return run_claim(rows, deps, row.attempts)

    def _refused_claim(
        self,
        conn: Connection,
        saga_id: str,
        step: str,
        deps: Sequence[str],
        now: float,
        lease: float,
        past_pivot: bool,
        *,
        is_pivot: bool = False,
    ) -> StepClaim:
        row = conn.execute(
            select(
                saga_step.c.status,
                saga_step.c.result,
                saga_step.c.heartbeat_at,
                saga.c.status.label("saga_status"),
                saga.c.deadline_at,
            )
            .join(saga, saga.c.id == saga_step.c.saga_id)
            .where(step_key(saga_id, step))
        ).first()
        if row is None:
            return StepClaim(Claim.STOP)
        if row.status == T.COMPLETED:
            return StepClaim(Claim.DONE, result=row.result)
        if row.saga_status not in SAGA_ACTIVE:
            return StepClaim(Claim.STOP)
        expired = row.deadline_at is not None and row.deadline_at <= now
        started_pivot = is_pivot and row.status == T.RUNNING  # it runs on, deadline or not
        if expired and not past_pivot and not started_pivot:
            return StepClaim(Claim.EXPIRED)
        if row.status == T.RUNNING:
            return StepClaim(Claim.WAIT, retry_in=max(0.05, row.heartbeat_at + lease - now))
        if row.status == T.PENDING:  # a dependency is not done yet (a duplicate ran ahead)
            return StepClaim(Claim.WAIT, retry_in=0.1)
        return StepClaim(Claim.STOP)

    def heartbeat(self, saga_id: str, step: str, attempt: int, *, compensation: bool) -> bool:
        """The attempt is alive: renew its lease. False when it no longer holds the step."""
        status, counter = (
            (T.COMPENSATING, saga_step.c.compensation_attempts)
            if compensation
            else (T.RUNNING, saga_step.c.attempts)
        )
        with self._begin() as conn:
            done = conn.execute(
                update(saga_step)
                .where(step_key(saga_id, step), saga_step.c.status == status, counter == attempt)
                .values(heartbeat_at=self.clock())
            )
        return done.rowcount == 1

    def poll_step(
        self, saga_id: str, step: str, attempt: int, delay: float, next_token: str
    ) -> bool:
        """A sub-saga step keeps its attempt while it waits `delay` s for its child; only the
        poll it sends itself (`next_token`) may resume it."""
        with self._begin() as conn:
            done = conn.execute(
                update(saga_step)
                .where(
                    step_key(saga_id, step),
                    saga_step.c.status == T.RUNNING,
                    saga_step.c.attempts == attempt,
                )
                .values(heartbeat_at=self.clock() + delay, resume_token=next_token)
            )
        return done.rowcount == 1

    def retry_step(
        self,
        saga_id: str,
        step: str,
        attempt: int,
        error: str,
        delay: float,
        *,
        task_id: str | None = None,
    ) -> bool:
        """The attempt failed cleanly and another follows in `delay` s: RUNNING->PENDING, its
        lease reserved until then. If the saga stopped meanwhile the step is FAILED instead
        (a clean failure changed nothing). True when the retry should be sent."""
        now = self.clock()
        mine = (saga_step.c.attempts == attempt) & saga_step.c.status.in_(_RETRY_LATER)
        active = exists().where(saga.c.id == saga_id, saga.c.status.in_(SAGA_ACTIVE))
        with self._begin() as conn:
            self._lock_saga(conn, saga_id)
            later = conn.execute(
                update(saga_step)
                .where(step_key(saga_id, step), mine, active)
                .values(status=T.PENDING, error=error, heartbeat_at=now + delay)
            )
            if later.rowcount == 1:
                self._event(
                    conn,
                    saga_id,
                    "attempt",
                    now,
                    step=step,
                    attempt=attempt,
                    error=error,
                    task_id=task_id,
                )
                return True
            stopped = conn.execute(
                update(saga_step)
                .where(step_key(saga_id, step), mine)
                .values(
                    status=T.FAILED,
                    error=f"not retried, the saga stopped: {error}",
                    finished_at=now,
                )
            )
            if stopped.rowcount == 1:
                self._event(
                    conn,
                    saga_id,
                    "step",
                    now,
                    step=step,
                    status=T.FAILED,
                    attempt=attempt,
                    task_id=task_id,
                )
                self._try_finish_compensation(conn, saga_id, now)
        return False

    def complete_step(
        self,
        saga_id: str,
        step: str,
        attempt: int,
        result: Any,
        data: dict[str, Any] | None = None,
        *,
        status: StepStatus = T.COMPLETED,
        duration_ms: float | None = None,
        task_id: str | None = None,
    ) -> tuple[bool, bool]:
        """RUNNING->COMPLETED (or SKIPPED) for the attempt that holds the step, then the saga
        ->COMPLETED if that was its last step. Returns (step done, saga done). A step that
        completes after its saga began compensating is recorded all the same: its
        compensation is waiting for it."""
        now = self.clock()
        params = {
            "sid": saga_id,
            "step": step,
            "attempt": attempt,
            "now": now,
            "b_result": result,
            "b_data": data,
        }
        with self._begin() as conn:
            done = conn.execute(_complete(status), params)
            if done.rowcount != 1:
                return False, False
            self._event(
                conn,
                saga_id,
                "step",
                now,
                step=step,
                status=status,
                attempt=attempt,
                duration_ms=duration_ms,
                task_id=task_id,
            )
            return True, self._count_down(conn, saga_id, now)

    def _count_down(self, conn: Connection, saga_id: str, now: float) -> bool:
        """One forward step fewer to go; the last one finishes the saga."""
        left = conn.execute(_COUNT_DOWN, {"sid": saga_id}).scalar()
        return left == 0 and self._try_finish(conn, saga_id, now)

    def _try_finish(self, conn: Connection, saga_id: str, now: float) -> bool:
        done = conn.execute(_FINISH, {"sid": saga_id, "now": now}).first()
        if done is None:
            return False
        took = round((now - done.created_at) * 1000, 3)
        self._event(conn, saga_id, "saga", now, status=S.COMPLETED, duration_ms=took)
        self._finished(conn, saga_id)
        return True

    def finish_saga(self, saga_id: str) -> bool:
        """Active->COMPLETED, only when every step is COMPLETED or SKIPPED."""
        with self._begin() as conn:
            return self._try_finish(conn, saga_id, self.clock())

    def fail_step(
        self,
        saga_id: str,
        step: str,
        attempt: int,
        error: str,
        *,
        applied: bool = False,
        result: Any = None,
        forward: bool = False,
        task_id: str | None = None,
    ) -> bool:
        """The attempt failed for good: RUNNING->FAILED. `applied`: its effect may have
        happened (timeout, unserializable result), so it is compensated like a completed step.
        `forward` (a step after the pivot): the saga is FAILED for an operator, nothing is
        undone. False when this attempt no longer holds the step."""
        now = self.clock()
        with self._begin() as conn:
            self._lock_saga(conn, saga_id)
            done = conn.execute(
                update(saga_step)
                .where(
                    step_key(saga_id, step),
                    saga_step.c.status.in_(_GAVE_UP),
                    saga_step.c.attempts == attempt,
                )
                .values(
                    status=T.FAILED, error=error, applied=applied, result=result, finished_at=now
                )
            )
            if done.rowcount != 1:
                return False
            self._event(
                conn,
                saga_id,
                "step",
                now,
                step=step,
                status=T.FAILED,
                attempt=attempt,
                error=error,
                task_id=task_id,
            )
            if forward:
                message = forward_failure(saga_id, step, error)
                moved = conn.execute(
                    update(saga)
                    .where(saga.c.id == saga_id, saga.c.status.in_(_FAILED_FORWARD))
                    .values(
                        status=S.FAILED,
                        failed_step=step,
                        error=message,
                        updated_at=now,
                        finished_at=now,
                    )
                )
                if moved.rowcount == 1:
                    self._event(conn, saga_id, "saga", now, status=S.FAILED, error=message)
                    self._finished(conn, saga_id)
            else:
                self._try_finish_compensation(conn, saga_id, now)  # a late sibling
        return True

    # -- operator: retry after the pivot ----------------------------------------------------

    def resume_forward(
        self, saga_id: str, *, actor: str | None = None, reason: str | None = None
    ) -> list[str] | None:
        """FAILED after the pivot -> RUNNING again; failed and skipped steps back to PENDING
        with a fresh retry budget. Returns the steps still to run, or None if the saga is not
        in that state."""
        now = self.clock()
        steps = saga_step.c.saga_id == saga_id
        with self._begin() as conn:
            won = conn.execute(
                update(saga)
                .where(
                    saga.c.id == saga_id,
                    saga.c.status.in_(_RESUMED),
                    saga.c.cause.is_(None),  # not a compensation that gave up
                    exists().where(steps, saga_step.c.status == T.FAILED),
                )
                .values(status=S.RUNNING, error=None, updated_at=now, finished_at=None)
            )
            if won.rowcount != 1:
                return None
            # A step its `when` skipped ran (attempts > 0) and stays skipped: put back, a step
            # before the pivot could never run again once the deadline passed.
            never_ran = (saga_step.c.status != T.SKIPPED) | (saga_step.c.attempts == 0)
            conn.execute(
                update(saga_step)
                .where(steps, saga_step.c.status.in_(_RESET), never_ran)
                .values(status=T.PENDING, attempts=0, error=None, heartbeat_at=None)
            )
            left = (
                select(func.count())
                .where(steps, saga_step.c.status.not_in(STEP_DONE))
                .scalar_subquery()
            )
            conn.execute(update(saga).where(saga.c.id == saga_id).values(steps_left=left))
            self._event(conn, saga_id, "operator", now, status="RETRY", actor=actor, reason=reason)
            self._event(conn, saga_id, "saga", now, status=S.RUNNING)
            # RUNNING too: an attempt whose worker died while the saga was FAILED holds its
            # step until its lease runs out; its new message takes it over then.
            names = conn.execute(
                select(saga_step.c.name).where(
                    steps, saga_step.c.status.in_((T.PENDING, T.RUNNING))
                )
            )
            return list(names.scalars())


def forward_failure(saga_id: str, step: str, error: str) -> str:
    """The error of a saga whose step failed for good after the pivot."""
    return (
        f"step {step!r} failed after the pivot step (nothing is undone past it); fix the "
        f"cause and run `sagaq retry {saga_id}`: {error}"
    )
