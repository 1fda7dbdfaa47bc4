"""The migrations build exactly the schema in sagaq/store/schema.py, on PostgreSQL and SQLite.

When schema.py gains a column or an index, these tests fail until a migration adds it too
(`sagaq.store.migrate.new_revision("what changed")` drafts one)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, MetaData, String, create_engine, inspect, text
from sqlalchemy.engine import make_url

from sagaq.store import SagaStore
from sagaq.store.migrate import alembic_config, head, upgrade
from sagaq.store.schema import metadata
from tests.drive import claim_undo, complete, fail
from tests.harness import PG_URL, pg_schema_url, require

TABLES = {"saga", "saga_step", "saga_event"}


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL with nothing in it: a fresh PostgreSQL schema, or a new SQLite file."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sagaq.db'}"
        return
    require(PG_URL)
    with pg_schema_url() as url:
        yield url


def differences(url: str, against: MetaData = metadata) -> list[Any]:
    store = SagaStore(url, create_tables=False)
    try:
        with store.engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, against))
    finally:
        store.dispose()


def tables_and_revision(url: str) -> tuple[set[str], str | None]:
    store = SagaStore(url, create_tables=False)
    try:
        with store.engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            return names, MigrationContext.configure(conn).get_current_revision()
    finally:
        store.dispose()


def test_migrations_build_exactly_the_schema_of_schema_py(empty_url: str) -> None:
    done = upgrade(empty_url)

    assert (done.before, done.after, done.stamped) == (None, head(), False)
    assert differences(empty_url) == []
    assert tables_and_revision(empty_url) == (TABLES | {"alembic_version"}, head())


def test_a_database_at_the_first_revision_upgrades_to_head(empty_url: str) -> None:
    store = SagaStore(empty_url, create_tables=False)
    try:
        with store.engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0001")
    finally:
        store.dispose()

    done = upgrade(empty_url)

    assert (done.before, done.after) == ("0001", head())
    assert differences(empty_url) == []


def test_the_comparison_would_notice_a_column_the_migrations_lack(empty_url: str) -> None:
    # Guard against a comparison that can never fail: add a column to a copy of the schema.
    upgrade(empty_url)
    grown = MetaData()
    for table in metadata.tables.values():
        table.to_metadata(grown)
    grown.tables["saga"].append_column(Column("tenant", String(50)))

    found = differences(empty_url, against=grown)

    assert [(d[0], d[3].name) for d in found] == [("add_column", "tenant")]


def test_upgrade_adopts_tables_the_store_created_and_then_does_nothing(empty_url: str) -> None:
    SagaStore(empty_url).create_tables()  # what the store does on its first use

    adopted = upgrade(empty_url)
    again = upgrade(empty_url)

    assert (adopted.before, adopted.after, adopted.stamped) == (None, head(), True)
    assert (again.before, again.after, again.stamped) == (head(), head(), False)
    assert differences(empty_url) == []


def test_a_migrated_database_serves_the_store(empty_url: str) -> None:
    upgrade(empty_url)
    store = SagaStore(empty_url)  # create_all finds everything there already
    try:
        saga_id, created = store.create_saga("m-1", "order", {"order_id": "o-1"}, ["a", "b"])
        record = store.get(saga_id)
    finally:
        store.dispose()

    assert created
    assert record is not None and [s.name for s in record.steps] == ["a", "b"]


def compensate_one(store: SagaStore) -> Any:
    """A saga whose step b fails after a completed, driven through the store; its record."""
    saga_id, _ = store.create_saga(
        str(uuid.uuid4()), "order", {"order_id": "o-2"}, ["a", "b"], undoable=["a"]
    )
    complete(store, saga_id, "a", "A")
    fail(store, saga_id, "b", "declined", deps=["a"])
    assert store.begin_compensation(saga_id, cause="failure", failed_step="b").steps == ["a"]
    store.complete_compensation(saga_id, "a", claim_undo(store, saga_id, "a"))
    return store.get(saga_id)


def test_a_migrated_database_compensates_with_nothing_created_by_the_store(
    empty_url: str,
) -> None:
    # A managed deployment: the schema comes from `sagaq db upgrade` only (on PostgreSQL that
    # includes the functions the compensation path calls).
    upgrade(empty_url)
    store = SagaStore(empty_url, create_tables=False)
    try:
        record = compensate_one(store)
    finally:
        store.dispose()

    assert record is not None and record.status == "COMPENSATED"
    assert record.step("a").status == "COMPENSATED"


def test_a_worker_whose_role_may_only_write_rows_runs_on_a_migrated_database() -> None:
    # Workers often run as a role without DDL rights; the store must not try to (re)create what
    # `sagaq db upgrade` already installed.
    require(PG_URL)
    role = f"sagaq_rows_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with pg_schema_url() as url:
        upgrade(url)
        store = SagaStore(url, create_tables=False)
        try:
            with store.engine.begin() as conn:
                schema = conn.execute(text("SELECT current_schema()")).scalar_one()
                conn.execute(text(f"CREATE ROLE {role} LOGIN"))
                conn.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {role}"))
                rows = "SELECT, INSERT, UPDATE, DELETE"
                conn.execute(text(f"GRANT {rows} ON ALL TABLES IN SCHEMA {schema} TO {role}"))
                conn.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"))
            worker = SagaStore(make_url(url).set(username=role).render_as_string(False))
            try:
                record = compensate_one(worker)  # creates the tables "if missing" first
            finally:
                worker.dispose()
        finally:
            store.dispose()
            with admin.begin() as conn:
                conn.execute(text(f"DROP OWNED BY {role}"))
                conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
            admin.dispose()

    assert record is not None and record.status == "COMPENSATED"


def test_downgrade_to_base_removes_every_table(empty_url: str) -> None:
    upgrade(empty_url)
    store = SagaStore(empty_url, create_tables=False)
    try:
        with store.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "base")
    finally:
        store.dispose()

    assert tables_and_revision(empty_url) == ({"alembic_version"}, None)


def test_the_history_is_one_line_ending_at_head() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())

    assert scripts.get_heads() == [head()]
    revisions = [r.revision for r in scripts.walk_revisions()]  # newest first
    assert revisions == [f"{n:04d}" for n in range(len(revisions), 0, -1)]
