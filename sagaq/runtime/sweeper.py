"""The recovery pass. Celery redelivers most lost work by itself (acks_late); the sweeper
catches what it cannot: a publish lost after the commit, a chain whose next message vanished,
a step whose worker died for good, a compensation that stopped, a saga past its deadline.
It re-publishes exactly the remaining work, from the SQL state; completed steps are never run
again (their claim says DONE)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sagaq.compiler import compile_compensation, compile_saga
from sagaq.runtime.base import Runtime, publish
from sagaq.runtime.launch import start_compensation
from sagaq.runtime.tasks import step_lease
from sagaq.status import SagaStatus, StepStatus
from sagaq.store import SagaRecord

log = logging.getLogger("sagaq.sweeper")


@dataclass
class SweepReport:
    examined: int = 0
    republished: int = 0  # sagas whose publish was lost: sent again
    resumed: int = 0  # running sagas that had stalled: remaining steps sent again
    lost_steps: int = 0  # steps whose worker died (lease expired): sent again
    compensations_resumed: int = 0  # compensations that had stalled: sent again
    deadlines: int = 0  # sagas past their deadline: compensation started
    failures: int = 0  # steps failed for good whose errback was lost: compensation started


def sweep(rt: Runtime, *, stall_after: float = 30.0, now: float | None = None) -> SweepReport:
    """One pass over unfinished sagas older than `stall_after` seconds."""
    now = time.time() if now is None else now
    report = SweepReport()
    for record in rt.store.unfinished(created_before=now - stall_after):
        report.examined += 1
        saga = rt.sagas.get(record.name)
        if saga is None:
            log.warning("saga %s: %r is not registered here; skipped", record.id, record.name)
            continue
        active = record.status in (SagaStatus.PENDING, SagaStatus.RUNNING)
        if active and record.deadline_at is not None and record.deadline_at <= now:
            if start_compensation(rt, saga, record.id, reason="deadline exceeded"):
                report.deadlines += 1
            continue
        if now - _last_activity(record) < stall_after:
            continue  # something happened recently: not stalled
        if active:
            _resume_forward(rt, record, now, report)
        elif record.status == SagaStatus.COMPENSATING:
            _resume_compensation(rt, record, now, report)
    return report


def _last_activity(record: SagaRecord) -> float:
    times = [record.updated_at]
    for s in record.steps:
        times += [
            t
            for t in (s.started_at, s.finished_at, s.compensation_started_at, s.compensated_at)
            if t is not None
        ]
    return max(times)


def _resume_forward(rt: Runtime, record: SagaRecord, now: float, report: SweepReport) -> None:
    saga = rt.sagas[record.name]
    remaining = [s for s in record.steps if s.status in (StepStatus.PENDING, StepStatus.RUNNING)]
    running = [s for s in remaining if s.status == StepStatus.RUNNING]
    alive = [s for s in running if now - (s.started_at or now) < step_lease(saga.steps[s.name])]
    if alive or not rt.store.touch(record.id, record.updated_at):
        return  # a step is still within its lease, or another sweeper took this saga
    failed = next((s.name for s in record.steps if s.status == StepStatus.FAILED), None)
    if failed is not None and failed not in saga.after_pivot():
        # It failed for good but its errback was lost (with the broker): running the steps
        # after it would be wrong. Compensate, as the errback would have.
        log.warning("saga %s: step %s failed, errback lost: compensating", record.id, failed)
        report.failures += start_compensation(rt, saga, record.id, failed_step=failed)
        return
    names = [s.name for s in remaining]
    log.warning("saga %s stalled in %s: re-publishing %s", record.id, record.status, names)
    publish(compile_saga(saga, record.id, rt.app, steps=names))
    if record.status == SagaStatus.PENDING:
        rt.store.mark_published(record.id)
        if all(s.status == StepStatus.PENDING for s in record.steps):
            report.republished += 1
            return
    report.resumed += 1
    report.lost_steps += len(running)


def _resume_compensation(rt: Runtime, record: SagaRecord, now: float, report: SweepReport) -> None:
    saga = rt.sagas[record.name]
    undo = [
        s.name
        for s in record.steps
        if s.status in (StepStatus.COMPLETED, StepStatus.COMPENSATING, StepStatus.RUNNING)
    ]
    if not rt.store.touch(record.id, record.updated_at):
        return
    log.warning("saga %s compensation stalled: re-publishing %s", record.id, undo)
    publish(compile_compensation(saga, record.id, undo, rt.app))
    report.compensations_resumed += 1


SWEEP_TASK = "sagaq.sweep"


def install_sweep_task(rt: Runtime) -> None:
    """`sagaq.sweep`, for Celery beat (see beat_schedule in celeryconfig.py)."""

    @rt.app.task(name=SWEEP_TASK, ignore_result=True, shared=False)
    def periodic_sweep() -> None:
        report = sweep(rt)
        if report.examined:
            log.info("sweep: %s", report)
