"""SagaQ: register sagas, start them, read their state. What web apps and the CLI call."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError

from sagaq.app_config import (
    adopt_default_queue,
    apply_safe_settings,
    check_saga_fits,
    install_worker_checks,
)
from sagaq.definition.saga import Saga
from sagaq.errors import (
    DefinitionError,
    IdempotencyConflictError,
    InvalidInputError,
    SagaNotFoundError,
    SagaTimeoutError,
    StoreUnavailableError,
    UnknownSagaError,
)
from sagaq.observability.events import EventBus
from sagaq.observability.metrics import install_worker_metrics
from sagaq.observability.tracing import install_tracing
from sagaq.retention import install_purge_task
from sagaq.runtime import (
    Runtime,
    SweepReport,
    cancel,
    install_control_tasks,
    install_saga_tasks,
    install_sweep_task,
    retry,
    start_saga,
    sweep,
)
from sagaq.runtime.kombu_fix import patch_kombu_redis_close
from sagaq.settings import Settings
from sagaq.status import SagaStatus, StepStatus
from sagaq.store import SagaRecord, SagaStore, StepRecord
from sagaq.store.history import SagaHistory


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
# The store's idempotency_key column is VARCHAR(200): longer keys are refused before any SQL.
MAX_IDEMPOTENCY_KEY_LENGTH = 200


def _as_saga(definition: object) -> Saga:
    found = definition if isinstance(definition, Saga) else getattr(definition, "__saga__", None)
    if not isinstance(found, Saga):
        raise DefinitionError(f"{definition!r} is not a Saga (nor a Tcc or an @saga class)")
    return found


def _check_start_options(
    idempotency_key: str | None, deadline: float | None, headers: dict[str, str] | None
) -> None:
    """Refuse what the store would reject (or mangle) before any SQL runs."""
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str) or not idempotency_key:
            raise InvalidInputError("idempotency_key must be a non-empty string")
        if len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            raise InvalidInputError(
                f"idempotency_key is {len(idempotency_key)} characters; the limit is "
                f"{MAX_IDEMPOTENCY_KEY_LENGTH}"
            )
    if deadline is not None and not deadline > 0:
        raise InvalidInputError(f"deadline must be > 0 seconds, got {deadline!r}")
    for key, value in (headers or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidInputError(
                f"header {key!r} must map a string to a string, got {type(value).__name__}"
            )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _store_failure(store: SagaStore, exc: SQLAlchemyError) -> str:
    """What a caller sees instead of a driver exception: the URL without its password."""
    reason = _first_line(getattr(exc, "orig", None) or exc)
    return f"the saga store {store.safe_url} is unavailable: {reason}"


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

    async def wait_async(self, timeout: float = 30.0) -> SagaResult:
        return await self.engine.wait_async(self.id, timeout)


class SagaQ:
    """The engine: a Celery app, a store, and the sagas registered with them."""

    def __init__(
        self,
        app: Celery,
        store: str | SagaStore,
        *,
        max_input_bytes: int = MAX_INPUT_BYTES,
        heartbeat: float | None = None,
        settings: Settings | None = None,
    ) -> None:
        """`app` may be a plain `Celery(...)`: it gets sagaq's safe settings where the user
        set none (see sagaq.app_config). `store`: a URL (nothing connects until first use) or
        a SagaStore. `heartbeat`: seconds between lease renewals of a running step (default
        SAGAQ_HEARTBEAT, 10); a step whose worker died is recovered after three missed beats.
        `settings` defaults to the SAGAQ_* environment."""
        patch_kombu_redis_close()  # workers survive a Redis restart (see kombu_fix.py)
        self.app = app
        self.max_input_bytes = max_input_bytes
        self.settings = settings or Settings()
        apply_safe_settings(app, self.settings)
        self.store = store if isinstance(store, SagaStore) else SagaStore(store)
        self.sagas: dict[str, Saga] = {}
        self.events = EventBus()
        beat = heartbeat if heartbeat is not None else self.settings.heartbeat
        self.runtime = Runtime(app, self.store, self.events, self.sagas, heartbeat=beat)
        install_control_tasks(self.runtime)
        install_sweep_task(self.runtime)
        install_purge_task(self)  # retention, for beat: see sagaq.retention.purge_schedule
        # Only act inside a worker of this app: log unsafe settings and unconsumed queues,
        # serve metrics when SAGAQ_METRICS_PORT is set.
        install_worker_checks(self)
        install_worker_metrics(self, self.settings.metrics_port)
        if self.settings.tracing:
            install_tracing(self)

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
            adopt_default_queue(self.app, saga)
            check_saga_fits(self.app, saga)
            saga.freeze()
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

        A repeated idempotency key returns the existing saga; with different input it raises
        IdempotencyConflictError. Bad input, keys over 200 characters, a deadline <= 0 and
        non-string headers raise InvalidInputError before any SQL. A broker that is down
        raises BrokerUnavailableError within SAGAQ_PUBLISH_TIMEOUT and the saga is removed
        again, so nothing half-started remains; a database error is StoreUnavailableError.
        """
        saga = self.saga(name)
        _check_start_options(idempotency_key, deadline, headers)
        data = self._valid_input(saga, input)
        existing: SagaRecord | None = None
        try:
            saga_id, created = start_saga(
                self.runtime,
                saga,
                data,
                idempotency_key=idempotency_key,
                deadline=deadline,
                headers=headers,
            )
            if not created:
                existing = self.store.get(saga_id)
        except SQLAlchemyError as exc:
            raise StoreUnavailableError(_store_failure(self.store, exc)) from None
        # Compared in their stored (JSON) form, so {"a": 1} and a model dumping to it match.
        if existing is not None and existing.input != data:
            raise IdempotencyConflictError(idempotency_key or "", saga_id)
        return SagaHandle(self, saga_id, created)

    def _valid_input(self, saga: Saga, input: Any) -> dict[str, Any]:
        """The stored form of `input`, checked to load back into the saga's model (steps
        validate it again) and to fit the size limit in UTF-8 bytes."""
        data = saga.parse_input({} if input is None else input)
        if saga.input_model is not None:
            try:
                saga.input_model.model_validate(data)
            except ValueError as exc:
                raise InvalidInputError(
                    f"input model {saga.input_model.__name__} of saga {saga.name!r} does not "
                    "accept its own output (model_dump then model_validate fails: field "
                    "aliases without populate_by_name, or a computed_field with "
                    f"extra='forbid'?): {_first_line(exc)}"
                ) from None
        size = len(json.dumps(data, ensure_ascii=False).encode())
        if size > self.max_input_bytes:
            raise InvalidInputError(
                f"input for saga {saga.name!r} is {size} bytes; the limit is "
                f"{self.max_input_bytes} (store large payloads elsewhere and pass a reference)"
            )
        return data

    async def start_async(
        self,
        name: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> SagaHandle:
        """`start()` for async web apps: the SQL and the publish run on a worker thread, so
        the event loop is never blocked."""
        return await asyncio.to_thread(
            functools.partial(
                self.start,
                name,
                input,
                idempotency_key=idempotency_key,
                deadline=deadline,
                headers=headers,
            )
        )

    async def status_async(self, saga_id: str) -> SagaResult:
        """`status()` on a worker thread."""
        return await asyncio.to_thread(self.status, saga_id)

    async def wait_async(self, saga_id: str, timeout: float = 30.0) -> SagaResult:
        """`wait()` that sleeps with asyncio between polls (each poll on a worker thread)."""
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        pause = 0.005
        while True:
            result = await self.status_async(saga_id)
            if result.status.is_terminal:
                return result
            if time.monotonic() >= deadline:
                raise SagaTimeoutError(
                    f"saga {saga_id} is still {result.status} after {timeout:g}s"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.01 if time.monotonic() - started < 2 else 0.1)

    def cancel(
        self, saga_id: str, reason: str = "cancelled", *, actor: str | None = None
    ) -> SagaResult:
        """Stop a saga and compensate what it did. Steps not yet started never start; a step
        already running finishes and is then undone (Python code cannot be stopped safely
        mid-flight); a running sub-saga is cancelled too. Raises InvalidStateError for a
        finished saga and for one past its pivot step. `actor` (who asked: an API token's name,
        "cli") is recorded in the saga's history."""
        current = self.status(saga_id)
        cancel(self.runtime, self.saga(current.saga), saga_id, reason, actor=actor)
        return self.status(saga_id)

    def retry(
        self, saga_id: str, *, actor: str | None = None, reason: str | None = None
    ) -> SagaResult:
        """Resume a FAILED saga: a compensation that gave up is tried again; a saga that
        failed after its pivot step runs its remaining steps again. `actor` and `reason` are
        for the saga's history."""
        current = self.status(saga_id)
        retry(self.runtime, self.saga(current.saga), saga_id, actor=actor, reason=reason)
        return self.status(saga_id)

    def sweep(self, *, stall_after: float | None = None) -> SweepReport:
        """One recovery pass: re-publish lost work, resume stalled compensations, enforce
        deadlines. A saga counts as stalled after `stall_after` seconds without a sign of
        life (default: one lease, three heartbeats). Celery beat runs it as `sagaq.sweep`."""
        return sweep(self.runtime, stall_after=stall_after)

    @cached_property
    def history(self) -> SagaHistory:
        """Find sagas, count them, read what happened to one (`sagaq.store.history`)."""
        return SagaHistory(self.store)

    def status(self, saga_id: str) -> SagaResult:
        record = self.store.get(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        return SagaResult.from_record(record)

    def wait(self, saga_id: str, timeout: float = 30.0) -> SagaResult:
        """Block until the saga is COMPLETED, COMPENSATED or FAILED. On PostgreSQL the store
        notifies (LISTEN/NOTIFY) and this wakes at once; polling is the fallback."""
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        pause = 0.005
        with self.store.finish_signal(saga_id) as finished:
            while True:
                result = self.status(saga_id)
                if result.status.is_terminal:
                    return result
                if time.monotonic() >= deadline:
                    raise SagaTimeoutError(
                        f"saga {saga_id} is still {result.status} after {timeout:g}s"
                    )
                if finished is not None:  # pushed: the poll is only a safety net
                    finished.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                    continue
                time.sleep(pause)
                # Short sagas finish in tens of ms: poll every 10 ms for the first 2 s, then
                # back off (a status read is one indexed query, flat in table size).
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
