"""Publishers, metrics and tracing fed by real lifecycle events: emitted on an EventBus, or by a
real saga run on the embedded worker. The Redis stream publisher and the worker metrics port
use real Redis (and PostgreSQL): skipped locally without them, failed in CI."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from sagaq import SagaQ, SagaStatus
from sagaq.embedded import embedded_app
from sagaq.observability import EventBus, EventType, SagaEvent
from sagaq.observability.metrics import SagaMetrics, install_metrics, install_worker_metrics
from sagaq.observability.publishers import LogPublisher, RedisStreamPublisher, event_from_fields
from sagaq.observability.tracing import install_tracing
from tests.harness import PG_URL, REDIS_URL, Harness, pg_schema_url, require

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

ROOT = Path(__file__).resolve().parents[2]
embedded = pytest.mark.parametrize("h", ["embedded"], indirect=True)


def lifecycle(saga_id: str = "id-1") -> list[SagaEvent]:
    """A saga whose second step is retried once, whose third fails, and which is compensated."""
    e = EventType
    return [
        SagaEvent(e.SAGA_STARTED, saga_id, "order"),
        SagaEvent(e.STEP_STARTED, saga_id, "order", "reserve", attempt=1),
        SagaEvent(e.STEP_COMPLETED, saga_id, "order", "reserve", attempt=1, duration_ms=12.5),
        SagaEvent(e.STEP_STARTED, saga_id, "order", "charge", attempt=1),
        SagaEvent(e.STEP_RETRYING, saga_id, "order", "charge", attempt=1, error="timeout"),
        SagaEvent(e.STEP_STARTED, saga_id, "order", "charge", attempt=2),
        SagaEvent(e.STEP_COMPLETED, saga_id, "order", "charge", attempt=2, duration_ms=300.0),
        SagaEvent(e.STEP_STARTED, saga_id, "order", "ship", attempt=1),
        SagaEvent(e.STEP_FAILED, saga_id, "order", "ship", attempt=1, error="no courier"),
        SagaEvent(e.COMPENSATION_STARTED, saga_id, "order", "charge", attempt=1),
        SagaEvent(e.COMPENSATION_COMPLETED, saga_id, "order", "charge", attempt=1),
        SagaEvent(e.COMPENSATION_STARTED, saga_id, "order", "reserve", attempt=1),
        SagaEvent(e.COMPENSATION_COMPLETED, saga_id, "order", "reserve", attempt=1),
        SagaEvent(e.SAGA_COMPENSATED, saga_id, "order"),
    ]


def emit_all(bus: EventBus, events: list[SagaEvent]) -> None:
    for event in events:
        bus.emit(event)


def untimed(events: list[SagaEvent]) -> list[SagaEvent]:
    return [replace(event, at=0.0) for event in events]


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# -- publishers ---------------------------------------------------------------------------


def test_log_publisher_writes_one_line_per_event_and_failures_as_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    bus.subscribe(LogPublisher())

    with caplog.at_level(logging.INFO, logger="sagaq.events"):
        emit_all(bus, lifecycle())

    assert len(caplog.records) == len(lifecycle())
    failed = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in failed] == [
        "type=STEP_FAILED saga_id=id-1 saga=order step=ship attempt=1 error=no courier"
    ]
    assert "duration_ms=12.5" in caplog.records[2].getMessage()
    assert caplog.records[2].sagaq_event["step"] == "reserve"  # for JSON log formatters


def test_redis_stream_publisher_appends_events_that_read_back_equal() -> None:
    require(REDIS_URL)
    stream = f"sagaq-test-events-{uuid.uuid4().hex[:8]}"
    client = Redis.from_url(REDIS_URL)
    bus = EventBus()
    bus.subscribe(RedisStreamPublisher.from_url(REDIS_URL, stream=stream))
    try:
        emit_all(bus, lifecycle())

        entries = client.xrange(stream)
        read_back = [event_from_fields(fields) for _, fields in entries]
        assert untimed(read_back) == untimed(lifecycle())
        assert entries[4][1][b"error"] == b"timeout"
    finally:
        client.delete(stream)
        client.close()


def test_redis_stream_is_trimmed_to_about_maxlen() -> None:
    require(REDIS_URL)
    stream = f"sagaq-test-events-{uuid.uuid4().hex[:8]}"
    client = Redis.from_url(REDIS_URL)
    publish = RedisStreamPublisher(client, stream=stream, maxlen=10)
    try:
        for i in range(500):
            publish(SagaEvent(EventType.SAGA_STARTED, f"id-{i}", "order"))

        assert client.xlen(stream) < 500
    finally:
        client.delete(stream)
        client.close()


def test_a_failing_publisher_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: SagaEvent) -> None:
        raise ConnectionError("redis is down")

    seen: list[SagaEvent] = []
    bus = EventBus()
    bus.subscribe(broken)
    bus.subscribe(seen.append)

    emit_all(bus, lifecycle())

    assert untimed(seen) == untimed(lifecycle())
    assert "event publisher" in caplog.text


# -- metrics ------------------------------------------------------------------------------


def test_metrics_count_sagas_steps_retries_and_compensations() -> None:
    registry = CollectorRegistry()
    bus = EventBus()
    SagaMetrics(registry).subscribe_to(bus)

    emit_all(bus, lifecycle("a"))
    emit_all(bus, lifecycle("b"))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("sagaq_sagas_started_total", saga="order") == 2
    assert value("sagaq_sagas_finished_total", saga="order", status="COMPENSATED") == 2
    assert value("sagaq_sagas_finished_total", saga="order", status="COMPLETED") is None
    assert value("sagaq_step_retries_total", saga="order", step="charge") == 2
    assert value("sagaq_steps_total", saga="order", step="ship", outcome="failed") == 2
    assert value("sagaq_steps_total", saga="order", step="charge", outcome="completed") == 2
    assert (
        value("sagaq_compensations_total", saga="order", step="reserve", outcome="completed") == 2
    )
    assert value("sagaq_step_duration_seconds_count", saga="order", step="charge") == 2
    assert value("sagaq_step_duration_seconds_sum", saga="order", step="charge") == 0.6
    assert value("sagaq_step_duration_seconds_bucket", saga="order", step="charge", le="0.25") == 0


def test_install_metrics_twice_counts_each_event_once(tmp_path: Path) -> None:
    engine = SagaQ(embedded_app("metrics-twice"), store=f"sqlite:///{tmp_path / 'm.db'}")
    registry = CollectorRegistry()

    first = install_metrics(engine, registry)
    second = install_metrics(engine, registry)
    engine.events.emit(SagaEvent(EventType.SAGA_STARTED, "x", "order"))

    assert first is second
    assert registry.get_sample_value("sagaq_sagas_started_total", {"saga": "order"}) == 1
    engine.store.dispose()


@embedded
def test_metrics_follow_a_real_saga_that_is_compensated(h: Harness) -> None:
    registry = CollectorRegistry()
    install_metrics(h.engine, registry)

    result = h.run("line", {"fail_at": "s3"})

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"saga": "line", **labels})

    assert result.status == SagaStatus.COMPENSATED
    wait_for(lambda: value("sagaq_sagas_finished_total", status="COMPENSATED") == 1)
    assert value("sagaq_sagas_started_total") == 1
    assert value("sagaq_steps_total", step="s2", outcome="completed") == 1
    assert value("sagaq_steps_total", step="s3", outcome="failed") == 1
    assert value("sagaq_step_duration_seconds_count", step="s1") == 1
    for step in ("s1", "s2"):
        assert value("sagaq_compensations_total", step=step, outcome="completed") == 1


def test_worker_metrics_hook_does_nothing_without_a_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAGAQ_METRICS_PORT", raising=False)
    engine = SagaQ(embedded_app("no-metrics"), store=f"sqlite:///{tmp_path / 'm.db'}")

    assert install_worker_metrics(engine) is False
    engine.store.dispose()


WORKER_MODULE = """
import os
from celery import Celery
from sagaq import NonRetryableError, Saga, SagaQ

app = Celery("metered", set_as_current=False)
app.config_from_object("celeryconfig")
app.conf.update(broker_url=os.environ["TEST_REDIS"], result_backend=os.environ["TEST_REDIS"],
                worker_send_task_events=False)
metered = Saga("metered", queue=os.environ["TEST_QUEUE"])

@metered.step
def first(ctx):
    return {"ok": True}

@first.compensate
def undo_first(ctx, result):
    pass

@metered.step(depends_on=[first])
def second(ctx):
    if ctx.input.get("fail"):
        raise NonRetryableError("asked to fail")
    return {"ok": True}

# No install_worker_metrics(): building a SagaQ is enough when SAGAQ_METRICS_PORT is set.
engine = SagaQ(app, store=os.environ["TEST_STORE"])
engine.register(metered)
"""


@pytest.fixture
def metered_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[SagaQ, str]]:
    """A real `celery worker` (prefork, 2 children) serving metrics on SAGAQ_METRICS_PORT,
    with this process as its client (same module, so the same saga definition)."""
    require(REDIS_URL, PG_URL)
    (tmp_path / "metered_worker.py").write_text(WORKER_MODULE)
    (tmp_path / "prometheus").mkdir()
    port = free_port()
    queue = f"sagaq-test-metrics-{uuid.uuid4().hex[:8]}"
    with pg_schema_url() as store_url:
        settings = {"TEST_REDIS": REDIS_URL, "TEST_QUEUE": queue, "TEST_STORE": store_url}
        for key, value in settings.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("SAGAQ_METRICS_PORT", raising=False)  # this process serves none
        engine: SagaQ = load_module(tmp_path / "metered_worker.py").engine  # type: ignore[attr-defined]
        env = {
            **os.environ,
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
            "SAGAQ_METRICS_PORT": str(port),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        }
        command = ["celery", "-A", "metered_worker", "worker", "-P", "prefork", "-c", "2"]
        command += ["-Q", queue, "--without-mingle", "--without-gossip", "-l", "WARNING"]
        with (tmp_path / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", *command], cwd=tmp_path, env=env, stdout=log, stderr=log
            )
        try:
            wait_for(lambda: answers(port) or worker.poll() is not None, timeout=30)
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            yield engine, f"http://127.0.0.1:{port}/metrics"
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            engine.store.dispose()


def test_prefork_worker_serves_its_children_metrics_on_the_metrics_port(
    metered_worker: tuple[SagaQ, str],
) -> None:
    engine, metrics_url = metered_worker

    results = [engine.start("metered", {}).wait(30) for _ in range(3)]
    results.append(engine.start("metered", {"fail": True}).wait(30))

    assert [r.status for r in results] == [SagaStatus.COMPLETED] * 3 + [SagaStatus.COMPENSATED]
    samples = {}

    def scraped() -> bool:
        samples.update(scrape(metrics_url))
        return samples.get(("sagaq_compensations_total", "first", "completed")) == 1

    wait_for(scraped)
    assert samples[("sagaq_steps_total", "first", "completed")] == 4
    assert samples[("sagaq_steps_total", "second", "completed")] == 3
    assert samples[("sagaq_steps_total", "second", "failed")] == 1


def scrape(url: str) -> dict[tuple[str, str, str], float]:
    """(sample name, step, outcome) -> value, added up over the worker's processes."""
    found: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for s in family.samples:
            key = (s.name, s.labels.get("step", ""), s.labels.get("outcome", ""))
            found[key] = found.get(key, 0.0) + s.value
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def load_module(path: Path) -> object:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- tracing ------------------------------------------------------------------------------


def test_tracing_is_a_no_op_without_opentelemetry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import fails, as if not installed
    engine = SagaQ(embedded_app("no-tracing"), store=f"sqlite:///{tmp_path / 't.db'}")

    assert install_tracing(engine) is False
    emit_all(engine.events, lifecycle())  # nothing listens, nothing breaks
    engine.store.dispose()


def test_step_spans_are_children_of_the_current_task_span(tmp_path: Path) -> None:
    exporter, provider = in_memory_tracing()
    engine = SagaQ(embedded_app("tracing"), store=f"sqlite:///{tmp_path / 't.db'}")
    assert install_tracing(engine, provider)
    tracer = provider.get_tracer("celery")
    e = EventType

    from opentelemetry import trace

    with tracer.start_as_current_span("run/order.charge") as task_span:  # as Celery's would be
        engine.events.emit(SagaEvent(e.STEP_STARTED, "id-1", "order", "charge", attempt=2))
        inside = trace.get_current_span()
        engine.events.emit(
            SagaEvent(e.STEP_RETRYING, "id-1", "order", "charge", attempt=2, error="timeout")
        )
        after = trace.get_current_span()

    step = next(s for s in exporter.get_finished_spans() if s.name == "step order.charge")
    assert step.parent is not None and step.parent.span_id == task_span.get_span_context().span_id
    assert inside.get_span_context().span_id == step.context.span_id  # current while it runs
    assert after is task_span
    assert step.attributes is not None and step.attributes["sagaq.attempt"] == 2
    assert step.status.status_code.name == "ERROR" and step.status.description == "timeout"
    engine.store.dispose()


@embedded
def test_a_real_compensated_saga_leaves_one_span_per_step_and_compensation(h: Harness) -> None:
    exporter, provider = in_memory_tracing()
    install_tracing(h.engine, provider)

    result = h.run("line", {"fail_at": "s2"})

    assert result.status == SagaStatus.COMPENSATED
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans if s.attributes and s.attributes["sagaq.saga_id"] == result.id]
    assert names == ["step line.s1", "step line.s2", "compensate line.s1"]


def in_memory_tracing() -> tuple[InMemorySpanExporter, TracerProvider]:
    pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, provider
