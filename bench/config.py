"""Where the services are, which backends exist, and how much work each mode does."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

# Queue and Redis database used only by the benchmark, so nothing else on the machine
# consumes its messages and its keys never mix with the tests' (they use database 0).
QUEUE = os.environ.get("BENCH_QUEUE", "sagaq_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
# An existing database to connect to while creating and dropping the bench database.
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BENCH_DB = os.environ.get("BENCH_DB", "sagaq_bench")

# Saga lengths of the latency-vs-length sweep (W1 is the 5-step one).
LENGTHS = (1, 2, 5, 10, 20)
FAN_WIDTH = 8
FAIL_AT = 4  # W2: step 4 of 5 fails, steps 3, 2, 1 are compensated
WORKER_COUNTS = (1, 2, 4)


@dataclass(frozen=True)
class Backend:
    name: str
    broker_url: str
    result_backend: str
    label: str
    in_process: bool  # embedded: memory broker + worker threads inside the benchmark process

    @property
    def services(self) -> list[str]:
        """URLs of the services a measurement on this backend depends on."""
        if self.in_process:
            return []
        return sorted({self.broker_url, self.result_backend, REDIS_URL, PG_ADMIN_URL})


BACKENDS: dict[str, Backend] = {
    "redis": Backend(
        "redis", REDIS_URL, REDIS_URL, "Redis broker + Redis results + PostgreSQL store", False
    ),
    "rabbitmq": Backend(
        "rabbitmq",
        AMQP_URL,
        REDIS_URL,
        "RabbitMQ broker + Redis results + PostgreSQL store",
        False,
    ),
    "embedded": Backend(
        "embedded",
        "memory://localhost/",
        "cache+memory://",
        "embedded: memory broker + in-process worker + SQLite store",
        True,
    ),
}


@dataclass(frozen=True)
class Counts:
    """How many sagas each measurement uses."""

    throughput: int  # submitted at once
    latency: int  # submitted one at a time
    caller_latency: int  # one at a time, completion seen through engine.wait / AsyncResult.get
    length: int  # one at a time, per saga length
    scaling: int  # submitted at once, per worker count
    status_queries: int
    big_rows: int  # filler sagas for the big-table run
    big_steps: bool  # give each filler saga 5 step rows as well
    warmup: int
    repeats: int
    timeout: float  # seconds for one throughput measurement


FULL = Counts(
    throughput=300,
    latency=100,
    caller_latency=50,
    length=40,
    scaling=300,
    status_queries=1000,
    big_rows=1_000_000,
    big_steps=True,
    warmup=40,
    repeats=3,
    timeout=120.0,
)
QUICK = Counts(
    throughput=100,
    latency=30,
    caller_latency=15,
    length=10,
    scaling=100,
    status_queries=200,
    big_rows=1_000_000,
    big_steps=False,
    warmup=20,
    repeats=1,
    timeout=60.0,
)
