"""The Celery tasks sagaq registers: one per step, one per compensation (every step has one:
a step still running when compensation begins is waited for by it), the errback, and the two
finalizers. Each task only translates its body's Outcome into Celery's terms."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Ignore

from sagaq.compiler import (
    COMPENSATION_DONE_TASK,
    SAGA_DONE_TASK,
    STEP_FAILED_TASK,
    compensation_task_name,
    step_task_name,
)
from sagaq.definition.saga import Saga, Step
from sagaq.observability.events import EventType
from sagaq.runtime.base import Delivery, Fail, Halt, Outcome, Proceed, Retry, Runtime
from sagaq.runtime.control import on_step_failed
from sagaq.runtime.steps import execute_step
from sagaq.runtime.undo import execute_compensation


def delivery_of(task: Task[Any, Any]) -> Delivery:
    return Delivery(task_id=str(task.request.id), retries=int(task.request.retries or 0))


def carry_out(task: Task[Any, Any], outcome: Outcome) -> Any:
    if isinstance(outcome, Proceed):
        return outcome.value
    if isinstance(outcome, Retry):
        raise task.retry(countdown=outcome.delay, exc=outcome.error, max_retries=None)
    if isinstance(outcome, Fail):
        raise outcome.error
    assert isinstance(outcome, Halt)
    raise Ignore()  # acked; no callback, no errback: the canvas does not go on from here


def install_control_tasks(rt: Runtime) -> None:
    """The errback and the finalizers, shared by every saga."""

    @rt.app.task(
        name=STEP_FAILED_TASK, bind=True, ignore_result=True, max_retries=None, shared=False
    )
    def step_failed(task: Task[Any, None], *, saga_id: str, saga: str, step: str) -> None:
        # Keyword-only, so Celery sends this errback as a message instead of calling it inline.
        outcome = on_step_failed(rt, rt.sagas[saga], saga_id, step)
        if not isinstance(outcome, Halt):  # nothing follows an errback: Halt is a plain return
            carry_out(task, outcome)  # (Celery's Ignore would capture a traceback for nothing)

    # Kept for canvases that end in a group: every step completion already tries to finish.
    @rt.app.task(name=SAGA_DONE_TASK, ignore_result=True, shared=False)
    def saga_done(*, saga_id: str, saga: str) -> None:
        if rt.store.finish_saga(saga_id):
            rt.emit(EventType.SAGA_COMPLETED, saga_id, saga)

    @rt.app.task(name=COMPENSATION_DONE_TASK, ignore_result=True, shared=False)
    def compensation_done(*, saga_id: str, saga: str) -> None:
        if rt.store.finish_compensation(saga_id):
            rt.emit(EventType.SAGA_COMPENSATED, saga_id, saga)


def install_saga_tasks(rt: Runtime, saga: Saga) -> None:
    for step in saga.steps.values():
        _install_step_task(rt, saga, step)
        _install_compensation_task(rt, saga, step)


def _install_step_task(rt: Runtime, saga: Saga, step: Step) -> None:
    @rt.app.task(
        name=step_task_name(saga.name, step.name),
        bind=True,
        max_retries=None,
        shared=False,
        ignore_result=rt.skip_result_backend,
    )
    def run_step(task: Task[Any, Any], *, saga_id: str, final: bool = False) -> Any:
        # `final` is a hint older canvases carry; every completion tries to finish the saga.
        return carry_out(task, execute_step(rt, saga, step, saga_id, delivery_of(task)))


def _install_compensation_task(rt: Runtime, saga: Saga, step: Step) -> None:
    @rt.app.task(
        name=compensation_task_name(saga.name, step.name),
        bind=True,
        max_retries=None,
        shared=False,
        ignore_result=rt.skip_result_backend,
    )
    def run_compensation(task: Task[Any, Any], *, saga_id: str, final: bool = False) -> Any:
        return carry_out(task, execute_compensation(rt, saga, step, saga_id, delivery_of(task)))
