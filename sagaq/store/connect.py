"""Engines per URL: PostgreSQL via psycopg 3, SQLite (a file) with WAL and serialized writers."""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import ConnectionPoolEntry

from sagaq.errors import StoreUnavailableError


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def forget_connections(engine: weakref.ref[Engine]) -> None:
    """In a forked child: drop the parent's pooled connections without closing them."""
    if (alive := engine()) is not None:
        alive.dispose(close=False)


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL (any driver) as a libpq connection string for psycopg."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def make_engine(url: str, *, autocommit: bool = False) -> Engine:
    """`autocommit` (PostgreSQL): a separate pool whose connections stay in autocommit, for
    single-statement writes; switching a pooled connection back and forth costs more."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        options: dict[str, Any] = {"pool_size": 10, "max_overflow": 20, "pool_recycle": 1800}
        if autocommit:
            options |= {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None}
        return create_engine(parsed, **options)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise StoreUnavailableError(
                "an in-memory SQLite store is not shared between worker threads; "
                "use a file, e.g. sqlite:///sagaq.db"
            )
        engine = create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})
        _serialize_sqlite_writes(engine)
        return engine
    raise StoreUnavailableError(
        f"unsupported store URL {parsed.render_as_string(hide_password=True)!r}: "
        "use sqlite:///file.db or postgresql://..."
    )


def _serialize_sqlite_writes(engine: Engine) -> None:
    """SQLite: WAL, and BEGIN IMMEDIATE so a transaction that reads then writes never fails
    with 'database is locked' on upgrade; writers queue on the busy timeout instead."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None  # let us issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
