"""The chaos saga and the PostgreSQL ledger its steps write their effects to.

    a -> {b, c} -> d -> e        (b, c and d retry twice)

Each saga's input is its plan: `fail` names a step that fails for good, `flaky` a step that
fails once with a transient error and then succeeds on its retry, `flaky_undo` a step whose
compensation fails once. The test decides the plan, so it knows what every saga must end as.

The ledger is an idempotent resource, written the way sagaq asks side effects to be: keyed by
ctx.idempotency_key. A step adds (key, +1); its compensation adds (key:undo, -1), or
(key:undo, 0) when the step's effect never happened (sagaq compensates a step whose worker
died midway in case it applied). The undo row is also a tombstone: a step attempt that comes
after it (a worker that outlived the decision) does not apply. A repeated write (redelivery,
sweeper) changes nothing and is counted in chaos_event.

Every step attempt also leaves a row in chaos_attempt (host, pid, time): which process was
running what when a fault hit it, and which hosts did the work.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from sagaq import NonRetryableError, Saga, StepContext

SAGA = "chaos"
DEPENDS: dict[str, tuple[str, ...]] = {
    "a": (),
    "b": ("a",),
    "c": ("a",),
    "d": ("b", "c"),
    "e": ("d",),
}
STEPS = tuple(DEPENDS)
RETRY = {"b": 2, "c": 2, "d": 2}  # the others have no retries
# Each step sleeps up to this long, so kills land mid-step (the cluster test makes it longer).
MAX_SLEEP = float(os.environ.get("SAGAQ_CHAOS_STEP_SECONDS", "0.08"))


class ChaosPlan(BaseModel):
    n: int
    fail: str | None = None  # fails for good (NonRetryableError)
    flaky: str | None = None  # fails once (ConnectionError), then succeeds when retried
    flaky_undo: str | None = None  # this step's compensation fails once, then succeeds


_TABLES = """
CREATE TABLE IF NOT EXISTS chaos_ledger (
    key text PRIMARY KEY, saga_id text NOT NULL, delta integer NOT NULL,
    at double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
);
CREATE TABLE IF NOT EXISTS chaos_event (key text NOT NULL, kind text NOT NULL);
CREATE TABLE IF NOT EXISTS chaos_flake (key text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS chaos_attempt (
    key text NOT NULL, host text NOT NULL, pid integer NOT NULL, at double precision NOT NULL
)
"""


class Ledger:
    """Effects of chaos steps, one row per idempotency key, in the store's PostgreSQL schema.

    The engine is made per process, so a forked worker child never shares a connection (a
    socket) with its parent or siblings."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.url = parsed
        self._engine: Engine | None = None
        self._pid = 0

    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            self._engine = create_engine(self.url, pool_size=2, max_overflow=2)
            self._pid = os.getpid()
        return self._engine

    def create_tables(self) -> None:
        with self.engine.begin() as conn:
            for statement in _TABLES.split(";"):
                conn.execute(text(statement))

    def do(self, key: str, saga_id: str) -> None:
        """The step's effect: once, and never after its compensation."""
        with self._locked(key) as conn:
            if self._has(conn, f"{key}:undo"):
                self._absorbed(conn, key, "tombstoned")
            elif not self._insert(conn, key, saga_id, 1):
                self._absorbed(conn, key, "duplicate")

    def undo(self, key: str, saga_id: str) -> None:
        """The compensation: takes the effect back if it happened, else leaves a tombstone."""
        with self._locked(key) as conn:
            delta = -1 if self._has(conn, key) else 0
            if not self._insert(conn, f"{key}:undo", saga_id, delta):
                self._absorbed(conn, f"{key}:undo", "duplicate")

    @contextmanager
    def _locked(self, key: str) -> Iterator[Connection]:
        """A transaction holding the lock of one step's key: do and undo cannot interleave."""
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})
            yield conn

    @staticmethod
    def _has(conn: Connection, key: str) -> bool:
        found = conn.execute(text("SELECT 1 FROM chaos_ledger WHERE key = :key"), {"key": key})
        return found.first() is not None

    @staticmethod
    def _insert(conn: Connection, key: str, saga_id: str, delta: int) -> bool:
        inserted = conn.execute(
            text(
                "INSERT INTO chaos_ledger (key, saga_id, delta) VALUES (:key, :saga, :delta) "
                "ON CONFLICT (key) DO NOTHING"
            ),
            {"key": key, "saga": saga_id, "delta": delta},
        )
        return bool(inserted.rowcount)

    @staticmethod
    def _absorbed(conn: Connection, key: str, kind: str) -> None:
        conn.execute(
            text("INSERT INTO chaos_event (key, kind) VALUES (:key, :kind)"),
            {"key": key, "kind": kind},
        )

    def attempt(self, key: str) -> None:
        """Note that this process starts an attempt of the step `key`."""
        with self.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO chaos_attempt (key, host, pid, at) VALUES (:k, :h, :p, :t)"),
                {"k": key, "h": socket.gethostname(), "p": os.getpid(), "t": time.time()},
            )

    def running(self) -> dict[tuple[str, int], list[tuple[str, str]]]:
        """(host, pid) -> the steps, (saga_id, step), RUNNING in the store whose latest
        attempt that process started: what a fault hitting it would lose."""
        query = text(
            "SELECT DISTINCT ON (a.key) a.host, a.pid, s.saga_id, s.name"
            " FROM chaos_attempt a JOIN saga_step s ON a.key = s.saga_id || ':' || s.name"
            " WHERE s.status = 'RUNNING' ORDER BY a.key, a.at DESC"
        )
        found: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)
        with self.engine.connect() as conn:
            for host, pid, saga_id, step in conn.execute(query):
                found[(host, pid)].append((saga_id, step))
        return found

    def hosts(self) -> dict[str, int]:
        """Host name -> step attempts it started."""
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT host, count(*) FROM chaos_attempt GROUP BY host"))
            return {host: int(n) for host, n in rows}

    def first_time(self, key: str) -> bool:
        """True the first time `key` is seen (the transient failure fires exactly once)."""
        with self.engine.begin() as conn:
            inserted = conn.execute(
                text("INSERT INTO chaos_flake (key) VALUES (:key) ON CONFLICT (key) DO NOTHING"),
                {"key": key},
            ).rowcount
        return bool(inserted)

    def effects(self) -> dict[str, dict[str, int]]:
        """saga_id -> {key: delta}."""
        found: dict[str, dict[str, int]] = defaultdict(dict)
        with self.engine.connect() as conn:
            for key, saga_id, delta in conn.execute(
                text("SELECT key, saga_id, delta FROM chaos_ledger")
            ):
                found[saga_id][key] = delta
        return found

    def undo_times(self) -> dict[str, dict[str, float]]:
        """saga_id -> {step: when its compensation wrote its row}."""
        found: dict[str, dict[str, float]] = defaultdict(dict)
        query = text("SELECT key, saga_id, at FROM chaos_ledger WHERE key LIKE :undo")
        with self.engine.connect() as conn:
            for key, saga_id, at in conn.execute(query, {"undo": "%:undo"}):
                found[saga_id][key.rsplit(":", 2)[1]] = float(at)
        return found

    def flakes(self) -> set[str]:
        """Keys whose injected transient failure fired."""
        with self.engine.connect() as conn:
            return set(conn.execute(text("SELECT key FROM chaos_flake")).scalars())

    def events(self, kind: str) -> int:
        """How many writes were absorbed: "duplicate" or "tombstoned"."""
        with self.engine.connect() as conn:
            query = text("SELECT count(*) FROM chaos_event WHERE kind = :kind")
            return int(conn.execute(query, {"kind": kind}).scalar_one())

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def build_chaos_saga(queue: str, ledger: Ledger, pivot: str | None = None) -> Saga:
    """`pivot`: a step past which, once it completed, nothing is undone."""
    saga = Saga(SAGA, ChaosPlan, queue=queue, compensation_backoff=0.05)

    def act(ctx: StepContext) -> dict[str, Any]:
        plan: ChaosPlan = ctx.input
        ledger.attempt(ctx.idempotency_key)
        time.sleep(random.uniform(0, MAX_SLEEP / 2))
        if plan.fail == ctx.step:
            raise NonRetryableError(f"injected permanent failure at {ctx.step}")
        if plan.flaky == ctx.step and ledger.first_time(ctx.idempotency_key):
            raise ConnectionError(f"injected transient failure at {ctx.step}")
        ledger.do(ctx.idempotency_key, ctx.saga_id)
        time.sleep(random.uniform(0, MAX_SLEEP / 2))  # a kill here leaves an applied effect
        return {"step": ctx.step, "n": plan.n}

    def undo(ctx: StepContext, result: dict[str, Any] | None) -> None:
        # result is None when sagaq compensates a step whose worker died midway (in case it
        # applied); otherwise it is what the step returned.
        assert result is None or result["step"] == ctx.step, result
        plan: ChaosPlan = ctx.input
        key = f"{ctx.idempotency_key}:undo"
        time.sleep(random.uniform(0, MAX_SLEEP / 2))
        if plan.flaky_undo == ctx.step and ledger.first_time(key):
            raise ConnectionError(f"injected transient failure undoing {ctx.step}")
        ledger.undo(ctx.idempotency_key, ctx.saga_id)
        time.sleep(random.uniform(0, MAX_SLEEP / 2))

    for name, deps in DEPENDS.items():
        step = saga.step(
            name=name,
            depends_on=list(deps),
            retry=RETRY.get(name, 0),
            backoff=0.05,
            pivot=name == pivot,
        )
        step(act).compensate(undo)
    return saga
