"""Test harness: real Celery workers on real backends, and test sagas that record their effects.

Backends:
- embedded: SQLite store + memory broker + in-process worker (no services; never skipped)
- redis:    Redis broker + Redis result backend + PostgreSQL store
- rabbitmq: RabbitMQ broker + Redis result backend (chords need one) + PostgreSQL store

A missing service skips its tests on a laptop, but fails them when SAGAQ_REQUIRE_SERVICES=1
(as in CI).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from celery import Celery
from sqlalchemy import create_engine, text

from sagaq import NonRetryableError, Saga, SagaQ, StepContext
from sagaq.definition import FailurePolicy
from sagaq.embedded import embedded_app, in_process_worker

PG_URL = os.environ.get("SAGAQ_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SAGAQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("SAGAQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REQUIRE_SERVICES = os.environ.get("SAGAQ_REQUIRE_SERVICES") == "1"

BACKENDS = ("embedded", "redis", "rabbitmq")


def require(*urls: str) -> None:
    """Skip (locally) or fail (CI) when a service does not answer."""
    for url in urls:
        host, port = _host_port(url)
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError:
            message = f"service {host}:{port} ({url.split(':')[0]}) is not answering"
            if REQUIRE_SERVICES:
                pytest.fail(message + " and SAGAQ_REQUIRE_SERVICES=1")
            pytest.skip(message)


def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    default = {"redis": 6379, "amqp": 5672, "postgresql": 5432}[parsed.scheme.split("+")[0]]
    return parsed.hostname or "127.0.0.1", parsed.port or default


@contextmanager
def pg_schema_url() -> Iterator[str]:
    """A store URL pointing at a fresh PostgreSQL schema, dropped afterwards."""
    schema = f"sagaq_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@dataclass
class Ledger:
    """Effects of test steps, in the order they happened (thread-safe)."""

    events: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    gates: dict[str, threading.Event] = field(default_factory=dict)

    def record(self, kind: str, ctx: StepContext) -> None:
        with self.lock:
            self.events.append((kind, ctx.saga_id, ctx.step))

    def of(self, saga_id: str, kind: str) -> list[str]:
        with self.lock:
            return [step for k, sid, step in self.events if sid == saga_id and k == kind]

    def gate(self, key: str) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(key, threading.Event())


def build_sagas(ledger: Ledger, queue: str) -> list[Saga]:
    """line: s1..s5 in a row. diamond: a -> {b, c} -> d. flaky: f1 -> flaky (fails twice).
    gated: g1 waits for a test-controlled gate. Inputs: `fail_at` names a step that fails;
    `gate` a step that waits for ledger.gate(saga_id); `after` {step: other} makes a step wait
    until `other` has started."""

    def act(ctx: StepContext) -> dict[str, Any]:
        ledger.gate(f"started:{ctx.saga_id}:{ctx.step}").set()
        if other := ctx.input.get("after", {}).get(ctx.step):  # start only once `other` runs
            ledger.gate(f"started:{ctx.saga_id}:{other}").wait(20)
        if ctx.input.get("gate") == ctx.step:
            ledger.gate(ctx.saga_id).wait(20)
        if ctx.input.get("fail_at") == ctx.step:
            ledger.record("fail", ctx)
            raise NonRetryableError(f"injected failure at {ctx.step}")
        ledger.record("do", ctx)
        return {"step": ctx.step, "saw": sorted(ctx.results)}

    def undo(ctx: StepContext, result: dict[str, Any]) -> None:
        assert result["step"] == ctx.step
        ledger.record("undo", ctx)

    def add(saga: Saga, name: str, deps: list[str], **options: Any) -> None:
        step = saga.step(name=name, depends_on=deps, **options)(act)
        step.compensate(undo)

    line = Saga("line", queue=queue)
    for i in range(1, 6):
        add(line, f"s{i}", [f"s{i - 1}"] if i > 1 else [])

    diamond = Saga("diamond", queue=queue)
    add(diamond, "a", [])
    add(diamond, "b", ["a"])
    add(diamond, "c", ["a"])
    add(diamond, "d", ["b", "c"])

    flaky = Saga("flaky", queue=queue)
    add(flaky, "f1", [])

    @flaky.step(depends_on=["f1"], retry=2, backoff=0.01)
    def wobbly(ctx: StepContext) -> dict[str, Any]:
        ledger.record("try", ctx)
        if ctx.attempt <= ctx.input.get("failures", 2):
            raise ConnectionError(f"transient failure, attempt {ctx.attempt}")
        return {"step": ctx.step, "attempt": ctx.attempt}

    wobbly.compensate(undo)

    gated = Saga("gated", queue=queue)
    add(gated, "g1", [])
    add(gated, "g2", ["g1"])

    # A compensation that fails until the test marks the saga "fixed".
    brittle = Saga("brittle", queue=queue, compensation_retry=2, compensation_backoff=0.01)
    add(brittle, "b1", [])
    fragile = brittle.step(name="b2", depends_on=["b1"])(act)
    add(brittle, "b3", ["b2"])

    @fragile.compensate
    def undo_fragile(ctx: StepContext, result: dict[str, Any]) -> None:
        ledger.record("undo-try", ctx)
        if not ledger.gate(f"fixed:{ctx.saga_id}").is_set():
            raise ConnectionError("refund service unavailable")
        ledger.record("undo", ctx)

    # p2 is the point of no return; p3 fails `failures` times (forward retries: 3).
    pivoted = Saga("pivoted", queue=queue, forward_retry=3)
    add(pivoted, "p1", [])
    pivoted.step(name="p2", depends_on=["p1"], pivot=True)(act)

    @pivoted.step(depends_on=["p2"], backoff=0.01)
    def p3(ctx: StepContext) -> dict[str, Any]:
        ledger.record("try", ctx)
        if (
            ctx.attempt <= ctx.input.get("failures", 0)
            and not ledger.gate(f"fixed:{ctx.saga_id}").is_set()
        ):
            raise ConnectionError(f"courier API down, attempt {ctx.attempt}")
        return {"step": ctx.step}

    # root -> {boom, slow1 -> slow2} -> join, once per failure policy.
    parallel = []
    for policy in FailurePolicy:
        par = Saga(f"par-{policy.value}", queue=queue, failure_policy=policy)
        add(par, "root", [])
        add(par, "boom", ["root"])
        add(par, "slow1", ["root"])
        add(par, "slow2", ["slow1"])
        add(par, "join", ["boom", "slow2"])
        parallel.append(par)

    odd = Saga("odd", queue=queue)
    add(odd, "o1", [])

    @odd.step(depends_on=["o1"])
    def unstorable(ctx: StepContext) -> object:
        return {"when": threading.Event()}

    # c2 runs only for express orders; c3 runs either way.
    conditional = Saga("conditional", queue=queue)
    add(conditional, "c1", [])
    conditional.step(name="c2", depends_on=["c1"], when=lambda ctx: ctx.input.get("express"))(
        act
    ).compensate(undo)
    add(conditional, "c3", ["c2"])

    # x1 leaves a value in ctx.data for x2 and for its own compensation.
    shared = Saga("shared", queue=queue)

    @shared.step
    def x1(ctx: StepContext) -> dict[str, Any]:
        ctx.data["reservation"] = f"R-{ctx.idempotency_key}"
        return act(ctx)

    @x1.compensate
    def undo_x1(ctx: StepContext, result: dict[str, Any]) -> None:
        ledger.record(f"undo:{ctx.data['reservation']}", ctx)

    @shared.step(depends_on=[x1])
    def x2(ctx: StepContext) -> dict[str, Any]:
        if ctx.input.get("fail_at") == "x2":
            raise NonRetryableError("x2 fails")
        return {"saw": ctx.data["reservation"], "correlation": ctx.headers["correlation_id"]}

    # A parent that runs the `line` saga as its middle step.
    parent = Saga("parent", queue=queue)
    add(parent, "before", [])
    parent.sub_saga("child", "line", input=lambda ctx: {}, depends_on=["before"])
    add(parent, "after", ["child"])

    return [
        line, diamond, flaky, gated, brittle, pivoted, *parallel, odd, conditional, shared, parent,
    ]  # fmt: skip


@dataclass
class Harness:
    name: str
    app: Celery
    engine: SagaQ
    ledger: Ledger
    queue: str

    def run(self, saga: str, input: dict[str, Any], timeout: float = 30.0) -> Any:
        return self.engine.start(saga, input).wait(timeout)


def _celery_app(broker: str, backend: str) -> Celery:
    app = Celery("sagaq-tests", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=broker, result_backend=backend, worker_send_task_events=False)
    return app


@contextmanager
def harness(backend: str, tmp: Path) -> Iterator[Harness]:
    """A SagaQ engine with the test sagas and a real in-process worker on `backend`."""
    queue = f"sagaq-test-{uuid.uuid4().hex[:8]}"
    with _store_url(backend, tmp) as store_url:
        if backend == "embedded":
            app = embedded_app("sagaq-tests")
        elif backend == "redis":
            app = _celery_app(REDIS_URL, REDIS_URL)
        else:
            app = _celery_app(AMQP_URL, REDIS_URL)
        engine = SagaQ(app, store=store_url)
        ledger = Ledger()
        engine.register(*build_sagas(ledger, queue))
        with in_process_worker(app, engine.queues(), concurrency=4):
            yield Harness(backend, app, engine, ledger, queue)
        engine.store.dispose()


@contextmanager
def _store_url(backend: str, tmp: Path) -> Iterator[str]:
    if backend == "embedded":
        yield f"sqlite:///{tmp / 'sagaq.db'}"
        return
    require(PG_URL, REDIS_URL, *([AMQP_URL] if backend == "rabbitmq" else []))
    with pg_schema_url() as url:
        yield url
