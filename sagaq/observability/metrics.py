"""Prometheus metrics fed by the EventBus.

Events are emitted where the work happens: SAGA_STARTED in the process that calls `start()`
(the API, a web app), everything else in the workers. So the API's `/metrics` counts starts,
and each worker serves its steps, compensations and outcomes on SAGAQ_METRICS_PORT
(`install_worker_metrics`). With prefork pools, set PROMETHEUS_MULTIPROC_DIR to an empty
directory in the worker's environment so the pool's child processes are added up.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server

from sagaq.observability.events import EventBus, EventType, SagaEvent
from sagaq.settings import Settings

if TYPE_CHECKING:
    from sagaq.client import SagaQ

log = logging.getLogger("sagaq.metrics")

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SAGA_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

_FINISHED = {
    EventType.SAGA_COMPLETED: "COMPLETED",
    EventType.SAGA_COMPENSATED: "COMPENSATED",
    EventType.SAGA_FAILED: "FAILED",
}
_STEP_OUTCOMES = {EventType.STEP_COMPLETED: "completed", EventType.STEP_FAILED: "failed"}
_COMPENSATION_OUTCOMES = {
    EventType.COMPENSATION_COMPLETED: "completed",
    EventType.COMPENSATION_FAILED: "failed",
}


# When a finished saga's event does not carry its duration: (created_at, cause) from the store.
SagaFacts = Callable[[str], tuple[float, str | None] | None]


class SagaMetrics:
    """The sagaq metrics on one registry; call it with events (it is an EventBus publisher)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.started = Counter("sagaq_sagas_started", "Sagas started", ["saga"], registry=registry)
        self.finished = Counter(
            "sagaq_sagas_finished",
            "Sagas that reached COMPLETED, COMPENSATED or FAILED",
            ["saga", "status"],
            registry=registry,
        )
        self.steps = Counter(
            "sagaq_steps",
            "Steps that finished, by outcome (completed, failed for good)",
            ["saga", "step", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "sagaq_step_retries",
            "Step attempts that failed and were retried",
            ["saga", "step"],
            registry=registry,
        )
        self.step_duration = Histogram(
            "sagaq_step_duration_seconds",
            "Time a completed step's function ran (its last attempt)",
            ["saga", "step"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.compensations = Counter(
            "sagaq_compensations",
            "Compensations that finished, by outcome (completed, failed for good)",
            ["saga", "step", "outcome"],
            registry=registry,
        )
        self.compensation_retries = Counter(
            "sagaq_compensation_retries",
            "Compensation attempts that failed and were retried",
            ["saga", "step"],
            registry=registry,
        )
        self.saga_duration = Histogram(
            "sagaq_saga_duration_seconds",
            "Start to end of finished sagas; outcome: COMPLETED, COMPENSATED, CANCELLED, FAILED",
            ["saga", "outcome"],
            buckets=SAGA_BUCKETS,
            registry=registry,
        )
        self._buses: weakref.WeakSet[EventBus] = weakref.WeakSet()

    def subscribe_to(self, bus: EventBus, facts: SagaFacts | None = None) -> None:
        """Count the events of `bus` (once, however often this is called); `facts` tells
        when a saga started and why it compensated (its engine's store)."""
        if bus not in self._buses:
            self._buses.add(bus)
            bus.subscribe(partial(self.__call__, facts=facts))

    def __call__(self, event: SagaEvent, facts: SagaFacts | None = None) -> None:
        kind, saga, step = event.type, event.saga, event.step or ""
        if kind is EventType.SAGA_STARTED:
            self.started.labels(saga).inc()
        elif kind in _FINISHED:
            self.finished.labels(saga, _FINISHED[kind]).inc()
            self._observe_saga(event, _FINISHED[kind], facts)
        elif kind in _STEP_OUTCOMES:
            self.steps.labels(saga, step, _STEP_OUTCOMES[kind]).inc()
            if kind is EventType.STEP_COMPLETED and event.duration_ms is not None:
                self.step_duration.labels(saga, step).observe(event.duration_ms / 1000)
        elif kind is EventType.STEP_RETRYING:
            self.retries.labels(saga, step).inc()
        elif kind in _COMPENSATION_OUTCOMES:
            self.compensations.labels(saga, step, _COMPENSATION_OUTCOMES[kind]).inc()
        elif kind is EventType.COMPENSATION_RETRYING:
            self.compensation_retries.labels(saga, step).inc()

    def _observe_saga(self, event: SagaEvent, outcome: str, facts: SagaFacts | None) -> None:
        """A compensated saga that was cancelled counts as CANCELLED, not COMPENSATED."""
        known = facts(event.saga_id) if facts is not None else None
        cause = known[1] if known is not None else None
        if outcome == "COMPENSATED" and cause == "cancel":
            outcome = "CANCELLED"
        seconds = None
        if event.duration_ms is not None:
            seconds = event.duration_ms / 1000
        elif known is not None:
            seconds = max(event.at - known[0], 0.0)
        if seconds is not None:
            self.saga_duration.labels(event.saga, outcome).observe(seconds)


# Metric names are unique per registry: one SagaMetrics per registry, shared by all engines.
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, SagaMetrics] = (
    weakref.WeakKeyDictionary()
)


def install_metrics(
    engine: SagaQ, registry: CollectorRegistry = REGISTRY, *, store_gauges: bool = False
) -> SagaMetrics:
    """Count `engine`'s events on `registry` (the process-wide default unless given). With
    `store_gauges` (the API), also serve the gauges read from the store (store_gauges.py)."""
    metrics = _by_registry.get(registry)
    if metrics is None:
        metrics = _by_registry[registry] = SagaMetrics(registry)
    metrics.subscribe_to(engine.events, partial(_saga_facts, weakref.ref(engine)))
    if store_gauges:
        from sagaq.observability.store_gauges import install_store_gauges

        install_store_gauges(engine, registry)
    return metrics


def _saga_facts(engine: weakref.ref[SagaQ], saga_id: str) -> tuple[float, str | None] | None:
    """One primary-key read per finished saga (the finish events carry no start time)."""
    alive = engine()
    found = alive.history.summary(saga_id) if alive is not None else None
    return None if found is None else (found.created_at, found.cause)


_serving_ports: set[int] = set()


def install_worker_metrics(engine: SagaQ, port: int | None = None) -> bool:
    """In a worker module: serve the worker's metrics on `port` (default SAGAQ_METRICS_PORT)
    once the worker starts. Does nothing when no port is set; returns whether it will serve."""
    port = port if port is not None else Settings().metrics_port
    if port is None:
        return False
    if port in _serving_ports:
        return True  # every SagaQ of a worker installs this: one server per port
    _serving_ports.add(port)
    from celery.signals import worker_init, worker_process_init, worker_process_shutdown

    install_metrics(engine)
    worker_init.connect(partial(_serve_worker_metrics, port), weak=False)
    worker_process_init.connect(_check_child_metrics, weak=False)
    worker_process_shutdown.connect(_forget_child, weak=False)
    return True


def _multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def _serve_worker_metrics(port: int, **_: Any) -> None:
    """worker_init, in the worker's main process: with prefork, the pool's children record
    into PROMETHEUS_MULTIPROC_DIR and this process adds them up."""
    registry: CollectorRegistry = REGISTRY
    if _multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, registry=registry)
    log.info("serving worker metrics on :%d", port)


def _check_child_metrics(**_: Any) -> None:
    if not _multiprocess_dir():
        log.warning(
            "prefork pool without PROMETHEUS_MULTIPROC_DIR: the metrics of the pool's child "
            "processes are not served; set it to an empty directory in the worker's environment"
        )


def _forget_child(pid: int | None = None, **_: Any) -> None:
    if _multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]
