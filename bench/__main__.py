"""`python -m bench`: sagaq vs raw Celery, side by side, in one run. See bench/README.md."""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rich.console import Console

from bench import snapshot
from bench.config import (
    AMQP_URL,
    BACKENDS,
    FULL,
    PG_ADMIN_URL,
    QUICK,
    REDIS_URL,
    REPO,
    RESULTS,
    Backend,
)
from bench.report import plot, print_tables, write_json
from bench.results_model import Results
from bench.runner import Options, Runner
from bench.snapshot import reexec_on_snapshot
from bench.watch import ServiceWatch
from bench.workers import create_bench_db, drop_bench_db

WORKLOADS = ("W1", "W2", "W3", "workers", "length", "bigtable")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small counts, one run (~2-3 minutes)")
    p.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all)",
    )
    p.add_argument(
        "--backend",
        default="redis,rabbitmq,embedded",
        help="comma-separated subset of redis,rabbitmq,embedded (default: all three); the first "
        "non-embedded one also runs workers/length/bigtable",
    )
    p.add_argument("--repeat", type=int, default=None, help="runs per figure, medians reported")
    p.add_argument("--events", action="store_true", help="workers send Celery events (-E)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each measurement, wait up to this many seconds for other jobs on the "
        "machine to go quiet (default 10, --quick 5; 0 disables)",
    )
    p.add_argument(
        "--commit",
        default="HEAD",
        help="git revision of sagaq to measure, extracted so that edits made meanwhile do not "
        "leak into the run (default HEAD); 'worktree' measures the working tree as it is",
    )
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    return p.parse_args(argv)


def _split(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    lookup = {a.lower(): a for a in allowed}
    chosen = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        if item.lower() not in lookup:
            raise SystemExit(f"unknown {what} {item!r}; choose from {', '.join(allowed)}")
        chosen.append(lookup[item.lower()])
    return chosen


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    port = parsed.port or {"redis": 6379, "amqp": 5672, "postgresql": 5432}[parsed.scheme]
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def _service_urls(backends: list[Backend]) -> list[str]:
    needed = set()
    for b in backends:
        if not b.in_process:
            needed |= {PG_ADMIN_URL, REDIS_URL}
        if b.name == "rabbitmq":
            needed.add(AMQP_URL)
    return sorted(needed)


def _preflight(backends: list[Backend], wait: float = 60.0) -> None:
    """Every service answers (other jobs restart Redis/RabbitMQ now and then: wait a little)."""
    deadline = time.monotonic() + wait
    while True:
        down = [u.split("@")[-1] for u in _service_urls(backends) if not _reachable(u)]
        if not down or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if down:
        raise SystemExit(f"services not answering: {', '.join(down)}")


def _meta(args: argparse.Namespace, repeats: int, counts: Any, primary: Backend) -> dict[str, Any]:
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sagaq": snapshot.current(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {
            pkg: version(pkg) for pkg in ("celery", "kombu", "sqlalchemy", "psycopg", "redis")
        },
        "quick": args.quick,
        "repeats": repeats,
        "events": args.events,
        "counts": counts.__dict__,
        "primary_backend": primary.name,
        "primary_label": primary.label,
        "load_before": [round(v, 2) for v in os.getloadavg()],
        "quiet_wait_s": None,
        "completion_signal": "the task that finishes a saga/chain RPUSHes [id, time.time()] onto "
        "a Redis list (embedded: an in-process list); the client BLPOPs it",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    reexec_on_snapshot(args.commit, "bench", sys.argv[1:] if argv is None else argv)
    counts = QUICK if args.quick else FULL
    repeats = args.repeat or counts.repeats
    only = set(_split(args.only, WORKLOADS, "workload"))
    backends = [BACKENDS[n] for n in _split(args.backend, tuple(BACKENDS), "backend")]
    if not backends:
        raise SystemExit("no backend selected")
    primary = next((b for b in backends if not b.in_process), backends[0])
    _preflight(backends)

    # Wide enough for the tables when stdout is a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 150)
    progress = Console(stderr=True, width=None if sys.stderr.isatty() else 150)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = Path(tempfile.mkdtemp(prefix=f"sagaq-bench-{stamp}-"))
    results = Results(meta=_meta(args, repeats, counts, primary))
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (5.0 if args.quick else 10.0)
    options = Options(counts, repeats, only, args.events, log_dir, quiet_wait)
    results.meta["quiet_wait_s"] = quiet_wait
    watch = ServiceWatch(_service_urls(backends)).start()
    runner = Runner(options, results, progress, watch)
    started = time.monotonic()
    needs_pg = any(not b.in_process for b in backends)
    if needs_pg:
        create_bench_db()
    phases: list[tuple[str, Callable[[], None]]] = []
    for backend in backends:
        with_length = "length" in only and backend is primary
        if only & {"W1", "W2", "W3"} or with_length:
            phases.append((backend.name, partial(runner.run_backend, backend, with_length)))
    if "workers" in only:
        phases.append(("workers", partial(runner.run_workers, primary)))
    if "bigtable" in only:
        if primary.in_process:
            results.errors.append("bigtable needs PostgreSQL (redis or rabbitmq backend)")
        else:
            phases.append(("bigtable", partial(runner.run_bigtable, primary)))
    try:
        for name, run_phase in phases:
            try:
                run_phase()
            except Exception as exc:  # one broken phase does not lose the others' results
                results.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                progress.log(f"[red]{name} failed: {type(exc).__name__}: {exc}")
                progress.print_exception(max_frames=8)
    except KeyboardInterrupt:
        results.errors.append("interrupted")
        progress.log("[red]interrupted: reporting what was measured")
    finally:
        watch.stop()
        runner.close()
        if needs_pg:
            drop_bench_db()
    results.meta["duration_s"] = round(time.monotonic() - started, 1)
    results.meta["load_after"] = [round(v, 2) for v in os.getloadavg()]
    results.meta["worker_logs"] = str(log_dir)
    print_tables(results, console)
    if not args.no_save:
        paths = write_json(results, RESULTS, stamp) + plot(results, RESULTS, stamp)
        progress.log("wrote " + ", ".join(str(p.relative_to(REPO)) for p in paths))
    return 1 if results.errors else 0


if __name__ == "__main__":
    code = main()
    snapshot.cleanup()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: Celery's AsyncResult.__del__ would try to unsubscribe from a
    # Redis that the closed app no longer talks to, and print noise. Everything is written.
    os._exit(code)
