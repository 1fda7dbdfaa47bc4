"""pytest fixtures for testing your own sagas, registered as a plugin (`pytest11` entry point)
wherever sagaq is installed. Nothing here needs a service: an embedded engine (SQLite store,
in-memory broker) with a real Celery worker in a thread of the test process.

In your conftest.py, say which sagas to register::

    @pytest.fixture
    def sagaq_sagas():
        return [order_saga]

then in a test::

    def test_order_completes(sagaq_engine):
        assert sagaq_engine.start("order", {...}).wait(10).status == "COMPLETED"

    def test_order_undoes_what_it_did(sagaq_verify):
        sagaq_verify(order_saga, {...})      # a failure injected at every step in turn

The fixture names start with `sagaq_`, so they live beside pytest-celery's `celery_app` and
`celery_worker` when that plugin is enabled too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sagaq.client import SagaQ
from sagaq.definition import Saga
from sagaq.embedded import embedded_app, in_process_worker
from sagaq.verify import VerifyReport, assert_compensates_correctly

__all__ = ["assert_compensates_correctly", "embedded_engine"]


@pytest.fixture
def sagaq_sagas() -> list[Any]:
    """The sagas `sagaq_engine` registers: override it in your conftest.py."""
    return []


@pytest.fixture
def sagaq_engine(sagaq_sagas: list[Any], tmp_path: Path) -> Iterator[SagaQ]:
    """An embedded engine with `sagaq_sagas` registered and a worker running them."""
    with embedded_engine(sagaq_sagas, tmp_path / "sagaq.db") as engine:
        yield engine


@pytest.fixture
def sagaq_verify(tmp_path: Path) -> Callable[..., VerifyReport]:
    """`sagaq_verify(saga, input)`: run the saga with a failure at each step in turn and fail
    the test unless exactly the completed steps were compensated, in reverse order."""

    def verify(saga: Saga, input: Any, *, timeout: float = 30.0) -> VerifyReport:
        url = f"sqlite:///{tmp_path / f'verify-{uuid.uuid4().hex[:8]}.db'}"
        return assert_compensates_correctly(saga, input, store_url=url, timeout=timeout)

    return verify


@contextmanager
def embedded_engine(sagas: list[Any], db_path: Path, concurrency: int = 4) -> Iterator[SagaQ]:
    """SagaQ on SQLite at `db_path` + memory broker + a worker in this process."""
    app = embedded_app(f"sagaq-test-{uuid.uuid4().hex[:6]}")
    engine = SagaQ(app, store=f"sqlite:///{db_path}")
    try:
        engine.register(*sagas)
        with in_process_worker(app, engine.queues(), concurrency):
            yield engine
    finally:
        engine.store.dispose()
