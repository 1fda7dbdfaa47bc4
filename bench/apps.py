"""The two things compared, built on one Celery app with the same settings:

- sagaq: linear sagas of 1..20 no-op steps (`bench_line<N>`, each step with a no-op compensation)
  and a fan-out of 8 parallel steps joined by a ninth (`bench_fan8`);
- raw Celery: hand-built chains / a chord of no-op tasks, each with an immutable `link_error`
  errback that, like sagaq's, enqueues a chain of no-op "compensation" tasks.

Both report completion the same way: from inside the task that finishes the work (sagaq: its
SAGA_COMPLETED / SAGA_COMPENSATED / SAGA_FAILED lifecycle event, emitted by the finalizer task
after its commit; raw: the last task of the chain) they push `[key, time.time()]` onto one Redis
list (or, embedded, an in-process list). The client waits on that list with BLPOP: no polling
of the database or of Celery results while measuring.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import redis
from celery import Celery, chain, chord, group
from celery.canvas import Signature, _chain, _chord

from bench.config import FAIL_AT, FAN_WIDTH, LENGTHS, QUEUE
from sagaq import NonRetryableError, Saga, SagaQ, StepContext
from sagaq.observability.events import EventType, SagaEvent
from sagaq.store.connect import libpq_url

DONE_LIST = "sagaq_bench:done"
TERMINAL_EVENTS = (EventType.SAGA_COMPLETED, EventType.SAGA_COMPENSATED, EventType.SAGA_FAILED)
RAW_STEP = "bench_raw.step"
RAW_ERRBACK = "bench_raw.errback"
RAW_DURABLE_STEP = "bench_raw.durable_step"
FLOOR_TABLE = "bench_floor"
UNDO_STEPS = 100  # the floor's rows for the errback (100) and the compensations (100 + step)


class BenchTimeoutError(RuntimeError):
    """A measurement did not finish within its time limit."""


# -- completion signal --------------------------------------------------------------------


def _no_guard() -> None:
    return None


class DoneSink(Protocol):
    guard: Callable[[], None]  # called while waiting; raises to abandon the measurement

    def push(self, key: str) -> None: ...

    def reset(self) -> None: ...

    def collect(self, keys: Iterable[str], timeout: float) -> dict[str, float]: ...


class RedisDone:
    """Workers RPUSH `[key, t]`; the client BLPOPs until every key it waits for arrived."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: redis.Redis | None = None
        self.guard: Callable[[], None] = _no_guard

    @property
    def client(self) -> redis.Redis:
        # Created on first use, i.e. after the prefork pool forked.
        if self._client is None:
            self._client = redis.Redis.from_url(self.url)
        return self._client

    def push(self, key: str) -> None:
        self.client.rpush(DONE_LIST, json.dumps([key, time.time()]))

    def reset(self) -> None:
        self.client.delete(DONE_LIST)

    def collect(self, keys: Iterable[str], timeout: float) -> dict[str, float]:
        waiting = set(keys)
        done: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while waiting:
            self.guard()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchTimeoutError(f"{len(waiting)} of {len(done) + len(waiting)} unfinished")
            try:
                item = self.client.blpop([DONE_LIST], timeout=max(0.01, min(left, 1.0)))
            except redis.ConnectionError:
                time.sleep(0.5)  # Redis restarted under us: the guard decides what happens
                continue
            if item is None:
                continue
            key, at = json.loads(item[1])
            if key in waiting:  # anything else is left over from an earlier measurement
                waiting.discard(key)
                done[key] = float(at)
        return done


class LocalDone:
    """The same, inside one process (embedded backend)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[tuple[str, float]] = []
        self.guard: Callable[[], None] = _no_guard

    def push(self, key: str) -> None:
        with self._cond:
            self._items.append((key, time.time()))
            self._cond.notify_all()

    def reset(self) -> None:
        with self._cond:
            self._items.clear()

    def collect(self, keys: Iterable[str], timeout: float) -> dict[str, float]:
        waiting = set(keys)
        done: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for key, at in self._items:
                    if key in waiting:
                        waiting.discard(key)
                        done[key] = at
                self._items.clear()
                if not waiting:
                    return done
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchTimeoutError(
                        f"{len(waiting)} of {len(done) + len(waiting)} unfinished"
                    )
                self._cond.wait(left)


# -- the Celery app -----------------------------------------------------------------------


def make_app(
    broker_url: str,
    result_backend: str,
    *,
    events: bool,
    embedded: bool,
    overrides: dict[str, Any] | None = None,
) -> Celery:
    """celeryconfig's safe settings (JSON, acks_late, prefetch 1, ...) with the bench URLs."""
    app = Celery("sagaq_bench", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(
        broker_url=broker_url,
        result_backend=result_backend,
        task_default_queue=QUEUE,
        worker_send_task_events=events,
        task_send_sent_event=events,
        worker_hijack_root_logger=False,
    )
    app.conf.update(overrides or {})
    if embedded:
        # As sagaq.embedded.embedded_app: the memory transport is polled, once a second by default.
        app.conf.broker_transport_options = {"polling_interval": 0.005}
    return app


# -- sagaq side ---------------------------------------------------------------------------


def line_name(length: int) -> str:
    return f"bench_line{length}"


FAN_SAGA = f"bench_fan{FAN_WIDTH}"


def _noop(ctx: StepContext) -> None:
    if ctx.input.get("fail_at") == ctx.step:
        raise NonRetryableError(f"injected failure at {ctx.step}")


def _undo(ctx: StepContext, result: Any) -> None:
    return None


def build_sagas(queue: str) -> list[Saga]:
    """`bench_line<N>`: s1 -> s2 -> ... -> sN.  `bench_fan8`: p1..p8 in parallel -> join."""
    sagas: list[Saga] = []
    for length in LENGTHS:
        saga = Saga(line_name(length), queue=queue)
        prev: list[str] = []
        for i in range(1, length + 1):
            step = saga.step(name=f"s{i}", depends_on=prev)(_noop)
            step.compensate(_undo)
            prev = [f"s{i}"]
        sagas.append(saga)
    fan = Saga(FAN_SAGA, queue=queue)
    branches = [f"p{i}" for i in range(1, FAN_WIDTH + 1)]
    for name in branches:
        fan.step(name=name)(_noop).compensate(_undo)
    fan.step(name="join", depends_on=branches)(_noop).compensate(_undo)
    sagas.append(fan)
    return sagas


# -- raw Celery side ----------------------------------------------------------------------


def _sig(app: Celery, task: str, **kwargs: Any) -> Signature:
    """Immutable, routed to the bench queue: the same kind of signature sagaq compiles."""
    return Signature(task, kwargs=kwargs, options={"queue": QUEUE}, immutable=True, app=app)


class FloorWriter:
    """The floor any durable executor pays: one committed (synchronous_commit on) PostgreSQL
    upsert per task, on a connection of the pool process's own, with no other bookkeeping."""

    def __init__(self, store_url: str) -> None:
        self.conninfo = libpq_url(store_url)
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = 0

    def create_table(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} (key text, step int, at float8, "
                "PRIMARY KEY (key, step))"
            )

    def upsert(self, key: str, step: int) -> None:
        if self._conn is None or self._pid != os.getpid():  # a forked pool process: its own
            self._conn, self._pid = psycopg.connect(self.conninfo, autocommit=True), os.getpid()
        self._conn.execute(
            f"INSERT INTO {FLOOR_TABLE} (key, step, at) VALUES (%s, %s, %s) "
            "ON CONFLICT (key, step) DO UPDATE SET at = excluded.at",
            (key, step, time.time()),
            prepare=True,
        )


def install_raw_tasks(app: Celery, sink: DoneSink, floor: FloorWriter | None = None) -> None:
    @app.task(name=RAW_STEP, shared=False)
    def step(*, key: str, fail: bool = False, done: bool = False) -> None:
        if fail:
            raise RuntimeError(f"injected failure in {key}")
        if done:
            sink.push(key)

    if floor is not None:

        @app.task(name=RAW_DURABLE_STEP, shared=False)
        def durable_step(*, key: str, step: int, fail: bool = False, done: bool = False) -> None:
            floor.upsert(key, step)  # a failure is recorded too, as sagaq records it
            if fail:
                raise RuntimeError(f"injected failure in {key}")
            if done:
                sink.push(key)

    @app.task(name=RAW_ERRBACK, ignore_result=True, shared=False)
    def errback(*, key: str, failed: int, durable: bool = False) -> None:
        # Like sagaq's errback: enqueue the compensations of the steps before the failed one,
        # in reverse order; the last one signals completion. `durable` (the floor): this task
        # and each compensation commit one upsert too.
        if durable:
            assert floor is not None
            floor.upsert(key, UNDO_STEPS)
            undo = [
                _sig(app, RAW_DURABLE_STEP, key=key, step=UNDO_STEPS + j, done=j == 1)
                for j in range(failed - 1, 0, -1)
            ]
        else:
            undo = [_sig(app, RAW_STEP, key=key, done=j == 1) for j in range(failed - 1, 0, -1)]
        if undo:
            chain(*undo).apply_async()
        else:
            sink.push(key)


def raw_line(
    app: Celery,
    key: str,
    length: int,
    fail_at: int | None = None,
    ignore_result: bool = False,
    durable: bool = False,
) -> Signature:
    """A chain of `length` no-op tasks, each with a link_error errback; the last one signals.
    `ignore_result`: the tasks do not write their state to the result backend (profiling).
    `durable`: each task commits one PostgreSQL upsert (the floor, see FloorWriter)."""
    sigs = []
    for i in range(1, length + 1):
        task = RAW_DURABLE_STEP if durable else RAW_STEP
        steps = {"step": i} if durable else {}
        sig = _sig(app, task, key=key, fail=i == fail_at, done=i == length, **steps)
        if ignore_result:
            sig.set(ignore_result=True)
        sig.on_error(_sig(app, RAW_ERRBACK, key=key, failed=i, durable=durable))
        sigs.append(sig)
    return sigs[0] if length == 1 else chain(*sigs)


def raw_fan(app: Celery, key: str, width: int = FAN_WIDTH) -> Signature:
    """A chord of `width` no-op tasks (each with an errback) and a body that signals."""
    header = []
    for i in range(1, width + 1):
        sig = _sig(app, RAW_STEP, key=key)
        sig.on_error(_sig(app, RAW_ERRBACK, key=key, failed=i))
        header.append(sig)
    body = _sig(app, RAW_STEP, key=key, done=True)
    body.on_error(_sig(app, RAW_ERRBACK, key=key, failed=width + 1))
    return chord(group(header), body)


# -- one object with everything -----------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What one unit of work looks like: a line of `length` steps (failing at `fail_at`) or
    the fan-out."""

    length: int = 5
    fail_at: int | None = None
    fan: bool = False

    @property
    def label(self) -> str:
        if self.fan:
            return f"fan{FAN_WIDTH}"
        return f"line{self.length}" + (f"-fail{self.fail_at}" if self.fail_at else "")


@dataclass
class Bench:
    app: Celery
    engine: SagaQ
    sink: DoneSink
    has_floor: bool = False

    def submit_sagaq(self, shape: Shape) -> str:
        if shape.fan:
            return self.engine.start(FAN_SAGA).id
        data = {"fail_at": f"s{shape.fail_at}"} if shape.fail_at else {}
        return self.engine.start(line_name(shape.length), data).id

    def raw_signature(self, shape: Shape, key: str) -> Signature:
        if shape.fan:
            return raw_fan(self.app, key)
        return raw_line(self.app, key, shape.length, shape.fail_at)

    def submit_raw(self, shape: Shape) -> str:
        key = str(uuid.uuid4())
        self.raw_signature(shape, key).apply_async()
        return key

    def submit_floor(self, shape: Shape) -> str:
        """The raw chain with one durable PostgreSQL write per task (lines only)."""
        assert not shape.fan, "the floor is measured for lines (W1, W2)"
        key = str(uuid.uuid4())
        raw_line(self.app, key, shape.length, shape.fail_at, durable=True).apply_async()
        return key

    def submitter(self, system: str) -> Callable[[Shape], str]:
        return {"sagaq": self.submit_sagaq, "raw": self.submit_raw, "floor": self.submit_floor}[
            system
        ]


def count_tasks(sig: Signature) -> int:
    """Celery tasks in a canvas."""
    if isinstance(sig, _chord):
        return sum(count_tasks(t) for t in sig.tasks) + count_tasks(sig.body)
    if isinstance(sig, _chain | group):
        return sum(count_tasks(t) for t in sig.tasks)
    return 1


def tasks_per_saga(app: Celery) -> dict[str, tuple[int, int]]:
    """(sagaq, raw) Celery tasks that run per unit of work, counted from the compiled canvas of
    the sagaq version under test (it changes as sagaq does)."""
    from sagaq.compiler import compile_compensation, compile_saga

    sagas = {s.name: s for s in build_sagas(QUEUE)}
    line5 = sagas[line_name(5)]
    undo = [f"s{i}" for i in range(1, FAIL_AT)]
    comp = count_tasks(compile_compensation(line5, "x", undo, app))
    return {
        "W1": (count_tasks(compile_saga(line5, "x", app)), 5),
        # W2: steps 1..4 run (4 fails), one errback, then the compensation canvas.
        "W2": (FAIL_AT + 1 + comp, FAIL_AT + 1 + len(undo)),
        "W3": (count_tasks(compile_saga(sagas[FAN_SAGA], "x", app)), FAN_WIDTH + 1),
    }


def build(
    broker_url: str,
    result_backend: str,
    store_url: str,
    *,
    events: bool,
    embedded: bool,
    sink: DoneSink,
    overrides: dict[str, Any] | None = None,
) -> Bench:
    app = make_app(
        broker_url, result_backend, events=events, embedded=embedded, overrides=overrides
    )
    engine = SagaQ(app, store=store_url)
    engine.register(*build_sagas(QUEUE))

    def on_event(event: SagaEvent) -> None:
        if event.type in TERMINAL_EVENTS:
            sink.push(event.saga_id)

    engine.events.subscribe(on_event)
    floor = None
    if not embedded:
        floor = FloorWriter(store_url)
        floor.create_table()
    install_raw_tasks(app, sink, floor)
    return Bench(app, engine, sink, has_floor=floor is not None)
