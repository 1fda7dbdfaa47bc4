"""The recovery pass. Celery redelivers most lost work by itself (acks_late); the sweeper
catches what it cannot: a publish lost after the commit, a chain whose next message vanished,
a step whose worker died for good (its lease ran out), a compensation that stopped, an errback
that was lost, a saga past its deadline. It re-publishes the remaining work from the SQL state;
the store's claims make a duplicate harmless (completed steps never run again, an attempt whose
lease is alive is never run twice), so re-publishing is safe even when the sweeper is wrong
about a saga being stalled. A saga reaches its terminal state without a sweep: the sweeper
only repairs losses."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sagaq.compiler import compile_compensation, compile_saga
from sagaq.definition.saga import Saga
from sagaq.runtime.base import Retry, Runtime
from sagaq.runtime.control import on_step_failed
from sagaq.runtime.launch import pivot_of, start_compensation
from sagaq.status import SAGA_ACTIVE, SagaStatus, StepStatus, needs_undo
from sagaq.store import SagaRecord

log = logging.getLogger("sagaq.sweeper")

PAGE = 500  # sagas examined per pass; the next pass goes on where this one stopped


@dataclass
class SweepReport:
    examined: int = 0
    republished: int = 0  # sagas whose publish was lost: sent again
    resumed: int = 0  # running sagas that had stalled: remaining steps sent again
    lost_steps: int = 0  # steps whose worker died (lease expired): sent again
    compensations_resumed: int = 0  # compensations that had stalled: sent again
    deadlines: int = 0  # sagas past their deadline: compensation started
    failures: int = 0  # steps failed for good whose errback was lost: compensation started
    errors: int = 0  # sagas whose recovery raised (logged; the pass went on)


def sweep(
    rt: Runtime, *, stall_after: float | None = None, now: float | None = None, page: int = PAGE
) -> SweepReport:
    """One pass over (a page of) unfinished sagas with no sign of life (a claim, a heartbeat,
    a completion) for `stall_after` seconds - by default one lease, three missed heartbeats."""
    now = rt.store.clock() if now is None else now
    stall_after = rt.lease if stall_after is None else stall_after
    report = SweepReport()
    records = rt.store.unfinished(
        created_before=now - stall_after, after=rt.sweep_cursor, limit=page
    )
    rt.sweep_cursor = (records[-1].created_at, records[-1].id) if len(records) == page else None
    for record in records:
        report.examined += 1
        try:
            _examine(rt, record, now, stall_after, report)
        except Exception:
            report.errors += 1
            log.exception("sweep: recovering saga %s failed; the pass goes on", record.id)
    return report


def _examine(
    rt: Runtime, record: SagaRecord, now: float, stall_after: float, report: SweepReport
) -> None:
    saga = rt.sagas.get(record.name)
    if saga is None:
        log.warning("saga %s: %r is not registered here; skipped", record.id, record.name)
        return
    active = record.status in SAGA_ACTIVE
    pivot = pivot_of(saga)
    started_pivot = pivot is not None and record.step(pivot).status in (
        StepStatus.RUNNING,
        StepStatus.COMPLETED,
    )
    expired = record.deadline_at is not None and record.deadline_at <= now
    if active and expired and not started_pivot:
        begun = start_compensation(
            rt, saga, record.id, cause="deadline", reason="deadline exceeded"
        )
        report.deadlines += begun.steps is not None
        return
    if now - _last_activity(record) < stall_after:
        return  # something happened recently (a heartbeat, a claim): not stalled
    if active:
        _resume_forward(rt, record, report)
    elif record.status == SagaStatus.COMPENSATING:
        _resume_compensation(rt, record, report)


def _last_activity(record: SagaRecord) -> float:
    times = [record.updated_at]
    for s in record.steps:
        times += [
            t
            for t in (s.started_at, s.finished_at, s.heartbeat_at, s.compensated_at)
            if t is not None
        ]
    return max(times)


def _resume_forward(rt: Runtime, record: SagaRecord, report: SweepReport) -> None:
    saga = rt.sagas[record.name]
    failed = next((s.name for s in record.steps if s.status == StepStatus.FAILED), None)
    if failed is not None and failed not in saga.after_pivot():
        # It failed for good but its errback was lost (with the broker): do what it would do.
        if rt.store.touch(record.id, record.updated_at, f"errback of {failed} lost"):
            log.warning("saga %s: step %s failed, errback lost", record.id, failed)
            if isinstance(on_step_failed(rt, saga, record.id, failed), Retry):
                # wait-all: it waits for siblings, but the saga stalled, so their messages
                # were lost too: send them again (a later pass compensates once they ended).
                _resume_siblings(rt, saga, record)
            report.failures += 1
        return
    remaining = [
        s.name for s in record.steps if s.status in (StepStatus.PENDING, StepStatus.RUNNING)
    ]
    if not remaining:
        rt.store.finish_saga(record.id)
        return
    if not rt.store.touch(record.id, record.updated_at, f"re-published {', '.join(remaining)}"):
        return  # another sweeper took this saga
    log.warning("saga %s stalled in %s: re-publishing %s", record.id, record.status, remaining)
    rt.send(compile_saga(saga, record.id, rt.app, steps=remaining))
    if record.status == SagaStatus.PENDING:
        rt.store.mark_published(record.id)  # a saga recorded by an older sagaq
    if all(s.status == StepStatus.PENDING and s.attempts == 0 for s in record.steps):
        report.republished += 1  # nothing of it ever ran: its publish was lost
        return
    report.resumed += 1
    report.lost_steps += sum(s.status == StepStatus.RUNNING for s in record.steps)


def _resume_siblings(rt: Runtime, saga: Saga, record: SagaRecord) -> None:
    """Re-publish the unfinished steps that depend on no failed step."""
    failed = {s.name for s in record.steps if s.status == StepStatus.FAILED}
    ancestors = saga.plan.ancestors
    siblings = [
        s.name
        for s in record.steps
        if s.status in (StepStatus.PENDING, StepStatus.RUNNING) and not ancestors[s.name] & failed
    ]
    if siblings:
        log.warning("saga %s stalled waiting for %s: re-publishing them", record.id, siblings)
        rt.send(compile_saga(saga, record.id, rt.app, steps=siblings))


def _resume_compensation(rt: Runtime, record: SagaRecord, report: SweepReport) -> None:
    saga = rt.sagas[record.name]
    undo = [
        s.name
        for s in record.steps
        if s.status in (StepStatus.RUNNING, StepStatus.COMPENSATING)
        or needs_undo(s.status, s.undoable, s.applied)
    ]
    action = f"compensation resumed: {', '.join(undo)}"
    if not rt.store.touch(record.id, record.updated_at, action):
        return
    if not undo:
        rt.store.finish_compensation(record.id)
        return
    log.warning("saga %s compensation stalled: re-publishing %s", record.id, undo)
    rt.send(compile_compensation(saga, record.id, undo, rt.app))
    report.compensations_resumed += 1


SWEEP_TASK = "sagaq.sweep"


def install_sweep_task(rt: Runtime) -> None:
    """`sagaq.sweep`, for Celery beat (see beat_schedule in celeryconfig.py)."""

    @rt.app.task(name=SWEEP_TASK, ignore_result=True, shared=False)
    def periodic_sweep() -> None:
        report = sweep(rt)
        if report.examined:
            log.info("sweep: %s", report)
