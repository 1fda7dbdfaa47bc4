"""`python -m bench.profiling`: where the time of a sagaq step goes, on W1 (Redis broker + Redis
results + PostgreSQL store, one celery worker, prefork c=2, events off).

1. SQL per saga: a worker with BENCH_COUNT_SQL=1 counts the statements and transactions that
   W1 and W2 sagas cost (the counting itself is not timed).
2. py-spy: `py-spy record --idle --nonblocking` on the worker's main process and both pool
   processes while a backlog of W1 sagas (then of raw Celery chains) keeps them busy; every
   sample is put in one bucket (PostgreSQL round trips, psycopg, SQLAlchemy, sagaq, Redis,
   Celery/kombu/billiard, idle) by the innermost frame that belongs to a known package.
3. Store micro-benchmark, no Celery (bench/micro.py): sagaq's store vs the same SQL on bare
   psycopg vs one statement per transition.
4. Celery knob on raw chains: task results stored (as sagaq's step tasks do) vs ignore_result.

Writes bench/results/profile-<stamp>.json and profile-latest.json, prints a summary; the
collapsed stacks stay in a temporary directory (path printed) for flame graphs.
"""

from __future__ import annotations

import argparse
import json
import linecache
import os
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import snapshot
from bench.apps import Bench, Shape, raw_line, tasks_per_saga
from bench.config import BACKENDS, BENCH_DB, FULL, PG_ADMIN_URL, REDIS_URL, REPO, RESULTS
from bench.cpu import proc_cpu
from bench.measure import throughput
from bench.micro import run as micro_run
from bench.results_model import Results
from bench.runner import W1, W2, Options, Runner
from bench.snapshot import reexec_on_snapshot
from bench.watch import ServiceWatch
from bench.workers import create_bench_db, drop_bench_db, fresh_schema

SITE = Path(sysconfig.get_paths()["purelib"])
PY_SPY = Path(sys.executable).with_name("py-spy")

IDLE = "idle: waiting for the next task"
PG_IO = "PostgreSQL round trips (send, wait for the reply)"
PSYCOPG = "psycopg (driver, Python side)"
SQLA = "SQLAlchemy Core (statement building, compile cache, execution, results)"
SAGAQ = "sagaq (runtime + store logic, events, JSON)"
BENCH = "bench code (no-op step, completion signal)"
REDIS_IO = "Redis round trips (result backend, next-task publish, signal)"
REDIS_PY = "redis-py (client, Python side)"
CELERY = "Celery/kombu/billiard (tracing, serialization, publishing, acks)"
OTHER = "other (stdlib, pydantic, ...)"
ORDER = [PG_IO, PSYCOPG, SQLA, SAGAQ, BENCH, REDIS_IO, REDIS_PY, CELERY, OTHER, IDLE]
CELERY_PKGS = {"celery", "kombu", "billiard", "amqp", "vine", "click"}


def _frame(frame: str) -> tuple[str, str, int]:
    """'func (path:line)' -> (func, path, line)."""
    func, _, rest = frame.rpartition(" (")
    path, _, line = rest.rstrip(")").rpartition(":")
    try:
        return func, path, int(line)
    except ValueError:
        return func, path, 0


def _is_io(path: str, line: int) -> bool:
    """Does this source line hand over to the network (send, wait for, read a reply)?"""
    text = linecache.getline(str(SITE / path), line)
    words = ("send", "wait", "recv", "read(", "readline", "generators.", "select(", "poll(")
    return any(w in text for w in words)


def classify(frames: list[str]) -> str:
    if not any("trace_task" in f for f in frames):
        return IDLE
    for depth, frame in enumerate(reversed(frames)):
        _func, path, line = _frame(frame)
        package = path.split("/", 1)[0]
        if package == "psycopg":
            return PG_IO if depth == 0 and _is_io(path, line) else PSYCOPG
        if package == "sqlalchemy":
            return SQLA
        if package == "sagaq":
            return SAGAQ
        if package == "bench":
            return BENCH
        if package == "redis":
            return REDIS_IO if depth == 0 and _is_io(path, line) else REDIS_PY
        if package in CELERY_PKGS:
            return CELERY
    return OTHER


def phase(frames: list[str]) -> str:
    """Which part of a task's life the sample is in."""
    joined = ";".join(frames)
    if "trace_task" not in joined:
        return "idle"
    if "__protected_call__" in joined:
        return "task body (sagaq step wrapper / raw no-op)"
    if "mark_as_done" in joined or "mark_as_started" in joined or "store_result" in joined:
        return "Celery: store state in the result backend"
    if "_dispatch_callbacks_and_chain" in joined or "apply_async" in joined:
        return "Celery: publish the next task of the chain"
    return "Celery: other tracing"


def store_method(frames: list[str]) -> str | None:
    """The outermost SagaStore method the sample is in, if any."""
    for frame in frames:
        func, path, _ = _frame(frame)
        if path.endswith("sagaq/store/store.py") and func.startswith("SagaStore."):
            return func
    return None


def load(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) format: `frame;frame;... count` per line."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():  # a line cut short while py-spy wrote is skipped
            out.append((stack.split(";"), int(count)))
    return out


def analyse(children: list[Path], rate: int, sagas: float, tasks: int) -> dict[str, Any]:
    """ms per saga in each bucket, summed over the pool processes."""
    buckets: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    methods: dict[str, Counter[str]] = defaultdict(Counter)
    for path in children:
        for frames, count in load(path):
            bucket = classify(frames)
            buckets[bucket] += count
            phases[phase(frames)] += count
            method = store_method(frames)
            if method:
                methods[method][bucket] += count

    def ms(samples: int) -> float:
        return round(samples / rate * 1000 / max(sagas, 1e-9), 3)

    busy = sum(v for k, v in buckets.items() if k != IDLE)
    return {
        "ms_per_saga": {k: ms(buckets[k]) for k in ORDER if buckets[k]},
        "busy_ms_per_saga": ms(busy),
        "busy_ms_per_task": round(ms(busy) / tasks, 3),
        "phases_ms_per_saga": {k: ms(v) for k, v in phases.most_common()},
        "store_methods_ms_per_saga": {
            m: {"total": ms(sum(c.values())), **{k: ms(v) for k, v in c.most_common()}}
            for m, c in sorted(methods.items(), key=lambda kv: -sum(kv[1].values()))
        },
        "samples": sum(buckets.values()),
    }


KNOWN = {"psycopg", "sqlalchemy", "sagaq", "bench", "redis", "pydantic", *CELERY_PKGS}


def top_frames(children: list[Path], package: str, n: int = 12) -> list[tuple[str, int]]:
    """Where the samples that are *attributed to* `package` land (its innermost frame, for the
    samples whose innermost known-package frame is in `package`): what to optimise there."""
    counter: Counter[str] = Counter()
    for path in children:
        for frames, count in load(path):
            if classify(frames) == IDLE:
                continue
            for frame in reversed(frames):
                func, fpath, line = _frame(frame)
                top = fpath.split("/", 1)[0]
                if top in KNOWN:
                    if top == package:
                        counter[f"{func} ({fpath}:{line})"] += count
                    break
    return counter.most_common(n)


def inclusive_frames(children: list[Path], package: str, n: int = 12) -> list[tuple[str, int]]:
    """Innermost frame of `package` in each busy sample, whatever was called below it (for
    sagaq: which line of ours waits on what)."""
    counter: Counter[str] = Counter()
    for path in children:
        for frames, count in load(path):
            if classify(frames) == IDLE:
                continue
            for frame in reversed(frames):
                func, fpath, line = _frame(frame)
                if fpath.startswith(package + "/"):
                    counter[f"{func} ({fpath}:{line})"] += count
                    break
    return counter.most_common(n)


class Profiler:
    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.out_dir = Path(tempfile.mkdtemp(prefix="sagaq-profile-"))
        self.backend = BACKENDS["redis"]
        self.watch = ServiceWatch([REDIS_URL, PG_ADMIN_URL]).start()
        self.runner = Runner(
            Options(FULL, 1, set(), False, self.out_dir, 10.0),
            Results(meta={}),
            console,
            self.watch,
        )

    def log(self, message: str) -> None:
        self.console.log(message)

    def sql_counts(self) -> dict[str, Any]:
        """Per saga, counted by the servers themselves while W1 and W2 run (sagaq and raw
        Celery): PostgreSQL transactions in the bench database (every fast-path statement is
        one autocommit transaction; a pipelined transaction counts once) and Redis commands
        (broker, results and the bench's completion list)."""
        import psycopg
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        url = fresh_schema("profile_sql")
        out: dict[str, Any] = {}
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True)

        def pg_xacts() -> int:
            admin.execute("SELECT pg_stat_clear_snapshot()")
            row = admin.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                (BENCH_DB,),
            ).fetchone()
            return int(row[0]) if row else 0

        def redis_calls() -> Counter[str]:
            stats = client.info("commandstats")
            return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})

        with self.runner.running(self.backend, url) as bench:
            n = 100
            for name, shape in (("W1", W1), ("W2", W2)):
                for system in ("sagaq", "raw"):
                    # A backend publishes its counters once it has been idle for 10 s.
                    time.sleep(11)
                    x0, r0 = pg_xacts(), redis_calls()
                    got = self.runner.attempt(
                        f"counts {name} {system}",
                        lambda s=shape, y=system: throughput(bench, y, s, n, 120),
                        bench,
                    )
                    if got is None:
                        continue
                    time.sleep(11)
                    calls = redis_calls() - r0
                    calls.pop("info", None)
                    out[f"{name} {system}"] = {
                        "pg_transactions": round((pg_xacts() - x0) / n, 2),
                        "redis_commands": round(sum(calls.values()) / n, 1),
                        "redis_by_command": {k: round(v / n, 2) for k, v in calls.most_common()},
                    }
                    self.log(f"per {name} saga, {system}: {out[f'{name} {system}']}")
        admin.close()
        return out

    def spy(self, system: str) -> dict[str, Any]:
        """Two profiles of `system`: wall time (--idle: waits included) and on-CPU only."""
        return {"wall": self._spy_retrying(system, True), "cpu": self._spy_retrying(system, False)}

    def _spy_retrying(self, system: str, idle: bool) -> dict[str, Any]:
        """A profile during which a service restarted is taken again."""
        for tries in range(1, 4):
            generation = self.watch.generation
            try:
                result = self._spy(system, idle)
            except Exception as exc:
                if self.watch.generation == generation:
                    raise
                result = {"error": str(exc)}
            if self.watch.generation == generation:
                return result
            self.log(f"[yellow]{system}: a service restarted during the profile, try {tries}/3")
            self.watch.wait_up()
            time.sleep(3.0)
        return {"error": "services kept restarting"}

    def _spy(self, system: str, idle: bool) -> dict[str, Any]:
        """py-spy on the worker's processes for exactly the processing of a fixed backlog.

        (Not a fixed window: with a deep FIFO queue every chain's next task waits behind the
        first tasks of all the others, so completions in a window say nothing about work done.)
        """
        n = self.args.sagas
        url = fresh_schema(f"profile_{system}")
        with self.runner.running(self.backend, url) as bench:
            proc = self.runner.proc
            assert proc is not None
            pids = {"main": proc.pid, **{f"child{i}": p for i, p in enumerate(proc.children())}}
            spies = [
                subprocess.Popen(
                    [
                        str(PY_SPY),
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        str(self.args.rate),
                        "--format",
                        "raw",
                        *(["--idle"] if idle else []),
                        "--nonblocking",
                        "-o",
                        str(self.out_dir / f"{system}-{'wall' if idle else 'cpu'}-{name}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for name, pid in pids.items()
            ]
            try:
                time.sleep(2.0)  # attached
                bench.sink.reset()
                cpu0 = {k: proc_cpu(p) for k, p in pids.items()}
                started = time.time()
                shape = W2 if self.args.shape == "W2" else W1
                keys = [bench.submitter(system)(shape) for _ in range(n)]
                done = bench.sink.collect(keys, 600)
                cpu = {k: proc_cpu(p) - cpu0[k] for k, p in pids.items()}
                seconds = max(done.values()) - started
            finally:
                for spy_proc in spies:
                    spy_proc.send_signal(signal.SIGINT)  # py-spy writes its output and exits
                for spy_proc in spies:
                    spy_proc.wait(60)
                time.sleep(0.5)
            tasks = tasks_per_saga(bench.app)[self.args.shape][0 if system == "sagaq" else 1]
        kind = "wall" if idle else "cpu"
        children = [self.out_dir / f"{system}-{kind}-{k}.txt" for k in pids if k != "main"]
        result = analyse(children, self.args.rate, n, tasks)
        result.update(
            {
                "system": system,
                "sagas": n,
                "seconds": round(seconds, 2),
                "sagas_per_s": round(n / seconds, 1),
                "tasks_per_saga": tasks,
                "cpu_ms_per_saga": {k: round(v * 1000 / n, 3) for k, v in cpu.items()},
                "samples_are": "wall time (--idle)" if idle else "on-CPU time",
                "raw_stacks": [str(self.out_dir / f"{system}-{kind}-{k}.txt") for k in pids],
            }
        )
        for package in ("sqlalchemy", "sagaq", "psycopg", "celery", "kombu", "redis"):
            result[f"top_{package}"] = top_frames(children, package)
        result["inclusive_sagaq"] = inclusive_frames(children, "sagaq")
        return result

    def celery_knobs(self) -> dict[str, Any]:
        """Raw W1 chains on one worker, alternating: results stored (celeryconfig: stored, with
        task_track_started) vs `ignore_result` on every signature (no STARTED/SUCCESS writes)."""
        url = fresh_schema("profile_knobs")
        runs: dict[str, list[tuple[float, float]]] = {"results stored": [], "ignore_result": []}
        with self.runner.running(self.backend, url) as bench:
            proc = self.runner.proc
            assert proc is not None
            for rnd in range(self.args.knob_rounds):
                for label in sorted(runs, reverse=rnd % 2 == 1):
                    ignore = label == "ignore_result"

                    def submit(shape: Shape, b: Bench = bench, ig: bool = ignore) -> str:
                        key = os.urandom(8).hex()
                        raw_line(b.app, key, shape.length, ignore_result=ig).apply_async()
                        return key

                    probe = Bench(bench.app, bench.engine, bench.sink)
                    probe.submit_raw = submit  # type: ignore[method-assign]
                    self.runner.quiet()
                    pids = [proc.pid, *proc.children()]
                    before = sum(proc_cpu(p) for p in pids)
                    got = self.runner.attempt(
                        f"knobs {label}", lambda p=probe: throughput(p, "raw", W1, 300, 120), probe
                    )
                    if got is not None:
                        cpu = (sum(proc_cpu(p) for p in pids) - before) * 1000 / 300
                        runs[label].append((got.per_s, cpu))
                        self.log(f"raw W1, {label}: {got.per_s:.1f}/s, worker {cpu:.2f} ms/chain")
        return {
            label: {
                "chains_per_s": round(statistics.median(r for r, _ in values), 1),
                "worker_cpu_ms_per_chain": round(statistics.median(c for _, c in values), 2),
                "runs": len(values),
            }
            for label, values in runs.items()
            if values
        }

    def close(self) -> None:
        self.watch.stop()
        self.runner.close()


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"per saga, {what}: {c['pg_transactions']} PostgreSQL transactions, "
        f"{c['redis_commands']} Redis commands"
        for what, c in report.get("sql", {}).items()
    ]
    for system, kind in (("sagaq", "wall"), ("sagaq", "cpu"), ("raw", "wall"), ("raw", "cpu")):
        spy = report.get("spy", {}).get(system, {}).get(kind)
        if not spy or "error" in spy:
            continue
        lines.append(
            f"{system} [{spy['samples_are']}]: {spy['sagas_per_s']}/s while profiled, "
            f"{spy['tasks_per_saga']} tasks per saga; pool processes busy "
            f"{spy['busy_ms_per_saga']} ms per saga ({spy['busy_ms_per_task']} ms per task); "
            f"CPU ms per saga {spy['cpu_ms_per_saga']}"
        )
        for bucket, value in spy["ms_per_saga"].items():
            lines.append(f"    {value:8.2f} ms/saga  {bucket}")
        for name, value in spy["phases_ms_per_saga"].items():
            lines.append(f"    {value:8.2f} ms/saga  [phase] {name}")
    return "\n".join(lines)


def micro_median(runs: int) -> dict[str, Any]:
    """The store micro-benchmark `runs` times (the machine is shared): the run with the median
    per-step time, plus every run's per-step figures."""
    results = [micro_run(fresh_schema("profile_micro")) for _ in range(runs)]
    results.sort(key=lambda r: float(r["sagaq_store"]["per_step_ms"]))
    chosen = results[len(results) // 2]
    chosen["all_runs_per_step_ms"] = [
        {
            "sagaq_store": r["sagaq_store"]["per_step_ms"],
            "same_sql_psycopg": r["same_sql_psycopg"]["per_step_ms"],
            "one_statement": r["one_statement"]["per_step_ms"],
        }
        for r in results
    ]
    return chosen


def _carry_over(report: dict[str, Any], skipped: set[str]) -> None:
    """Phases skipped this time come from the previous profile of the same sagaq commit."""
    try:
        previous = json.loads((RESULTS / "profile-latest.json").read_text())
    except (OSError, ValueError):
        return
    if previous.get("sagaq", {}).get("commit") != report["sagaq"].get("commit"):
        return
    for phase in skipped:
        if phase in previous:
            report[phase] = previous[phase]
            if phase == "spy":
                report["stacks_dir"] = previous.get("stacks_dir")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profiling", description=__doc__)
    parser.add_argument("--sagas", type=int, default=600, help="sagas (chains) profiled")
    parser.add_argument(
        "--shape", choices=("W1", "W2"), default="W1", help="the workload py-spy watches"
    )
    parser.add_argument("--knob-rounds", type=int, default=4, help="rounds of the knob test")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--skip", default="", help="comma-separated phases to skip: sql,spy,micro,knobs"
    )
    parser.add_argument(
        "--commit", default="HEAD", help="git revision of sagaq to profile, or 'worktree'"
    )
    args = parser.parse_args(argv)
    reexec_on_snapshot(args.commit, "bench.profiling", sys.argv[1:] if argv is None else argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {
        "started": stamp,
        "sagaq": snapshot.current(),
        "sagas": args.sagas,
        "rate": args.rate,
    }
    create_bench_db()
    profiler = Profiler(args, console)
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("sql", profiler.sql_counts),
        ("spy", lambda: {s: profiler.spy(s) for s in ("sagaq", "raw")}),
        ("micro", lambda: micro_median(3)),
        ("knobs", profiler.celery_knobs),
    ]
    try:
        for name, fn in steps:
            if name not in skip:
                console.log(f"[bold]{name}")
                report[name] = fn()
    finally:
        profiler.close()
        drop_bench_db()
        report.setdefault("stacks_dir", str(profiler.out_dir))
        _carry_over(report, skip)
        RESULTS.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report, indent=2, default=str) + "\n"
        for path in (RESULTS / f"profile-{stamp}.json", RESULTS / "profile-latest.json"):
            path.write_text(text)
    print(summary(report))
    console.log(
        f"wrote {RESULTS.relative_to(REPO)}/profile-latest.json; stacks in {profiler.out_dir}"
    )
    snapshot.cleanup()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (Celery's AsyncResult.__del__ noise on exit)


if __name__ == "__main__":
    main()
