"""Real Celery worker processes that the chaos test starts, kills with SIGKILL and replaces.

A worker the test did not kill is never replaced: it must outlive broker restarts by itself
(sagaq/runtime/kombu_fix.py), and one that dies is reported as a crash.

Every worker runs in a session (and process group) of its own, so tearing down finds exactly
the processes this pool started, the orphaned prefork children of a killed worker included,
and kills them by PID.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))
KILL_KINDS = ("child", "main", "node")  # a prefork child / the main process / both


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    replaced: bool = False  # a fresh worker took its place

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def children(self) -> list[int]:
        """PIDs of the prefork pool processes (found through /proc, by parent PID)."""
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and int(_stat(entry.name)[1]) == self.pid:
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def ready(self) -> bool:
        return self.log.exists() and " ready." in self.log.read_text(errors="replace")


@dataclass
class WorkerPool:
    """`size` workers of `concurrency` prefork processes each, consuming `queue`."""

    env: dict[str, str]
    queue: str
    logs: Path
    size: int = 2
    concurrency: int = 2
    prefix: list[str] = field(default_factory=list)  # e.g. run inside a network namespace
    app: str = "tests.chaos.worker_app"  # the Celery app module the workers run
    host: str = "%h"  # the node name's host part
    started: list[Worker] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)

    def __enter__(self) -> WorkerPool:
        self.logs.mkdir(parents=True, exist_ok=True)
        for _ in range(self.size):
            self.start()
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def live(self) -> list[Worker]:
        return [w for w in self.started if w.alive()]

    def start(self) -> Worker:
        name = f"{self.queue}-{len(self.started) + 1}"
        log = self.logs / f"{name}.log"
        command = [
            *self.prefix,
            CELERY,
            "-A",
            self.app,
            "worker",
            "-P",
            "prefork",
            "-c",
            str(self.concurrency),
            "-Q",
            self.queue,
            "-n",
            f"{name}@{self.host}",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        ]
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT)}
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        worker = Worker(name, process, log)
        self.started.append(worker)
        return worker

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(w.ready() for w in self.live):
            dead = [w.name for w in self.started if not w.alive() and not w.ready()]
            assert not dead, f"worker {dead} exited at start; see {self.logs}"
            assert time.monotonic() < deadline, f"workers not ready in {timeout}s; see {self.logs}"
            time.sleep(0.1)

    def kill(
        self, kind: str, rng: random.Random, busy: set[int] | None = None
    ) -> tuple[list[int], set[int]]:
        """SIGKILL a prefork child, a worker's main process, or a whole worker (main +
        children), preferring processes in `busy` (running a step), and start a fresh worker
        when a main process died, so capacity remains. Returns the PIDs killed and the PIDs
        whose work is affected (a killed main process orphans its children's tasks)."""
        candidates = [(w, w.children()) for w in self.live]
        if kind == "child":
            candidates = [(w, children) for w, children in candidates if children]
        if not candidates:
            return [], set()
        busy = busy or set()
        working = [(w, c) for w, c in candidates if busy & {w.pid, *c}]
        worker, children = rng.choice(working or candidates)
        if kind == "child":
            victims = [rng.choice(sorted(busy & set(children)) or children)]  # its pool replaces it
        elif kind == "main":
            victims = [worker.pid]  # its children are orphaned mid-task
        else:
            victims = [worker.pid, *children]
        for pid in victims:
            _kill(pid)
        if kind != "child":
            worker.process.wait(timeout=10)
            worker.replaced = True
            self.start()
        self.kills[kind] += 1
        return victims, set(victims) if kind == "child" else {worker.pid, *children}

    def crashed(self) -> list[str]:
        """Workers that died although nobody killed them (a supervisor would have restarted
        them; here that is a failure)."""
        return [
            f"{w.name} (pid {w.pid}) exited with {w.process.returncode}; see {w.log}"
            for w in self.started
            if not w.alive() and not w.replaced
        ]

    def received_since(self, worker: Worker, offset: int) -> bool:
        """Has `worker` taken a task from the broker since its log was `offset` bytes long?"""
        with worker.log.open("rb") as log:
            log.seek(offset)
            return b" received" in log.read()

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown of the live workers, then SIGKILL for every process group started."""
        for worker in self.live:
            worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.live and time.monotonic() < deadline:
            time.sleep(0.1)
        for worker in self.started:
            worker.replaced = True  # stopped on purpose, not crashed
            for pid in _group(worker.pid, self.app):  # orphaned children of a killed main too
                _kill(pid)
            worker.process.wait(timeout=10)


def _stat(pid: str) -> list[str]:
    """Fields of /proc/<pid>/stat after `pid (comm)`: state, ppid, pgrp, ..."""
    stat = (Path("/proc") / pid / "stat").read_text()
    return stat.rsplit(")", 1)[1].split()


def _group(pgid: int, app: str) -> list[int]:
    """Live worker processes of `app` in process group `pgid` (one this pool created)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or int(_stat(entry.name)[2]) != pgid:
                continue
            if app.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
