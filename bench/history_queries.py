"""The operator's queries on a big saga table: counts per status (capped, one query), search by
idempotency key and id prefix, the first and a deep page, the gauges; and, for comparison, the
exact uncapped GROUP BY count that reads the whole table.

Part of the big-table run (runner.run_bigtable); also on its own, on a fresh schema:

    python -m bench.history_queries [--rows 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from sagaq.status import SagaStatus
from sagaq.store import SagaStore
from sagaq.store.history import SagaFilter, SagaHistory
from sagaq.store.schema import saga

QUERIES = (
    "counts per status (capped)",
    "counts per status (exact GROUP BY)",
    "search by key",
    "search by id prefix",
    "first page (50)",
    "page 100 (cursor)",
    "COMPENSATED page (50)",
    "gauges (name, status, cause)",
)


def history_times(store_url: str, repeats: int = 15) -> dict[str, float]:
    """Median milliseconds of each query (after one warm-up run)."""
    store = SagaStore(store_url)
    history = SagaHistory(store)
    cursor = _cursor_of_page(history, 100)

    def exact_counts() -> Any:
        with store.engine.connect() as conn:
            return conn.execute(select(saga.c.status, func.count()).group_by(saga.c.status)).all()

    runs: dict[str, Callable[[], Any]] = {
        QUERIES[0]: history.count_by_status,
        QUERIES[1]: exact_counts,
        QUERIES[2]: lambda: history.search(SagaFilter(key="o-123456")),
        QUERIES[3]: lambda: history.search(SagaFilter(id_prefix="c4ca42")),
        QUERIES[4]: lambda: history.search(limit=50),
        QUERIES[5]: lambda: history.search(cursor=cursor, limit=50),
        QUERIES[6]: lambda: history.search(SagaFilter(status=SagaStatus.COMPENSATED)),
        QUERIES[7]: history.count_by_name_status_cause,
    }
    out = {}
    try:
        for name, run in runs.items():
            run()
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                run()
                times.append((time.perf_counter() - started) * 1000)
            out[name] = statistics.median(times)
    finally:
        store.dispose()
    return out


def _cursor_of_page(history: SagaHistory, page: int) -> str | None:
    cursor = None
    for _ in range(page - 1):
        cursor = history.search(cursor=cursor, limit=50).next_cursor
    return cursor


def main() -> None:
    from bench.workers import create_bench_db, fill, fresh_schema

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    create_bench_db()
    results = {}
    for label, rows in (("empty", 0), (f"{args.rows:,} rows", args.rows)):
        url = fresh_schema(f"history_{'big' if rows else 'empty'}")
        SagaStore(url).dispose()
        if rows:
            print(f"filling {rows:,} sagas: {fill(url, rows, with_steps=False):.1f}s")
        results[label] = history_times(url)
        fresh_schema(f"history_{'big' if rows else 'empty'}")  # drop the rows again
    labels = list(results)
    print(f"| query | {' | '.join(labels)} (ms, median) |")
    print(f"|---|{'---|' * len(labels)}")
    for name in QUERIES:
        print(f"| {name} | {' | '.join(f'{results[lab][name]:.2f}' for lab in labels)} |")


if __name__ == "__main__":
    main()
