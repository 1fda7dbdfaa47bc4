"""SagaQ: register sagas, start them, read their state. What web apps and the CLI call."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery

from sagaq.compiler import compile_compensation, compile_saga
from sagaq.definition.saga import Saga
from sagaq.errors import (
    DefinitionError,
    InvalidInputError,
    InvalidStateError,
    SagaNotFoundError,
    SagaTimeoutError,
    UnknownSagaError,
)
from sagaq.observability.events import EventBus
from sagaq.runtime import (
    Runtime,
    SweepReport,
    install_control_tasks,
    install_saga_tasks,
    install_sweep_task,
    publish,
    start_compensation,
    start_saga,
    sweep,
)
from sagaq.runtime.kombu_fix import patch_kombu_redis_close
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


# Inputs travel in SQL rows and are read by every step: keep them small (put blobs elsewhere).
MAX_INPUT_BYTES = 256 * 1024


def _as_saga(definition: object) -> Saga:
    found = definition if isinstance(definition, Saga) else getattr(definition, "__saga__", None)
    if not isinstance(found, Saga):
        raise DefinitionError(f"{definition!r} is not a Saga (nor a Tcc or an @saga class)")
    return found


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

    def __init__(
        self, app: Celery, store: str | SagaStore, *, max_input_bytes: int = MAX_INPUT_BYTES
    ) -> None:
        patch_kombu_redis_close()  # workers survive a Redis restart (see kombu_fix.py)
        self.app = app
        self.max_input_bytes = max_input_bytes
        self.store = store if isinstance(store, SagaStore) else SagaStore(store)
        self.sagas: dict[str, Saga] = {}
        self.events = EventBus()
        self.runtime = Runtime(app, self.store, self.events, self.sagas)
        install_control_tasks(self.runtime)
        install_sweep_task(self.runtime)

    def register(self, *definitions: Saga | object) -> None:
        """Validate each saga and create its Celery tasks (`<saga>.<step>`). Takes Saga
        objects, Tcc transactions and `@saga` classes. A saga that runs sub-sagas is registered
        with or after them."""
        sagas = [_as_saga(d) for d in definitions]
        known_names = set(self.sagas) | {s.name for s in sagas}
        for saga in sagas:
            for step in saga.steps.values():
                if step.sub_saga is not None and step.sub_saga not in known_names:
                    raise DefinitionError(
                        f"step {saga.name}.{step.name} runs sub-saga {step.sub_saga!r}, which is "
                        "not registered (register it first, or in the same call)"
                    )
        for saga in sagas:
            known = self.sagas.get(saga.name)
            if known is saga:
                continue
            if known is not None:
                raise DefinitionError(f"another saga named {saga.name!r} is already registered")
            saga.validate()
            self._check_visibility_timeout(saga)
            install_saga_tasks(self.runtime, saga)
            self.sagas[saga.name] = saga

    def _check_visibility_timeout(self, saga: Saga) -> None:
        """Redis redelivers a message that is not acked within the visibility timeout, even
        while its task still runs: a longer step would run twice at the same time."""
        if not str(self.app.conf.broker_url or "").startswith(("redis", "rediss")):
            return
        options = self.app.conf.broker_transport_options or {}
        visibility = float(options.get("visibility_timeout", 3600))
        for step in saga.steps.values():
            if step.timeout is None:
                continue
            if step.timeout + 60 >= visibility:  # 60 s: the longest retry countdown
                raise DefinitionError(
                    f"step {saga.name}.{step.name} may run {step.timeout:g}s (+60s retry "
                    f"delay), not less than the Redis visibility_timeout ({visibility:g}s): "
                    "Redis would deliver it again while it still runs. Raise "
                    "broker_transport_options['visibility_timeout'] (SAGAQ_VISIBILITY_TIMEOUT) "
                    "or lower the step timeout."
                )

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
        self,
        name: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> SagaHandle:
        """Validate, record (one transaction), then publish. Returns without waiting.

        `deadline` (seconds, default the saga's) compensates the saga if it is not done by
        then. `headers` (correlation id, tracing ids) reach every step as ctx.headers.

        A repeated idempotency key returns the existing saga. Bad input raises
        InvalidInputError with nothing written; a broker that is down raises
        BrokerUnavailableError and the saga is removed again, so nothing half-started remains.
        """
        saga = self.saga(name)
        data = saga.parse_input({} if input is None else input)
        size = len(json.dumps(data))
        if size > self.max_input_bytes:
            raise InvalidInputError(
                f"input for saga {name!r} is {size} bytes; the limit is {self.max_input_bytes} "
                "(store large payloads elsewhere and pass a reference)"
            )
        saga_id, created = start_saga(
            self.runtime,
            saga,
            data,
            idempotency_key=idempotency_key,
            deadline=deadline,
            headers=headers,
        )
        return SagaHandle(self, saga_id, created)

    def cancel(self, saga_id: str, reason: str = "cancelled") -> SagaResult:
        """Stop a saga and compensate what it completed. Steps not yet started never start;
        a step already running finishes and is then undone (Python code cannot be stopped
        safely mid-flight). Cancelling a finished saga raises InvalidStateError."""
        current = self.status(saga_id)
        saga = self.saga(current.saga)
        if not start_compensation(self.runtime, saga, saga_id, reason=f"cancelled: {reason}"):
            state = self.status(saga_id).status
            raise InvalidStateError(f"saga {saga_id} is {state}: there is nothing to cancel")
        return self.status(saga_id)

    def retry(self, saga_id: str) -> SagaResult:
        """Resume a FAILED saga: a compensation that gave up is tried again; a saga that
        failed after its pivot step runs its remaining steps again."""
        current = self.status(saga_id)
        saga = self.saga(current.saga)
        undo = self.store.resume_compensation(saga_id)
        if undo is not None:
            publish(compile_compensation(saga, saga_id, undo, self.app))
            return self.status(saga_id)
        remaining = self.store.resume_forward(saga_id)
        if remaining is not None:
            publish(compile_saga(saga, saga_id, self.app, steps=remaining))
            return self.status(saga_id)
        raise InvalidStateError(
            f"saga {saga_id} is {current.status}: only a FAILED saga can be retried"
        )

    def sweep(self, *, stall_after: float = 30.0) -> SweepReport:
        """One recovery pass: re-publish lost work, resume stalled compensations, enforce
        deadlines. Celery beat runs it as the `sagaq.sweep` task."""
        return sweep(self.runtime, stall_after=stall_after)

    def status(self, saga_id: str) -> SagaResult:
        record = self.store.get(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        return SagaResult.from_record(record)

    def wait(self, saga_id: str, timeout: float = 30.0) -> SagaResult:
        """Poll the store until the saga is COMPLETED, COMPENSATED or FAILED."""
        deadline = time.monotonic() + timeout
        started = time.monotonic()
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
            # Short sagas finish in tens of ms: poll every 10 ms for the first 2 s, then back off
            # (a status read is one indexed query, flat in table size).
            pause = min(pause * 1.5, 0.01 if time.monotonic() - started < 2 else 0.1)

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
