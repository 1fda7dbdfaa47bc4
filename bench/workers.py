"""Start and stop `celery worker` subprocesses by PID, and the services' housekeeping around them
(the bench database, queue purges)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from urllib.parse import quote

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError
from sqlalchemy import create_engine, text

from bench.config import BENCH_DB, PG_ADMIN_URL, QUEUE, REDIS_URL, REPO, Backend
from bench.snapshot import source_dir


class WorkerProcess:
    """One `celery -A bench.worker_app worker` (prefork pool) in its own process group."""

    def __init__(
        self,
        backend: Backend,
        store_url: str,
        *,
        concurrency: int,
        events: bool,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = f"bench-{os.getpid()}-{time.monotonic_ns()}@localhost"
        self.concurrency = concurrency
        env = dict(os.environ)
        env.update(
            SAGAQ_BROKER_URL=backend.broker_url,
            SAGAQ_RESULT_BACKEND=backend.result_backend,
            SAGAQ_STORE_URL=store_url,
            SAGAQ_DEFAULT_QUEUE=QUEUE,
            BENCH_DONE_URL=REDIS_URL,
            BENCH_EVENTS="1" if events else "0",
            # After what is already there: a sagaq snapshot (bench/snapshot.py) comes first.
            PYTHONPATH=os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(REPO)) if p),
        )
        env.update(extra_env or {})
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.worker_app",
                "worker",
                "-P",
                "prefork",
                "-c",
                str(concurrency),
                "-Q",
                QUEUE,
                "-n",
                self.name,
                "-l",
                "WARNING",
                *(["-E"] if events else []),
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=source_dir(),  # celery -A puts it first on sys.path: where sagaq comes from
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop it and its pool by PID
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        """PIDs of the prefork pool processes."""
        try:
            text_ = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text_.split()]

    def wait_ready(self, app: Celery, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.tail()}")
            try:
                pong = app.control.ping(destination=[self.name], timeout=0.5)
                if pong and len(self.children()) >= self.concurrency:
                    return
            except (BrokerError, RedisError, OSError):
                pass  # the broker is restarting (other jobs do that): ask again
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout:g}s: {self.tail()}")

    def tail(self, lines: int = 20) -> str:
        self._log.flush()
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM to the main process), then SIGKILL its process group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # pool children left behind, if any
        if self.proc.poll() is None:
            self.proc.wait(5)
        self._log.close()


def purge(app: Celery, queue: str = QUEUE) -> int:
    """Drop whatever an earlier (interrupted) run left in the bench queue."""
    with app.connection_for_write() as conn:
        channel = conn.channel()
        try:
            return int(channel.queue_purge(queue) or 0)
        except Exception:  # RabbitMQ: the queue does not exist yet
            return 0
        finally:
            channel.close()


# -- the PostgreSQL bench database ---------------------------------------------------------


def _psycopg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def bench_db_url(schema: str) -> str:
    """The bench database, with `schema` first on the search path."""
    base = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{BENCH_DB}"
    return f"{base}?options={quote(f'-csearch_path={schema}')}"


def create_bench_db() -> None:
    admin = create_engine(_psycopg(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{BENCH_DB}"'))
    admin.dispose()


def drop_bench_db() -> None:
    admin = create_engine(_psycopg(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)'))
    admin.dispose()


def fresh_schema(schema: str) -> str:
    """(Re)create `schema` in the bench database; returns a store URL that uses it."""
    engine = create_engine(_psycopg(bench_db_url("public")))
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return bench_db_url(schema)


def truncate(store_url: str) -> None:
    """Empty the saga tables between measurements (they exist: the store created them)."""
    if not store_url.startswith("postgresql"):
        return
    engine = create_engine(_psycopg(store_url))
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE saga, saga_step, saga_event"))
    engine.dispose()


def fill(store_url: str, rows: int, with_steps: bool) -> float:
    """Bulk-insert `rows` finished sagas (and 5 COMPLETED step rows each when `with_steps`) in
    single INSERT ... SELECT generate_series statements, then ANALYZE. Returns seconds taken."""
    started = time.perf_counter()
    engine = create_engine(_psycopg(store_url))
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        conn.execute(
            text(
                """
                INSERT INTO saga (id, name, status, input, created_at, updated_at, finished_at)
                SELECT md5(g::text)::uuid::text, 'bench_line5',
                       CASE WHEN g % 50 = 0 THEN 'COMPENSATED' ELSE 'COMPLETED' END,
                       jsonb_build_object('n', g), t, t + 0.05, t + 0.05
                FROM generate_series(1, :rows) AS g,
                     LATERAL (SELECT extract(epoch FROM now())::float8 - 2592000 + g * 2.0
                              AS t) AS x
                """
            ),
            {"rows": rows},
        )
        if with_steps:
            conn.execute(
                text(
                    """
                    INSERT INTO saga_step (saga_id, name, position, status, attempts, result,
                                           started_at, finished_at, compensation_attempts,
                                           applied, undoable)
                    SELECT s.id, 's' || k, k - 1, 'COMPLETED', 1, 'null'::jsonb,
                           s.created_at, s.finished_at, 0, false, true
                    FROM saga AS s, generate_series(1, 5) AS k
                    """
                )
            )
            # Their history: the saga's start and end (a real W1 saga also has 10 step rows).
            conn.execute(
                text(
                    """
                    INSERT INTO saga_event (saga_id, at, kind, status)
                    SELECT s.id, s.created_at, 'saga', 'RUNNING' FROM saga AS s
                    UNION ALL
                    SELECT s.id, s.finished_at, 'saga', s.status FROM saga AS s
                    """
                )
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE saga"))
        conn.execute(text("VACUUM ANALYZE saga_step"))
        conn.execute(text("VACUUM ANALYZE saga_event"))
        conn.execute(text("CHECKPOINT"))  # do not leave the flush of the load to the measurement
    engine.dispose()
    return time.perf_counter() - started


def count_rows(store_url: str) -> tuple[int, int]:
    engine = create_engine(_psycopg(store_url))
    with engine.connect() as conn:
        sagas = int(conn.execute(text("SELECT count(*) FROM saga")).scalar() or 0)
        steps = int(conn.execute(text("SELECT count(*) FROM saga_step")).scalar() or 0)
    engine.dispose()
    return sagas, steps
