"""Store-level micro-benchmarks, no Celery: what one step's state transitions cost against
PostgreSQL, and how much of that is round trips, SQLAlchemy, or sagaq's own Python.

- `sagaq store`: SagaStore.claim_step + complete_step for every step of 5-step sagas, as the
  step task calls them (the last one with finish=True);
- `same SQL, psycopg only`: the very statements and transactions SagaStore sent (captured with
  SQLAlchemy events), replayed on a bare psycopg connection: the floor without SQLAlchemy and
  without sagaq's Python;
- `one statement per transition`: what a claim and a completion could cost as one autocommit
  statement each (a CTE for the claim, an UPDATE for the completion): the floor with fewer
  round trips;
- `SELECT 1`: one round trip.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy import Engine, event

from sagaq.store import SagaStore

STEPS = [f"s{i}" for i in range(1, 6)]


@dataclass
class Capture:
    """Statements and transaction boundaries a SagaStore sends."""

    # (kind, statement, parameters, executemany, autocommit)
    events: list[tuple[str, str, Any, bool, bool]] = field(default_factory=list)
    on: bool = False

    def attach(self) -> None:
        """Listen on every engine (the store may keep a separate autocommit one)."""
        engine = Engine

        def auto(conn: Any) -> bool:
            return bool(bool(getattr(conn.connection.dbapi_connection, "autocommit", False)))

        @event.listens_for(engine, "before_cursor_execute")
        def _stmt(
            conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool
        ) -> None:
            if self.on:
                self.events.append(("stmt", statement, params, many, auto(conn)))

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            if self.on:
                self.events.append(("begin", "", None, False, auto(conn)))

        @event.listens_for(engine, "commit")
        def _commit(conn: Any) -> None:
            if self.on:
                self.events.append(("commit", "", None, False, auto(conn)))

    def counts(self) -> dict[str, int]:
        """Statements and round trips per captured saga (BEGIN and COMMIT are round trips of
        their own, except on autocommit connections)."""
        out: dict[str, int] = {"round_trips": 0}
        for kind, statement, _, _, autocommit in self.events:
            key = statement.split(None, 1)[0].upper() if kind == "stmt" else kind.upper()
            if autocommit:
                key += " (autocommit)"
            out[key] = out.get(key, 0) + 1
            if kind == "stmt" or not autocommit:
                out["round_trips"] += 1
        return out


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "mean": statistics.fmean(ordered) * 1000,
        "p50": ordered[len(ordered) // 2] * 1000,
        "p90": ordered[int(len(ordered) * 0.9)] * 1000,
    }


def _psycopg_url(store_url: str) -> str:
    return store_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _substitute(params: Any, old: str, new: str) -> Any:
    if isinstance(params, dict):
        return {k: (new if v == old else v) for k, v in params.items()}
    if isinstance(params, list | tuple):
        return type(params)(_substitute(p, old, new) for p in params)
    return new if params == old else params


def run(store_url: str, sagas: int = 200) -> dict[str, Any]:
    store = SagaStore(store_url)
    capture = Capture()
    capture.attach()
    out: dict[str, Any] = {"sagas": sagas, "steps_per_saga": len(STEPS)}

    # Round trip floor.
    with psycopg.connect(_psycopg_url(store_url), autocommit=True) as pc:
        rtt = []
        for _ in range(500):
            t = time.perf_counter()
            pc.execute("SELECT 1").fetchone()
            rtt.append(time.perf_counter() - t)
    out["select1"] = _ms(rtt)

    # sagaq's store, as a step task uses it.
    ids = [str(uuid.uuid4()) for _ in range(sagas)]
    create: list[float] = []
    for saga_id in ids:
        t = time.perf_counter()
        store.create_saga(saga_id, "bench_line5", {"n": 1}, STEPS)
        store.mark_published(saga_id)
        create.append(time.perf_counter() - t)
    out["create_saga+mark_published"] = _ms(create)
    claim: list[float] = []
    complete: list[float] = []
    first = ids[0]
    for saga_id in ids:
        capture.on = saga_id == ids[-1]  # capture one full saga (warm caches by then)
        prev: list[str] = []
        for i, step in enumerate(STEPS):
            t = time.perf_counter()
            got = store.claim_step(saga_id, step, prev, prev)
            claim.append(time.perf_counter() - t)
            assert got.outcome.value == "run", got
            t = time.perf_counter()
            store.complete_step(saga_id, step, None, finish=i == len(STEPS) - 1)
            complete.append(time.perf_counter() - t)
            prev = [step]
        capture.on = False
    out["sagaq_store"] = {
        "claim_step": _ms(claim),
        "complete_step": _ms(complete),
        "per_step_ms": (statistics.fmean(claim) + statistics.fmean(complete)) * 1000,
        "per_saga_sql": capture.counts(),
    }
    replay_saga = ids[-1]
    del first

    # The same statements on bare psycopg (fresh sagas, same transactions).
    replay_ids = [str(uuid.uuid4()) for _ in range(sagas)]
    for saga_id in replay_ids:
        store.create_saga(saga_id, "bench_line5", {"n": 1}, STEPS)
        store.mark_published(saga_id)
    url = _psycopg_url(store_url)
    with psycopg.connect(url) as tx, psycopg.connect(url, autocommit=True) as ac:
        per_saga: list[float] = []
        for saga_id in replay_ids:
            t = time.perf_counter()
            for kind, statement, params, many, autocommit in capture.events:
                pc = ac if autocommit else tx
                if kind == "stmt":
                    args = _substitute(params, replay_saga, saga_id)
                    with pc.cursor() as cur:
                        if many:
                            cur.executemany(statement, args)
                        else:
                            cur.execute(statement, args)
                            if cur.description:
                                cur.fetchall()
                elif kind == "commit" and not autocommit:
                    pc.commit()
            per_saga.append(time.perf_counter() - t)
    out["same_sql_psycopg"] = {"per_step_ms": statistics.fmean(per_saga) * 1000 / len(STEPS)}

    # One statement per transition, autocommit.
    one_ids = [str(uuid.uuid4()) for _ in range(sagas)]
    for saga_id in one_ids:
        store.create_saga(saga_id, "bench_line5", {"n": 1}, STEPS)
        store.mark_published(saga_id)
    with psycopg.connect(_psycopg_url(store_url), autocommit=True) as pc:
        claims: list[float] = []
        completes: list[float] = []
        for saga_id in one_ids:
            prev_step: str | None = None
            for i, step in enumerate(STEPS):
                t = time.perf_counter()
                row = pc.execute(ONE_CLAIM, _claim_args(saga_id, step, prev_step)).fetchone()
                claims.append(time.perf_counter() - t)
                assert row is not None and row[0] >= 1, row
                t = time.perf_counter()
                last = i == len(STEPS) - 1
                pc.execute(
                    ONE_COMPLETE_FINAL if last else ONE_COMPLETE,
                    {"id": saga_id, "step": step, "now": time.time()},
                ).fetchone()
                completes.append(time.perf_counter() - t)
                prev_step = step
    out["one_statement"] = {
        "claim": _ms(claims),
        "complete": _ms(completes),
        "per_step_ms": (statistics.fmean(claims) + statistics.fmean(completes)) * 1000,
    }
    out["client_start"] = _client_cost(store, sagas)
    try:
        out["compensation_path"] = _compensation_path(store, capture, sagas)
    except Exception as exc:  # the store's API moves; report rather than fail
        out["compensation_path"] = {"error": f"{type(exc).__name__}: {exc}"}
    store.dispose()
    return out


def _compensation_path(store: SagaStore, capture: Capture, n: int) -> dict[str, Any]:
    """W2 after step 4 failed: what the errback and the three compensation tasks ask of the
    store (get, begin_compensation, then claim + complete for s3, s2, s1)."""
    ready = []
    for _ in range(n):
        saga_id = str(uuid.uuid4())
        store.create_saga(saga_id, "bench_line5", {"n": 1}, STEPS)
        store.mark_published(saga_id)
        prev: list[str] = []
        for step in STEPS[:3]:
            store.claim_step(saga_id, step, prev, prev)
            store.complete_step(saga_id, step, None)
            prev = [step]
        store.claim_step(saga_id, "s4", prev, STEPS[:3])
        store.fail_step(saga_id, "s4", "injected")
        ready.append(saga_id)
    capture.events.clear()
    per_saga: list[float] = []
    for saga_id in ready:
        capture.on = saga_id == ready[-1]
        t = time.perf_counter()
        store.get(saga_id)
        plan = store.begin_compensation(saga_id, failed_step="s4")
        assert plan is not None
        for i, step in enumerate(("s3", "s2", "s1")):
            ancestors = STEPS[: 2 - i]
            got = store.claim_compensation(saga_id, step, ancestors[-1:], ancestors)
            assert got.outcome.value == "run", got
            store.complete_compensation(saga_id, step, finish=step == "s1")
        per_saga.append(time.perf_counter() - t)
        capture.on = False
    return {"per_saga": _ms(per_saga), "sql": capture.counts()}


def _claim_args(saga_id: str, step: str, dep: str | None) -> dict[str, Any]:
    return {"id": saga_id, "step": step, "now": time.time(), "deps": [dep] if dep else []}


# The claim as one statement: the conditional UPDATE, the saga's input and headers and the
# dependencies' results and data, in one round trip (autocommit: no BEGIN/COMMIT either).
# (sagaq adopted this shape itself meanwhile: statements.CLAIM_WITH_INPUTS; kept as a reference
# point hand-written in plain SQL.)
ONE_CLAIM = """
WITH claimed AS (
    UPDATE saga_step SET status = 'RUNNING', attempts = attempts + 1,
           started_at = coalesce(started_at, %(now)s)
    WHERE saga_id = %(id)s AND name = %(step)s AND status IN ('PENDING', 'RUNNING')
      AND EXISTS (SELECT 1 FROM saga WHERE id = %(id)s AND status IN ('PENDING', 'RUNNING')
                  AND (deadline_at IS NULL OR deadline_at > %(now)s))
    RETURNING attempts
)
SELECT c.attempts, s.input, s.headers,
       (SELECT jsonb_object_agg(d.name, d.result) FROM saga_step AS d
         WHERE d.saga_id = %(id)s AND d.name = ANY(%(deps)s) AND d.status <> 'SKIPPED'),
       (SELECT jsonb_agg(d.data ORDER BY d.position) FROM saga_step AS d
         WHERE d.saga_id = %(id)s AND d.name = ANY(%(deps)s) AND d.data IS NOT NULL)
FROM claimed AS c JOIN saga AS s ON s.id = %(id)s
"""
ONE_COMPLETE = """
UPDATE saga_step SET status = 'COMPLETED', result = NULL, data = NULL, finished_at = %(now)s
WHERE saga_id = %(id)s AND name = %(step)s AND status = 'RUNNING'
RETURNING 1
"""
# The last step also finishes the saga, still one statement.
ONE_COMPLETE_FINAL = """
WITH done AS (
    UPDATE saga_step SET status = 'COMPLETED', result = NULL, data = NULL, finished_at = %(now)s
    WHERE saga_id = %(id)s AND name = %(step)s AND status = 'RUNNING'
    RETURNING saga_id
)
UPDATE saga SET status = 'COMPLETED', updated_at = %(now)s, finished_at = %(now)s
WHERE id = (SELECT saga_id FROM done) AND status IN ('PENDING', 'RUNNING')
  AND NOT EXISTS (SELECT 1 FROM saga_step AS s WHERE s.saga_id = %(id)s AND s.name <> %(step)s
                  AND s.status NOT IN ('COMPLETED', 'SKIPPED'))
RETURNING 1
"""


def _client_cost(store: SagaStore, n: int) -> dict[str, Any]:
    """engine.start() without the publish: create_saga (1 transaction: 2 INSERTs) and
    mark_published (1 transaction: 1 UPDATE), separately."""
    create: list[float] = []
    mark: list[float] = []
    for _ in range(n):
        saga_id = str(uuid.uuid4())
        t = time.perf_counter()
        store.create_saga(saga_id, "bench_line5", {"n": 1}, STEPS)
        create.append(time.perf_counter() - t)
        t = time.perf_counter()
        store.mark_published(saga_id)
        mark.append(time.perf_counter() - t)
    return {"create_saga": _ms(create), "mark_published": _ms(mark)}


def timed(fn: Callable[[], Any], n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return _ms(samples)
