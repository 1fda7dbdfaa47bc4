"""The measurements. Each takes a Bench (sagaq engine + raw tasks on one Celery app), a system
("sagaq" or "raw") and a Shape, and is bounded in time."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from bench.apps import Bench, BenchTimeoutError, Shape
from sagaq.store.schema import saga as saga_table

SYSTEMS = ("sagaq", "raw")
LATENCY_TIMEOUT = 30.0


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass(frozen=True)
class Throughput:
    per_s: float
    elapsed_s: float
    submit_s: float
    keys: list[str]


def throughput(bench: Bench, system: str, shape: Shape, n: int, timeout: float) -> Throughput:
    """Submit `n` at once (as fast as one client thread can); rate = n / (time from the first
    submit until the last one is terminal, as recorded by the worker that finished it)."""
    submit = bench.submitter(system)
    bench.sink.reset()
    started = time.time()
    keys = [submit(shape) for _ in range(n)]
    submitted = time.time()
    done = bench.sink.collect(keys, timeout)
    elapsed = max(done.values()) - started
    if system == "sagaq":
        check_terminal(bench, keys, "COMPENSATED" if shape.fail_at else "COMPLETED")
    return Throughput(n / elapsed, elapsed, submitted - started, keys)


def latency(bench: Bench, system: str, shape: Shape, n: int) -> list[float]:
    """End-to-end milliseconds of `n` sagas submitted one at a time on an otherwise idle worker:
    from just before submitting until the worker recorded it terminal."""
    submit = bench.submitter(system)
    out: list[float] = []
    keys: list[str] = []
    for _ in range(n):
        started = time.time()
        key = submit(shape)
        done = bench.sink.collect([key], LATENCY_TIMEOUT)
        out.append((done[key] - started) * 1000)
        keys.append(key)
    if system == "sagaq":
        check_terminal(bench, keys, "COMPENSATED" if shape.fail_at else "COMPLETED")
    return out


def caller_latency(bench: Bench, system: str, n: int, length: int = 5) -> list[float]:
    """What a caller that blocks on the result sees: sagaq `engine.wait()` (polls the store
    with backoff from 5 ms) vs raw `AsyncResult.get()` of the chain's last task."""
    out: list[float] = []
    shape = Shape(length)
    for _ in range(n):
        started = time.perf_counter()
        if system == "sagaq":
            handle = bench.engine.start(f"bench_line{length}", {})
            result = bench.engine.wait(handle.id, LATENCY_TIMEOUT)
            assert result.status == "COMPLETED", result
        else:
            result = bench.raw_signature(shape, "caller").apply_async()
            # interval: how often a polling result backend (embedded: cache+memory) is read;
            # the Redis backend is not polled (pub/sub).
            result.get(timeout=LATENCY_TIMEOUT, interval=0.005)
        out.append((time.perf_counter() - started) * 1000)
    bench.sink.reset()
    return out


def status_times(bench: Bench, ids: Sequence[str], n: int) -> list[float]:
    """Milliseconds of `engine.status(id)` for random ids among `ids` (after a warm-up)."""
    rng = random.Random(7)
    for saga_id in ids[:20]:
        bench.engine.status(saga_id)
    out: list[float] = []
    for _ in range(n):
        saga_id = rng.choice(ids)
        started = time.perf_counter()
        bench.engine.status(saga_id)
        out.append((time.perf_counter() - started) * 1000)
    return out


def check_terminal(bench: Bench, ids: Sequence[str], expected: str) -> None:
    """Outside the timed part: every saga really is in the expected state in the store."""
    store = bench.engine.store
    found = 0
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        with store.engine.connect() as conn:
            found += int(
                conn.execute(
                    select(func.count())
                    .select_from(saga_table)
                    .where(saga_table.c.id.in_(chunk), saga_table.c.status == expected)
                ).scalar()
                or 0
            )
    if found != len(ids):
        raise BenchTimeoutError(f"only {found} of {len(ids)} sagas are {expected} in the store")


def warmup(bench: Bench, n: int, shapes: Sequence[Shape], timeout: float = 60.0) -> None:
    """Run every shape, `n` at once, on both systems, so that every pool process has its
    connections open and its code paths imported before anything is timed."""
    for shape in shapes:
        floor = bench.has_floor and not shape.fan
        for system in (*SYSTEMS, "floor") if floor else SYSTEMS:
            submit = bench.submitter(system)
            keys = [submit(shape) for _ in range(n)]
            bench.sink.collect(keys, timeout)


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
        "n": len(values),
    }
