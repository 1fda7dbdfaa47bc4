"""Worker entry point of the benchmark, imported by the worker subprocess:

    celery -A bench.worker_app worker -P prefork -c 2 -Q sagaq_bench

It registers the sagaq bench sagas and the raw Celery tasks on one app. URLs come from
SAGAQ_BROKER_URL, SAGAQ_RESULT_BACKEND and SAGAQ_STORE_URL (read by sagaq.settings.Settings);
BENCH_DONE_URL is the Redis holding the completion list, BENCH_EVENTS=1 turns Celery events on,
BENCH_COUNT_SQL=1 counts SQL statements and transactions (profiling only).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import redis
from celery.signals import worker_process_init
from sqlalchemy import Engine, event

import sagaq
from bench.apps import RedisDone, build
from sagaq import Settings

_settings = Settings()
bench = build(
    _settings.broker_url,
    _settings.result_backend,
    _settings.store_url,
    events=os.environ.get("BENCH_EVENTS") == "1",
    embedded=False,
    sink=RedisDone(os.environ.get("BENCH_DONE_URL", "redis://127.0.0.1:6379/7")),
)
app = bench.app
print(f"bench worker: sagaq imported from {sagaq.__file__}", file=sys.stderr, flush=True)

SQL_COUNTS = "sagaq_bench:sql"


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # The parent process opened a PostgreSQL connection while creating the tables; a forked
    # pool child must not share that socket with its siblings.
    bench.engine.store.engine.dispose(close=False)


def _count_sql() -> None:
    counts = redis.Redis.from_url(os.environ.get("BENCH_DONE_URL", "redis://127.0.0.1:6379/7"))
    engine = Engine  # every engine of the process: the store may keep more than one

    def counter(kind: str) -> Callable[..., None]:
        def hit(conn: Any, *_: Any) -> None:
            # On an AUTOCOMMIT connection BEGIN/COMMIT/ROLLBACK never reach the server.
            auto = bool(getattr(conn.connection.dbapi_connection, "autocommit", False))
            counts.hincrby(SQL_COUNTS, kind + (" (autocommit: no round trip)" if auto else ""), 1)

        return hit

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        auto = bool(getattr(conn.connection.dbapi_connection, "autocommit", False))
        word = statement.split(None, 1)[0].upper()
        counts.hincrby(SQL_COUNTS, word + (" (autocommit)" if auto else ""), 1)

    event.listen(engine, "begin", counter("BEGIN"))
    event.listen(engine, "commit", counter("COMMIT"))
    event.listen(engine, "rollback", counter("ROLLBACK"))


if os.environ.get("BENCH_COUNT_SQL") == "1":
    _count_sql()
