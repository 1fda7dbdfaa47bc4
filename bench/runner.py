"""Runs the workloads on each backend, sagaq and raw Celery side by side in the same run."""

from __future__ import annotations

import gc
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError
from rich.console import Console
from sqlalchemy import create_engine, text

from bench.apps import Bench, LocalDone, RedisDone, Shape, build, make_app, tasks_per_saga
from bench.config import (
    BENCH_DB,
    FAIL_AT,
    LENGTHS,
    QUEUE,
    REDIS_URL,
    WORKER_COUNTS,
    Backend,
    Counts,
)
from bench.cpu import CpuMeter, PidSource, pids_named, wait_until_quiet
from bench.history_queries import QUERIES, history_times
from bench.measure import (
    SYSTEMS,
    Throughput,
    caller_latency,
    latency,
    percentile,
    status_times,
    throughput,
    warmup,
)
from bench.results_model import Results, Row, Section
from bench.watch import DisruptedError, ServiceWatch
from bench.workers import WorkerProcess, bench_db_url, fill, fresh_schema, purge
from sagaq.errors import BrokerUnavailableError
from sagaq.store import SagaStore

W1 = Shape(5)
W2 = Shape(5, fail_at=FAIL_AT)
W3 = Shape(fan=True)
WARMUP_SHAPES = (W1, W2, W3)
EMBEDDED_THREADS = 4  # sagaq.embedded.in_process_worker's default
T = TypeVar("T")


@dataclass
class Options:
    counts: Counts
    repeats: int
    only: set[str]
    events: bool
    log_dir: Path
    quiet_wait: float  # seconds to wait for other jobs to calm down before each measurement


class Runner:
    def __init__(
        self, options: Options, results: Results, console: Console, watch: ServiceWatch
    ) -> None:
        self.o = options
        self.watch = watch
        self.results = results
        self.console = console
        self.proc: WorkerProcess | None = None
        self._start_worker: Callable[[], WorkerProcess] | None = None
        self.backend: Backend | None = None
        self.background: list[float] = []  # cores busy with other jobs, per measurement
        self._pg = create_engine(
            bench_db_url("public").replace("postgresql://", "postgresql+psycopg://", 1),
            pool_size=1,
        )

    # -- helpers ---------------------------------------------------------------------------

    def log(self, message: str) -> None:
        self.console.log(message)

    def attempt(self, what: str, fn: Callable[[], T], bench: Bench | None = None) -> T | None:
        """Run one measurement. If a shared service restarts meanwhile (other jobs on this
        machine do that on purpose) it is void and run again, up to 3 times; a timeout is
        recorded (NaN in the table), not fatal."""
        for tries in range(1, 4):
            generation = self.watch.generation
            if bench is not None:
                bench.sink.guard = lambda g=generation: self.watch.guard(g)
            try:
                result = fn()
                if not (self.backend is not None and self.backend.in_process):
                    self.watch.guard(generation)
                return result
            except Exception as exc:
                in_process = self.backend is not None and self.backend.in_process
                restarted = self.watch.generation != generation and not in_process
                disrupted = (
                    restarted
                    or self.worker_died()
                    or isinstance(
                        exc, DisruptedError | BrokerError | BrokerUnavailableError | RedisError
                    )
                )
                if not disrupted:  # a real failure (or a timeout): recorded, not retried
                    message = f"{what}: {type(exc).__name__}: {exc}"
                    self.results.errors.append(message)
                    self.log(f"[red]{message}")
                    self.recover(bench)
                    return None
                self.log(f"[yellow]{what}: {type(exc).__name__}: {exc} — try {tries}/3 void")
                self.recover(bench)
            finally:
                if bench is not None:
                    bench.sink.guard = lambda: None
        self.results.errors.append(f"{what}: services kept restarting, no result")
        return None

    def recover(self, bench: Bench | None, settle: float = 3.0) -> None:
        """After a restart or a timeout: services up, worker reconnected, nothing left over."""
        if not self.watch.wait_up():
            raise RuntimeError(f"services did not come back: {self.watch.describe()}")
        if bench is None or self.backend is None or self.backend.in_process:
            return
        if self.worker_died() and self._start_worker is not None:
            # Celery 5.7 / kombu 5.7 workers can die on a Redis restart ("Unrecoverable error:
            # AttributeError: 'NoneType' object has no attribute 'hostname'").
            assert self.proc is not None
            self.log(f"[yellow]the worker exited ({self.proc.proc.returncode}); starting another")
            self.proc.stop()
            self.proc = self._start_worker()
            try:
                warmup(bench, 4 * self.proc.concurrency, WARMUP_SHAPES)
            except Exception as exc:  # the next measurement will tell
                self.log(f"[yellow]warm-up after restart: {type(exc).__name__}: {exc}")
        time.sleep(settle)  # the worker reconnects on its own
        for _ in range(30):
            try:
                purged = purge(bench.app)
                bench.sink.reset()
                if purged:
                    self.log(f"purged {purged} stale messages from {QUEUE}")
                return
            except (BrokerError, RedisError, OSError):
                time.sleep(1.0)
                self.watch.wait_up()

    def worker_label(self, backend: Backend, concurrency: int = 2) -> str:
        events = "events on (-E)" if self.o.events else "events off"
        if backend.in_process:
            return f"in-process worker, threads pool c={EMBEDDED_THREADS}, {events}"
        return f"celery worker subprocess, prefork c={concurrency}, {events}"

    def quiet(self) -> None:
        if self.o.quiet_wait > 0:
            waited, cores = wait_until_quiet(self.o.quiet_wait)
            if cores >= 0.25:
                self.log(f"[yellow]machine still busy ({cores:.2f} cores) after {waited:.0f}s")

    def _pg_backends(self) -> list[int]:
        if self.backend is None or self.backend.in_process:
            return []
        with self._pg.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": BENCH_DB},
            )
            return [int(r[0]) for r in rows]

    def meter(self) -> CpuMeter:
        me = os.getpid()
        groups: dict[str, PidSource] = {}
        if self.backend is not None and self.backend.in_process:
            groups["process"] = lambda: [me]  # client and worker threads share the process
            return CpuMeter(groups)
        proc = self.proc
        groups["worker"] = lambda: [proc.pid, *proc.children()] if proc else []
        groups["postgres"] = self._pg_backends
        rabbit = self.backend is not None and self.backend.name == "rabbitmq"
        broker = ("redis-server", "beam.smp") if rabbit else ("redis-server",)
        groups["broker"] = lambda: pids_named(*broker)
        groups["client"] = lambda: [me]
        return CpuMeter(groups)

    def measured_throughput(
        self, bench: Bench, system: str, shape: Shape, n: int, what: str
    ) -> tuple[Throughput | None, dict[str, float]]:
        cpu: dict[str, float] = {}

        def run() -> Throughput:
            self.quiet()
            meter = self.meter()
            meter.start()
            got = throughput(bench, system, shape, n, self.o.counts.timeout)
            cpu.clear()
            cpu.update(meter.stop())
            return got

        got = self.attempt(what, run, bench)
        if got is not None:
            self.background.append(cpu["other"] / max(cpu["wall"], 1e-9))
        return got, cpu

    @contextmanager
    def running(
        self,
        backend: Backend,
        store_url: str,
        concurrency: int = 2,
        warm: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> Iterator[Bench]:
        """A client-side Bench plus a running worker for `backend`, warmed up."""
        self.backend = backend
        self.watch.use(backend.services)
        if backend.in_process:
            from sagaq.embedded import in_process_worker

            bench = build(
                backend.broker_url,
                backend.result_backend,
                store_url,
                events=self.o.events,
                embedded=True,
                sink=LocalDone(),
            )
            # Failed tasks (W2) log their traceback; to a file, as the worker subprocesses do.
            trace_log = logging.getLogger("celery.app.trace")
            handler = logging.FileHandler(self.o.log_dir / "embedded-worker.log")
            trace_log.addHandler(handler)
            trace_log.propagate = False
            try:
                with in_process_worker(bench.app, [QUEUE], concurrency=EMBEDDED_THREADS):
                    if warm:
                        warmup(bench, self.o.counts.warmup, WARMUP_SHAPES)
                    yield bench
            finally:
                trace_log.removeHandler(handler)
                trace_log.propagate = True
                handler.close()
                self._close(bench)
            return
        self.watch.wait_up()
        bench = build(
            backend.broker_url,
            backend.result_backend,
            store_url,
            events=self.o.events,
            embedded=False,
            sink=RedisDone(REDIS_URL),
        )
        self.backend = backend
        self.recover(bench, settle=0.0)  # purge what an interrupted run left behind

        def start() -> WorkerProcess:
            log_path = (
                self.o.log_dir / f"worker-{backend.name}-c{concurrency}-{time.time():.0f}.log"
            )
            proc = WorkerProcess(
                backend,
                store_url,
                concurrency=concurrency,
                events=self.o.events,
                log_path=log_path,
                extra_env=extra_env,
            )
            try:
                proc.wait_ready(bench.app)
            except BaseException:
                proc.stop()
                raise
            self.log(f"worker pid {proc.pid} (pool {proc.children()}), log {log_path}")
            return proc

        self._start_worker = start
        try:
            self.proc = start()
            if warm:
                n = max(self.o.counts.warmup, 4 * concurrency)
                self.attempt("warm-up", lambda: warmup(bench, n, WARMUP_SHAPES), bench)
            yield bench
        finally:
            if self.proc is not None:
                self.proc.stop()
            self.proc = None
            self._start_worker = None
            self._close(bench)

    def worker_died(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is not None

    @staticmethod
    def _close(bench: Bench) -> None:
        gc.collect()  # drop AsyncResults while their result consumer can still unsubscribe
        bench.engine.store.dispose()
        bench.app.close()

    def store_url(self, backend: Backend, schema: str) -> str:
        if backend.in_process:
            return f"sqlite:///{tempfile.mkdtemp(prefix='sagaq-bench-')}/bench.db"
        return fresh_schema(schema)

    @staticmethod
    def truncate(bench: Bench) -> None:
        store = bench.engine.store
        with store.engine.begin() as conn:
            if store.is_sqlite:
                conn.exec_driver_sql("DELETE FROM saga_step")
                conn.exec_driver_sql("DELETE FROM saga")
            else:
                conn.exec_driver_sql("TRUNCATE saga, saga_step, saga_event")

    @staticmethod
    def put(row: Row, system: str, value: float) -> None:
        (row.a if system == "sagaq" else row.b).append(value)

    @staticmethod
    def order(rep: int) -> Sequence[str]:
        """sagaq first on even repeats, raw first on odd ones."""
        return SYSTEMS if rep % 2 == 0 else tuple(reversed(SYSTEMS))

    # -- per backend: W1, W2, W3 (and the length sweep on the primary backend) --------------

    def run_backend(self, backend: Backend, with_length: bool) -> None:
        c = self.o.counts
        only = self.o.only
        section = Section(key=backend.name, title=f"{backend.label} — {self.worker_label(backend)}")
        counts = tasks_per_saga(
            make_app("memory://", "cache+memory://", events=False, embedded=True)
        )
        section.notes.append(
            "Celery tasks per saga, sagaq/raw: "
            + ", ".join(f"{w} {a}/{b}" for w, (a, b) in counts.items())
            + ". CPU per saga = CPU seconds each party used during the throughput run / sagas."
        )
        self.results.sections.append(section)
        self.background = []
        length_section: Section | None = None
        if with_length:
            length_section = Section(
                key="length",
                title=f"End-to-end latency vs saga length — {backend.label}, "
                f"{self.worker_label(backend)}",
            )
            self.results.sections.append(length_section)
        store_url = self.store_url(backend, f"main_{backend.name}")
        self.log(f"[bold]{backend.label}[/bold]: starting worker")
        with self.running(backend, store_url) as bench:
            for rep in range(self.o.repeats):
                order = self.order(rep)
                self.log(f"{backend.name}: repeat {rep + 1}/{self.o.repeats}")
                if "W1" in only:
                    self.throughput_rows(section, bench, order, "W1", W1, c.throughput, True)
                    if bench.has_floor:
                        self.floor_rows(section, bench, "W1", W1, c.throughput)
                    self.latency_rows(section, bench, order, "W1", W1, c.latency, p99=True)
                    self.caller_row(section, bench, order)
                if "W2" in only:
                    self.throughput_rows(section, bench, order, "W2", W2, c.throughput, False)
                    if bench.has_floor:
                        self.floor_rows(section, bench, "W2", W2, c.throughput)
                    self.latency_rows(section, bench, order, "W2", W2, c.latency, p99=True)
                if "W3" in only:
                    self.throughput_rows(section, bench, order, "W3", W3, c.throughput, False)
                    self.latency_rows(section, bench, order, "W3", W3, c.latency, p99=False)
                if length_section is not None:
                    for length in LENGTHS:
                        plural = "s" if length > 1 else ""
                        self.latency_rows(
                            length_section,
                            bench,
                            order,
                            f"L{length}",
                            Shape(length),
                            c.length,
                            p99=True,
                            label=f"{length} step{plural}",
                        )
        section.notes.append(self.background_note())

    def background_note(self) -> str:
        if not self.background:
            return ""
        return (
            f"Other jobs on the machine used {statistics.median(self.background):.2f} cores "
            f"(median; max {max(self.background):.2f}) during these throughput runs."
        )

    def throughput_rows(
        self,
        section: Section,
        bench: Bench,
        order: Sequence[str],
        name: str,
        shape: Shape,
        n: int,
        cpu_breakdown: bool,
    ) -> None:
        row = section.row(f"{name}.throughput", f"{name} throughput ({n} at once)", "sagas/s")
        for system in order:
            if system == "sagaq":
                self.truncate(bench)
            got, cpu = self.measured_throughput(
                bench, system, shape, n, f"{section.key} {name} throughput {system}"
            )
            self.put(row, system, got.per_s if got else math.nan)
            row.details.append(
                {
                    "system": system,
                    "submit_s": got.submit_s if got else None,
                    "elapsed_s": got.elapsed_s if got else None,
                    "cpu_s": cpu,
                }
            )
            parts = [p for p in ("worker", "process", "postgres", "broker", "client") if p in cpu]
            for part in parts if cpu_breakdown else parts[:1]:
                label = {
                    "worker": "worker",
                    "process": "benchmark process (client + worker threads)",
                    "postgres": "PostgreSQL",
                    "broker": "broker + results (Redis/RabbitMQ server)",
                    "client": "client (start/apply_async)",
                }[part]
                cpu_row = section.row(f"{name}.cpu.{part}", f"{name} CPU per saga: {label}", "ms")
                self.put(cpu_row, system, cpu[part] * 1000 / n if got else math.nan)
            if cpu_breakdown and len(parts) > 1:
                total = section.row(
                    f"{name}.cpu.total", f"{name} CPU per saga: all of the above", "ms"
                )
                self.put(total, system, sum(cpu[p] for p in parts) * 1000 / n if got else math.nan)
            if got:
                self.log(
                    f"  {name} {system:5}: {got.per_s:7.1f}/s  (submit {got.submit_s:.2f}s, "
                    f"total {got.elapsed_s:.2f}s; worker CPU "
                    f"{cpu.get('worker', cpu.get('process', 0)) * 1000 / n:.2f} ms/saga; "
                    f"other jobs {cpu['other'] / max(cpu['wall'], 1e-9):.2f} cores)"
                )

    def floor_rows(self, section: Section, bench: Bench, name: str, shape: Shape, n: int) -> None:
        """The floor, in the same repeat: raw Celery's chain (and, for W2, its errback and
        compensations) whose every task also commits one PostgreSQL upsert. No durable
        executor can beat it on this machine."""
        got, _ = self.measured_throughput(bench, "floor", shape, n, f"{section.key} {name} floor")
        floor = got.per_s if got else math.nan
        sagaq = section.get(f"{name}.throughput").a[-1]
        raw = section.get(f"{name}.throughput").b[-1]
        vs_raw = section.row(
            f"{name}.floor",
            f"{name} the floor: raw Celery + 1 durable PostgreSQL upsert per task ({n} at once), "
            "vs raw",
            "sagas/s",
        )
        vs_raw.a.append(floor)
        vs_raw.b.append(raw)
        vs_floor = section.row(
            f"{name}.vs_floor", f"{name} throughput: sagaq vs the floor", "sagas/s"
        )
        vs_floor.a.append(sagaq)
        vs_floor.b.append(floor)
        if got:
            self.log(f"  {name} floor: {floor:7.1f}/s")

    def latency_rows(
        self,
        section: Section,
        bench: Bench,
        order: Sequence[str],
        name: str,
        shape: Shape,
        n: int,
        *,
        p99: bool,
        label: str | None = None,
    ) -> None:
        label = label or name
        p50_row = section.row(f"{name}.p50", f"{label} latency p50 ({n} one at a time)", "ms")
        p99_row = (
            section.row(f"{name}.p99", f"{label} latency p99 ({n} one at a time)", "ms")
            if p99
            else None
        )
        for system in order:
            self.quiet()
            got = self.attempt(
                f"{section.key} {name} latency {system}",
                lambda s=system: latency(bench, s, shape, n),
                bench,
            )
            self.put(p50_row, system, percentile(got, 50) if got else math.nan)
            if p99_row is not None:
                self.put(p99_row, system, percentile(got, 99) if got else math.nan)
            if got:
                self.log(
                    f"  {label} {system:5}: p50 {percentile(got, 50):6.1f} ms  "
                    f"p99 {percentile(got, 99):6.1f} ms"
                )

    def caller_row(self, section: Section, bench: Bench, order: Sequence[str]) -> None:
        n = self.o.counts.caller_latency
        row = section.row(
            "W1.caller_p50",
            f"W1 p50 seen by a blocked caller: engine.wait() vs AsyncResult.get() ({n})",
            "ms",
        )
        for system in order:
            self.quiet()
            got = self.attempt(
                f"{section.key} W1 caller {system}",
                lambda s=system: caller_latency(bench, s, n),
                bench,
            )
            self.put(row, system, percentile(got, 50) if got else math.nan)

    # -- scaling with worker processes ----------------------------------------------------

    def run_workers(self, backend: Backend) -> None:
        n = self.o.counts.scaling
        section = Section(
            key="workers",
            title=f"W1 throughput vs worker processes — {backend.label}, one celery worker with "
            f"prefork c=1/2/4, {'events on' if self.o.events else 'events off'}",
        )
        section.notes.append(
            f"The machine has {os.cpu_count()} cores; pool processes beyond that only help by "
            "overlapping their waits on PostgreSQL and Redis."
        )
        self.results.sections.append(section)
        self.background = []
        for concurrency in WORKER_COUNTS:
            row = section.row(
                f"workers.{concurrency}", f"W1 throughput, c={concurrency} ({n} at once)", "sagas/s"
            )
            store_url = self.store_url(backend, f"workers_{concurrency}")
            self.log(f"[bold]scaling[/bold]: worker with c={concurrency}")
            with self.running(backend, store_url, concurrency=concurrency) as bench:
                for rep in range(self.o.repeats):
                    for system in self.order(rep):
                        if system == "sagaq":
                            self.truncate(bench)
                        got, cpu = self.measured_throughput(
                            bench, system, W1, n, f"workers c={concurrency} {system}"
                        )
                        self.put(row, system, got.per_s if got else math.nan)
                        row.details.append({"system": system, "cpu_s": cpu})
                        if got:
                            self.log(f"  c={concurrency} {system:5}: {got.per_s:7.1f}/s")
        section.notes.append(self.background_note())

    # -- a big saga table ------------------------------------------------------------------

    def run_bigtable(self, backend: Backend) -> None:
        c = self.o.counts
        rows = c.big_rows
        section = Section(
            key="bigtable",
            title=f"sagaq with {rows:,} finished sagas already in the table vs an empty one — "
            f"{backend.label}, {self.worker_label(backend)}",
            a_label="empty table",
            b_label=f"{rows:,} rows",
            ratio_label="big/empty",
            ratio_inverted=True,
        )
        section.notes.append(
            f"Filler: {rows:,} saga rows"
            + (" + 5 saga_step and 2 saga_event rows each" if c.big_steps else " (no step rows)")
            + ", one INSERT ... SELECT generate_series per table, then VACUUM ANALYZE and "
            "CHECKPOINT. status() is timed on random sagas of the W1 runs (which have steps)."
        )
        self.results.sections.append(section)
        self.background = []
        thr = section.row("big.throughput", f"W1 throughput ({c.throughput} at once)", "sagas/s")
        s50 = section.row("big.status_p50", f"engine.status(id) p50 ({c.status_queries})", "ms")
        s99 = section.row("big.status_p99", f"engine.status(id) p99 ({c.status_queries})", "ms")
        history = {q: section.row(f"big.history.{q}", f"{q} (median)", "ms") for q in QUERIES}
        for label, filler in (("empty", 0), ("big", rows)):
            store_url = fresh_schema(f"big_{label}")
            if filler:
                filled = SagaStore(store_url)
                filled.create_tables()
                filled.dispose()
                self.log(f"[bold]big table[/bold]: inserting {filler:,} sagas")
                took = fill(store_url, filler, c.big_steps)
                self.log(f"  filled in {took:.1f}s")
                section.notes.append(f"Filling took {took:.1f}s.")
            self.log(f"[bold]big table[/bold]: {label}")
            column = "a" if not filler else "b"
            with self.running(backend, store_url) as bench:
                ids: list[str] = []
                for _rep in range(self.o.repeats):
                    got, cpu = self.measured_throughput(
                        bench, "sagaq", W1, c.throughput, f"bigtable {label} W1"
                    )
                    getattr(thr, column).append(got.per_s if got else math.nan)
                    thr.details.append({"table": label, "cpu_s": cpu})
                    ids.extend(got.keys if got else [])
                    if not ids:
                        continue
                    self.quiet()
                    times = status_times(bench, ids, c.status_queries)
                    getattr(s50, column).append(percentile(times, 50))
                    getattr(s99, column).append(percentile(times, 99))
                    self.log(
                        f"  {label}: W1 {got.per_s if got else math.nan:7.1f}/s, status() p50 "
                        f"{percentile(times, 50):.2f} ms p99 {percentile(times, 99):.2f} ms"
                    )
                    for query, ms in history_times(store_url).items():  # the operator's queries
                        getattr(history[query], column).append(ms)
        section.notes.append(self.background_note())

    def close(self) -> None:
        self._pg.dispose()
