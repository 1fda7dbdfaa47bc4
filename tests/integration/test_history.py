"""The read side of history on SQLite and PostgreSQL: finding sagas (key, id prefix, name,
status, cause, time range), cursor pages, capped counts per status, a saga's events, retention.
Sagas are created through the store; their status, cause and times are then set as the runtime
would leave them. On PostgreSQL, the plans of these queries use indexes (no scan of the table).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update

from sagaq import SagaStatus
from sagaq.errors import InvalidInputError
from sagaq.retention import count_purgeable, purge
from sagaq.store import SagaStore
from sagaq.store.history import SagaFilter, SagaHistory
from sagaq.store.schema import saga as saga_table
from tests.harness import PG_URL, pg_schema_url, require

DAY = 86400.0


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SagaStore]:
    if request.param == "sqlite":
        s = SagaStore(f"sqlite:///{tmp_path / 'history.db'}")
        yield s
        s.dispose()
        return
    require(PG_URL)
    with pg_schema_url() as url:
        s = SagaStore(url)
        yield s
        s.dispose()


def add(
    store: SagaStore,
    name: str = "order",
    *,
    key: str | None = None,
    status: SagaStatus = SagaStatus.COMPLETED,
    cause: str | None = None,
    age: float = 0.0,
    saga_id: str | None = None,
) -> str:
    """A saga as the runtime leaves it: created `age` seconds ago, in `status`."""
    sid, created = store.create_saga(saga_id or str(uuid.uuid4()), name, {}, ["a"], key)
    assert created
    at = time.time() - age
    finished = at + 1 if status.is_terminal else None
    with store.engine.begin() as conn:
        conn.execute(
            update(saga_table)
            .where(saga_table.c.id == sid)
            .values(status=status, cause=cause, created_at=at, updated_at=at, finished_at=finished)
        )
    return sid


def test_a_saga_is_found_by_its_idempotency_key_whatever_its_saga_name(store: SagaStore) -> None:
    wanted = add(store, "order", key="o-1001")
    add(store, "order", key="o-1002")
    add(store, "refund", key="r-7")

    found = SagaHistory(store).search(SagaFilter(key="o-1001")).sagas

    assert [(s.id, s.name, s.idempotency_key) for s in found] == [(wanted, "order", "o-1001")]


def test_a_saga_is_found_by_the_start_of_its_id_and_wildcards_are_taken_literally(
    store: SagaStore,
) -> None:
    wanted = add(store, saga_id="abc12345-0000-4000-8000-000000000001")
    add(store, saga_id="abd12345-0000-4000-8000-000000000002")
    add(store, saga_id="a_c12345-0000-4000-8000-000000000003")
    history = SagaHistory(store)

    assert [s.id for s in history.search(SagaFilter(id_prefix="abc")).sagas] == [wanted]
    assert [s.id for s in history.search(SagaFilter(id_prefix="a_c")).sagas] == [
        "a_c12345-0000-4000-8000-000000000003"
    ]
    assert history.search(SagaFilter(id_prefix="%")).sagas == []


def test_filters_by_name_status_cause_and_time_range_combine(store: SagaStore) -> None:
    cancelled = add(store, status=SagaStatus.COMPENSATED, cause="cancel", age=3600)
    failed = add(store, status=SagaStatus.COMPENSATED, cause="failure", age=3600)
    add(store, status=SagaStatus.COMPENSATED, cause="cancel", age=3 * DAY)  # too old
    add(store, "refund", status=SagaStatus.COMPENSATED, cause="cancel", age=3600)
    history = SagaHistory(store)
    now = time.time()

    def ids(**where: Any) -> set[str]:
        return {s.id for s in history.search(SagaFilter(**where)).sagas}

    recent = {"name": "order", "since": now - DAY, "until": now}
    assert ids(**recent, status=SagaStatus.COMPENSATED, cause="cancel") == {cancelled}
    assert ids(**recent, cause="failure") == {failed}
    assert ids(**recent, status=SagaStatus.RUNNING) == set()
    with pytest.raises(InvalidInputError, match="cause must be one of"):
        SagaFilter(cause="boredom")


def test_cursor_pages_cover_every_saga_once_newest_first(store: SagaStore) -> None:
    created = [add(store, age=100 - i) for i in range(23)]  # the last one is the newest
    history = SagaHistory(store)

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = history.search(cursor=cursor, limit=10)
        seen += [s.id for s in page.sagas]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert seen == created[::-1]
    assert pages == 3
    with pytest.raises(InvalidInputError, match="not a cursor"):
        history.search(cursor="not-a-cursor")


def test_counts_per_status_follow_the_filters_and_stop_at_the_cap(store: SagaStore) -> None:
    for _ in range(4):
        add(store, status=SagaStatus.COMPLETED)
    add(store, status=SagaStatus.FAILED, cause="failure")
    add(store, status=SagaStatus.RUNNING)
    add(store, "refund", status=SagaStatus.FAILED, cause="failure")
    history = SagaHistory(store)

    orders = history.count_by_status(SagaFilter(name="order", status=SagaStatus.FAILED))
    capped = history.count_by_status(cap=3)

    # The status filter is ignored: the counts are what each status chip would show.
    assert orders.counts == {
        SagaStatus.PENDING: 0,
        SagaStatus.RUNNING: 1,
        SagaStatus.COMPLETED: 4,
        SagaStatus.COMPENSATING: 0,
        SagaStatus.COMPENSATED: 0,
        SagaStatus.FAILED: 1,
    }
    assert capped.counts[SagaStatus.COMPLETED] == 3 and capped.shown(SagaStatus.COMPLETED) == "3+"
    assert capped.shown(SagaStatus.FAILED) == "2"


def test_events_of_a_saga_come_back_in_the_order_they_happened(store: SagaStore) -> None:
    saga_id = add(store, status=SagaStatus.FAILED)
    other = add(store)
    history = SagaHistory(store)
    history.record(saga_id, "step", step="a", status="FAILED", attempt=1, error="card declined")
    history.record(other, "saga", status="COMPLETED")
    history.record(saga_id, "operator", status="RETRY", actor="alice", reason="card fixed")

    events = history.events(saga_id)[1:]  # after the row the store wrote when it was created

    assert [(e.kind, e.status, e.actor) for e in events] == [
        ("step", "FAILED", None),
        ("operator", "RETRY", "alice"),
    ]
    assert events[0].error == "card declined" and events[0].attempt == 1
    assert history.events(saga_id, after=events[0].id) == events[1:]


def test_purge_deletes_old_finished_sagas_with_their_history_in_batches(store: SagaStore) -> None:
    old = [add(store, status=SagaStatus.COMPLETED, age=40 * DAY) for _ in range(5)]
    old_compensated = add(store, status=SagaStatus.COMPENSATED, cause="cancel", age=40 * DAY)
    old_failed = add(store, status=SagaStatus.FAILED, age=40 * DAY)
    old_running = add(store, status=SagaStatus.RUNNING, age=40 * DAY)
    recent = add(store, status=SagaStatus.COMPLETED, age=DAY)
    history = SagaHistory(store)
    history.record(old[0], "saga", status="COMPLETED")
    assert count_purgeable(store, older_than=30 * DAY) == 6

    report = purge(store, older_than=30 * DAY, batch=2)

    assert (report.sagas, report.batches) == (6, 3)
    for gone in [*old, old_compensated]:
        assert store.get(gone) is None
    assert history.events(old[0]) == []
    for kept in (old_failed, old_running, recent):
        assert store.get(kept) is not None  # FAILED waits for an operator; RUNNING is unfinished
    assert purge(store, older_than=30 * DAY, statuses=["FAILED"]).sagas == 1
    with pytest.raises(InvalidInputError, match="RUNNING sagas are unfinished and are never"):
        purge(store, older_than=30 * DAY, statuses=["RUNNING"])
    assert store.get(old_running) is not None


def test_the_queries_read_a_bounded_number_of_rows_not_the_table(tmp_path: Path) -> None:
    """PostgreSQL, 20,000 sagas, counting capped at 5,000 per status: searches and pages read a
    handful of rows through indexes; counts read at most the cap per status, never the table
    (EXPLAIN ANALYZE: rows each scan of `saga` returned or filtered out)."""
    require(PG_URL)
    with pg_schema_url() as url:
        store = SagaStore(url)
        try:
            with store.engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO saga (id, name, status, input, idempotency_key, created_at,"
                        " updated_at, finished_at) SELECT md5(i::text), 'order', CASE WHEN i % 100"
                        " = 0 THEN 'FAILED' ELSE 'COMPLETED' END, '{}', 'o-' || i, i, i, i + 1"
                        " FROM generate_series(1, 20000) AS i"
                    )
                )
                conn.execute(text("ANALYZE saga"))
            history = SagaHistory(store)
            failed = SagaFilter(name="order", status=SagaStatus.FAILED)
            read = {
                "key": _rows_read(store, lambda: history.search(SagaFilter(key="o-77"))),
                "id prefix": _rows_read(
                    store, lambda: history.search(SagaFilter(id_prefix="c4ca"))
                ),
                "first page": _rows_read(store, lambda: history.search(limit=50)),
                "failed page": _rows_read(store, lambda: history.search(failed, limit=50)),
                "counts": _rows_read(store, lambda: history.count_by_status(cap=5000)),
                "gauges": _rows_read(store, lambda: history.count_by_name_status_cause(cap=5000)),
            }
        finally:
            store.dispose()

    assert read["key"] <= 2 and read["id prefix"] <= 2
    assert read["first page"] <= 60 and read["failed page"] <= 60  # limit + 1, and ties
    # COMPLETED stops at 5,000 (plus what a filter skipped on the way); FAILED has 200.
    assert read["counts"] < 6000 and read["gauges"] < 6000


def _rows_read(store: SagaStore, query: Any) -> int:
    """Rows the scans of `saga` produced or filtered out, over every SELECT `query` runs."""
    from sqlalchemy import event

    total = 0

    def analyze(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        nonlocal total
        if statement.lstrip().upper().startswith("SELECT"):
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params)
            total += _scanned(cursor.fetchone()[0][0]["Plan"])

    event.listen(store.engine, "before_cursor_execute", analyze)
    try:
        query()
    finally:
        event.remove(store.engine, "before_cursor_execute", analyze)
    return total


def _scanned(node: dict[str, Any]) -> int:
    own = 0
    if node.get("Relation Name") == "saga":
        own = (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
    return own + sum(_scanned(child) for child in node.get("Plans", []))
