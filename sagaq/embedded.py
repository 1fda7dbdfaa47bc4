"""The embedded default: memory broker, in-memory result backend, in-process worker threads,
SQLite store. No services needed; used by `sagaq demo` and the service-free tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

from sagaq.app_config import SAFE_SETTINGS
from sagaq.settings import Settings


def embedded_app(main: str = "sagaq") -> Celery:
    """A Celery app with sagaq's safe settings on the in-memory transport. Self-contained:
    it reads no celeryconfig module, so it works wherever sagaq is installed."""
    app = Celery(main, set_as_current=False)
    app.conf.update(
        SAFE_SETTINGS,
        task_default_queue=Settings().default_queue,
        broker_url="memory://localhost/",
        result_backend="cache+memory://",
        # The in-memory transport is polled; its default of once a second would make every
        # hop of a saga wait.
        broker_transport_options={"polling_interval": 0.005},
    )
    return app


@contextmanager
def in_process_worker(
    app: Celery, queues: list[str], concurrency: int = 4, pool: str = "threads"
) -> Iterator[Any]:
    """Run a real Celery worker in a background thread of this process."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        app,
        pool=pool,
        concurrency=concurrency,
        queues=queues,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30,
    ) as worker:
        yield worker
