"""SagaQ: register sagas, start them, read their state. What web apps and the CLI call."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery

from sagaq.compiler import compile_saga
from sagaq.definition.saga import Saga
from sagaq.errors import (
    BrokerUnavailableError,
    DefinitionError,
    SagaNotFoundError,
    SagaTimeoutError,
    UnknownSagaError,
)
from sagaq.observability.events import EventBus, EventType, SagaEvent
from sagaq.runtime import Runtime, install_control_tasks, install_saga_tasks, publish
from sagaq.status import SagaStatus, StepStatus
from sagaq.store import SagaRecord, SagaStore, StepRecord


@dataclass(frozen=True)
class StepResult:
    name: str
    status: StepStatus
    attempts: int
    result: Any
    error: str | None
    duration_ms: float | None
    compensation_attempts: int
    compensation_error: str | None


@dataclass(frozen=True)
class SagaResult:
    """A saga as the store sees it right now."""

    id: str
    saga: str
    status: SagaStatus
    input: dict[str, Any]
    steps: tuple[StepResult, ...]
    failed_step: str | None
    compensated_steps: tuple[str, ...]  # in the order their compensations finished
    error: str | None
    duration_ms: float | None
    created_at: float

    @property
    def results(self) -> dict[str, Any]:
        """Results of the steps that completed (and were not undone)."""
        return {s.name: s.result for s in self.steps if s.status == StepStatus.COMPLETED}

    def step(self, name: str) -> StepResult:
        return next(s for s in self.steps if s.name == name)

    @classmethod
    def from_record(cls, record: SagaRecord) -> SagaResult:
        undone = sorted(
            (s for s in record.steps if s.status == StepStatus.COMPENSATED),
            key=lambda s: s.compensated_at or 0.0,
        )
        return cls(
            id=record.id,
            saga=record.name,
            status=record.status,
            input=record.input,
            steps=tuple(_step_result(s) for s in record.steps),
            failed_step=record.failed_step,
            compensated_steps=tuple(s.name for s in undone),
            error=record.error,
            duration_ms=_ms(record.created_at, record.finished_at),
            created_at=record.created_at,
        )


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round((end - start) * 1000, 3)


def _step_result(s: StepRecord) -> StepResult:
    return StepResult(
        name=s.name,
        status=s.status,
        attempts=s.attempts,
        result=s.result,
        error=s.error,
        duration_ms=_ms(s.started_at, s.finished_at),
        compensation_attempts=s.compensation_attempts,
        compensation_error=s.compensation_error,
    )


class SagaHandle:
    """Returned by `start()` at once; `wait()` blocks until the saga is finished."""

    def __init__(self, engine: SagaQ, saga_id: str, created: bool) -> None:
        self.engine = engine
        self.id = saga_id
        self.created = created  # False when an idempotency key matched an existing saga

    def __repr__(self) -> str:
        return f"SagaHandle({self.id!r})"

    def status(self) -> SagaResult:
        return self.engine.status(self.id)

    def wait(self, timeout: float = 30.0) -> SagaResult:
        return self.engine.wait(self.id, timeout)


class SagaQ:
    """The engine: a Celery app, a store, and the sagas registered with them."""

    def __init__(self, app: Celery, store: str | SagaStore) -> None:
        self.app = app
        self.store = store if isinstance(store, SagaStore) else SagaStore(store)
        self.sagas: dict[str, Saga] = {}
        self.events = EventBus()
        self.runtime = Runtime(app, self.store, self.events, self.sagas)
        install_control_tasks(self.runtime)

    def register(self, *sagas: Saga) -> None:
        """Validate each saga and create its Celery tasks (`<saga>.<step>`)."""
        for saga in sagas:
            known = self.sagas.get(saga.name)
            if known is saga:
                continue
            if known is not None:
                raise DefinitionError(f"another saga named {saga.name!r} is already registered")
            saga.validate()
            install_saga_tasks(self.runtime, saga)
            self.sagas[saga.name] = saga

    def queues(self) -> list[str]:
        """Every queue the registered sagas use (what a single worker must consume)."""
        names = {saga.queue for saga in self.sagas.values()}
        for saga in self.sagas.values():
            names |= {step.queue or saga.queue for step in saga.steps.values()}
        return sorted(names)

    def saga(self, name: str) -> Saga:
        try:
            return self.sagas[name]
        except KeyError:
            raise UnknownSagaError(name, list(self.sagas)) from None

    def start(
        self, name: str, input: Any = None, *, idempotency_key: str | None = None
    ) -> SagaHandle:
        """Validate, record (one transaction), then publish. Returns without waiting.

        A repeated idempotency key returns the existing saga. Bad input raises
        InvalidInputError with nothing written; a broker that is down raises
        BrokerUnavailableError and the saga is removed again, so nothing half-started remains.
        """
        saga = self.saga(name)
        data = saga.parse_input({} if input is None else input)
        saga_id, created = self.store.create_saga(
            str(uuid.uuid4()), name, data, saga.order(), idempotency_key
        )
        if created:
            try:
                publish(compile_saga(saga, saga_id, self.app))
            except BrokerUnavailableError as exc:
                self.store.delete_saga(saga_id)
                raise BrokerUnavailableError(f"saga {name!r} was not started: {exc}") from exc
            self.store.mark_published(saga_id)
            self.events.emit(SagaEvent(EventType.SAGA_STARTED, saga_id, name))
        return SagaHandle(self, saga_id, created)

    def status(self, saga_id: str) -> SagaResult:
        record = self.store.get(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        return SagaResult.from_record(record)

    def wait(self, saga_id: str, timeout: float = 30.0) -> SagaResult:
        """Poll the store until the saga is COMPLETED, COMPENSATED or FAILED."""
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            result = self.status(saga_id)
            if result.status.is_terminal:
                return result
            if time.monotonic() >= deadline:
                raise SagaTimeoutError(
                    f"saga {saga_id} is still {result.status} after {timeout:g}s"
                )
            time.sleep(pause)
            pause = min(pause * 1.5, 0.1)

    def list(
        self,
        *,
        status: SagaStatus | None = None,
        saga: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[SagaResult]:
        records = self.store.list_sagas(status=status, name=saga, since=since, limit=limit)
        return [SagaResult.from_record(r) for r in records]
