"""Measure what one saga step costs each shared resource, for docs/capacity.md:

    .venv/bin/python -m tests.cluster.capacity [--sagas 400] [--workers 1]

On a PostgreSQL cluster and a redis-server of its own (nothing else writes to them, so their
counters are sagaq's alone; fsync stays on), `--workers` prefork workers (-c 2) run `line5`
sagas (tests/cluster/capacity_app.py: five no-op steps, the saga's own cost). After a warm-up
it counts, over `--sagas` sagas started as fast as the client can:

- PostgreSQL: statements (pg_stat_statements, the measurement's own polling excluded),
  transactions (pg_stat_database.xact_commit) and WAL bytes (pg_current_wal_lsn);
- Redis: commands by name and Redis CPU (INFO commandstats, INFO cpu);
- CPU of the worker processes (/proc), of the client (start()), of PostgreSQL and Redis.

Then the ceilings of this machine for the shared services: PostgreSQL write transactions/s
(pgbench -N, 8 clients, 10 s, fsync on) and Redis (its CPU is one core). Results go to
bench/results/capacity-latest.json and are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from sqlalchemy import create_engine, text

from sagaq import SagaQ
from tests.chaos.pool import ROOT, WorkerPool
from tests.cluster.capacity_app import LENGTH, SAGA, build_line
from tests.cluster.hosts import BoundRedis, OwnPostgres

RESULTS = ROOT / "bench" / "results" / "capacity-latest.json"
TICK = os.sysconf("SC_CLK_TCK")
POLL_TAG = "/* capacity-poll */"


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICK


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class Counters:
    """Snapshots of every counter the measurement reads."""

    def __init__(self, pg_url: str, redis_client: redis.Redis, pool: WorkerPool, pg_pid: int):
        self.db = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
        self.redis = redis_client
        self.pool = pool
        self.pg_pid = pg_pid
        self.polls = 0  # the measurement's own transactions, taken out of the counts

    def reset(self) -> None:
        with self.db.begin() as conn:
            conn.execute(text("SELECT pg_stat_statements_reset()"))
        self.redis.config_resetstat()

    def take(self) -> dict[str, Any]:
        with self.db.connect() as conn:
            wal = conn.execute(text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")).scalar_one()
            xacts = conn.execute(
                text("SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'")
            ).scalar_one()
            connections = conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
            ).scalar_one()
            statements = conn.execute(
                text(
                    "SELECT query, calls FROM pg_stat_statements WHERE query NOT LIKE :tag "
                    "AND query NOT LIKE '%pg_stat_statements%'"
                ),
                {"tag": f"%{POLL_TAG}%"},
            ).all()
        workers = [pid for w in self.pool.live for pid in (w.pid, *w.children())]
        info = self.redis.info("all")
        commands = {
            k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in info.items()
            if k.startswith("cmdstat_")
        }
        return {
            "at": time.monotonic(),
            "wal_bytes": int(wal),
            "pg_connections": int(connections),
            "xact_commit": int(xacts),
            "statements": {q: int(c) for q, c in statements},
            "redis_commands": commands,
            "redis_cpu": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            "worker_cpu": _cpu_seconds(workers),
            "pg_cpu": _cpu_seconds([self.pg_pid, *_children(self.pg_pid)]),
            "client_cpu": time.process_time(),
            "polls": self.polls + 1,  # this snapshot's own transaction counts too
        }

    def completed(self) -> int:
        self.polls += 1
        with self.db.connect() as conn:
            query = text(f"SELECT count(*) {POLL_TAG} FROM saga WHERE status = 'COMPLETED'")
            return int(conn.execute(query).scalar_one())


def _app(broker: str) -> Celery:
    app = Celery("sagaq-capacity-client", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=broker, result_backend=broker.replace("/0", "/1"))
    return app


def _run_sagas(engine: SagaQ, counters: Counters, count: int, already: int) -> float:
    began = time.monotonic()
    for i in range(count):
        engine.start(SAGA, {"i": i})
    while counters.completed() < already + count:
        if time.monotonic() - began > 600:
            raise TimeoutError(f"{count} sagas did not complete in 600 s")
        time.sleep(0.2)
    return time.monotonic() - began


def _pgbench(pg: OwnPostgres) -> float:
    """Write transactions/s this machine's PostgreSQL sustains (pgbench -N: 3 writes + 1 read
    per transaction), 8 clients, 10 s, fsync on."""
    pgbench = str(pg.bin / "pgbench")
    base = ["runuser", "-u", "postgres", "--", pgbench, "-h", "127.0.0.1", "-p", str(pg.port)]
    subprocess.run([*base, "-i", "-q", "-s", "4", "postgres"], check=True, capture_output=True)
    done = subprocess.run(
        [*base, "-N", "-c", "8", "-j", "2", "-T", "10", "postgres"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    found = re.search(r"tps = ([0-9.]+)", done.stdout)
    return float(found.group(1)) if found else 0.0


def _by_prefix(statements: dict[str, int], per: float) -> dict[str, float]:
    """Calls per step by the statement's first 100 characters (enough to tell them apart)."""
    found: dict[str, int] = {}
    for query, calls in statements.items():
        key = " ".join(query.split())[:100]
        found[key] = found.get(key, 0) + calls
    return {q: round(n / per, 2) for q, n in sorted(found.items(), key=lambda kv: -kv[1]) if n}


def _delta(before: dict[str, Any], after: dict[str, Any], steps: int, sagas: int) -> dict[str, Any]:
    statements = {
        q: after["statements"].get(q, 0) - before["statements"].get(q, 0)
        for q in after["statements"]
    }
    commands = {
        c: n - before["redis_commands"].get(c, 0) for c, n in after["redis_commands"].items()
    }
    commands = {c: n for c, n in sorted(commands.items(), key=lambda kv: -kv[1]) if n}
    per = float(steps)
    return {
        "sagas": sagas,
        "steps": steps,
        # Client backends open at the end: the workers' pools, the client's, this measurement's.
        "pg_connections": after["pg_connections"],
        "pg_statements_per_step": round(sum(statements.values()) / per, 2),
        "pg_transactions_per_step": round(
            (after["xact_commit"] - before["xact_commit"] - after["polls"] + before["polls"]) / per,
            2,
        ),
        "wal_bytes_per_step": round((after["wal_bytes"] - before["wal_bytes"]) / per),
        "redis_commands_per_step": round(sum(commands.values()) / per, 2),
        "redis_commands_by_name_per_step": {c: round(n / per, 2) for c, n in commands.items()},
        "redis_cpu_ms_per_step": round(1000 * (after["redis_cpu"] - before["redis_cpu"]) / per, 3),
        "worker_cpu_ms_per_step": round(
            1000 * (after["worker_cpu"] - before["worker_cpu"]) / per, 2
        ),
        "pg_cpu_ms_per_step": round(1000 * (after["pg_cpu"] - before["pg_cpu"]) / per, 2),
        "client_cpu_ms_per_saga": round(
            1000 * (after["client_cpu"] - before["client_cpu"]) / sagas, 2
        ),
        "statements_per_step": _by_prefix(statements, per),
    }


def measure(sagas: int, workers: int) -> dict[str, Any]:
    settings = (
        "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=top "
        "-c synchronous_commit=on"
    )
    queue = f"sagaq-capacity-{uuid.uuid4().hex[:8]}"
    with BoundRedis([]) as broker, OwnPostgres([], settings=settings) as pg:
        with create_engine(
            pg.url().replace("postgresql://", "postgresql+psycopg://", 1)
        ).begin() as c:
            c.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        engine = SagaQ(_app(broker.url()), store=pg.url())
        engine.register(build_line(queue))
        env = {
            "SAGAQ_BROKER_URL": broker.url(),
            "SAGAQ_RESULT_BACKEND": broker.url(db=1),
            "SAGAQ_STORE_URL": pg.url(),
            "SAGAQ_DEFAULT_QUEUE": queue,
        }
        logs = ROOT / "tests" / "artifacts" / "capacity-workers"
        pg_pid = int((pg.data / "postmaster.pid").read_text().split()[0])
        with WorkerPool(
            env, queue, logs, size=workers, concurrency=2, app="tests.cluster.capacity_app"
        ) as pool:
            counters = Counters(pg.url(), redis.Redis(port=broker.port), pool, pg_pid)
            _run_sagas(engine, counters, 30, 0)  # warm-up: connections, imports, caches
            counters.reset()
            before = counters.take()
            seconds = _run_sagas(engine, counters, sagas, 30)
            after = counters.take()
        result = _delta(before, after, sagas * LENGTH, sagas)
        result.update(
            workers=workers,
            concurrency=2,
            seconds=round(seconds, 2),
            sagas_per_s=round(sagas / seconds, 1),
            steps_per_s=round(sagas * LENGTH / seconds, 1),
            cores=os.cpu_count(),
            pg_write_tps_ceiling=_pgbench(pg),
        )
        engine.store.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=400)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    result = measure(args.sagas, args.workers)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
