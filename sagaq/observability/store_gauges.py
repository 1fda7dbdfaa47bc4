"""Gauges read from the saga store when Prometheus scrapes: how many sagas are in each status
(and why compensation began), and how old the oldest unfinished one is. Served by the API's
/metrics only (one process reads the store, not every worker). Results are cached for a few
seconds, so several scrapers cost one pair of queries; both stay flat in the table's size
(counts stop at COUNT_CAP per status, unfinished sagas are few)."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sagaq.status import SagaStatus
from sagaq.store.history import UNFINISHED

if TYPE_CHECKING:
    from sagaq.client import SagaQ

log = logging.getLogger("sagaq.metrics")
CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class _Reading:
    at: float
    counts: dict[tuple[str, SagaStatus, str | None], int]
    oldest: dict[tuple[str, SagaStatus], float]  # since when, per saga name and status
    oldest_created: dict[str, float]  # the oldest unfinished saga's creation, per saga name


class StoreGauges(Collector):
    """sagaq_sagas{saga,status}, sagaq_sagas_by_cause{saga,status,cause},
    sagaq_oldest_unfinished_saga_age_seconds{saga}, sagaq_longest_in_status_seconds{saga,status}
    and sagaq_saga_deadline_seconds{saga} (from the definitions, for the deadline alert)."""

    def __init__(self, engine: SagaQ, cache_seconds: float = CACHE_SECONDS) -> None:
        self.engine = engine
        self.cache_seconds = cache_seconds
        self._reading: _Reading | None = None
        self._lock = threading.Lock()

    def read(self) -> _Reading:
        with self._lock:
            now = time.time()
            if self._reading is None or now - self._reading.at >= self.cache_seconds:
                history = self.engine.history
                self._reading = _Reading(
                    now,
                    history.count_by_name_status_cause(),
                    history.oldest_unfinished(),
                    history.oldest_created(),
                )
            return self._reading

    def collect(self) -> Iterator[Metric]:
        try:
            reading = self.read()
        except Exception as exc:  # a scrape must not fail because the store is down
            log.warning("saga gauges unavailable: the store does not answer: %s", exc)
            return
        names = sorted(set(self.engine.sagas) | {name for name, _, _ in reading.counts})
        sagas = GaugeMetricFamily(
            "sagaq_sagas",
            "Sagas in each status (counting stops at 10000 per status)",
            labels=["saga", "status"],
        )
        totals = {(name, status): 0 for name in names for status in SagaStatus}
        by_cause = GaugeMetricFamily(
            "sagaq_sagas_by_cause",
            "Sagas that began compensating, by why: failure, cancel or deadline",
            labels=["saga", "status", "cause"],
        )
        for (name, status, cause), n in sorted(reading.counts.items(), key=str):
            totals[name, status] += n
            if cause is not None:
                by_cause.add_metric([name, status, cause], n)
        for (name, status), n in totals.items():
            sagas.add_metric([name, status], n)
        yield sagas
        yield by_cause

        oldest = GaugeMetricFamily(
            "sagaq_oldest_unfinished_saga_age_seconds",
            "Age of the oldest saga not yet finished (0: none)",
            labels=["saga"],
        )
        per_status = GaugeMetricFamily(
            "sagaq_longest_in_status_seconds",
            "How long the longest-waiting saga has been in each unfinished status (0: none)",
            labels=["saga", "status"],
        )
        created = reading.oldest_created
        for name in names:
            ages = {
                status: max(reading.at - since, 0.0)
                for (saga, status), since in reading.oldest.items()
                if saga == name
            }
            oldest.add_metric(
                [name], max(reading.at - created[name], 0.0) if name in created else 0.0
            )
            for status in UNFINISHED:
                per_status.add_metric([name, status], ages.get(status, 0.0))
        yield oldest
        yield per_status

        deadlines = GaugeMetricFamily(
            "sagaq_saga_deadline_seconds",
            "The deadline a saga definition sets (absent: none)",
            labels=["saga"],
        )
        for name, saga in sorted(self.engine.sagas.items()):
            if saga.deadline is not None:
                deadlines.add_metric([name], saga.deadline)
        yield deadlines


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, StoreGauges] = (
    weakref.WeakKeyDictionary()
)


def install_store_gauges(engine: SagaQ, registry: CollectorRegistry = REGISTRY) -> StoreGauges:
    """Serve the store gauges of `engine` on `registry` (once per registry: a later engine
    takes over, as in tests that build one app after another)."""
    gauges = _by_registry.get(registry)
    if gauges is None:
        gauges = _by_registry[registry] = StoreGauges(engine)
        registry.register(gauges)
    else:
        gauges.engine = engine
        gauges._reading = None
    return gauges
