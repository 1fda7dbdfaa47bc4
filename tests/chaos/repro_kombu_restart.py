"""Minimal reproduction: a Celery 5.7 / kombu 5.7 prefork worker exits when Redis restarts.

    .venv/bin/python -m tests.chaos.repro_kombu_restart          # without sagaq's fix: exits
    .venv/bin/python -m tests.chaos.repro_kombu_restart --fixed  # with it: keeps consuming

No sagaq involved: a plain Celery app with one task, on a redis-server of the script's own (a
free port, its own directory; the machine's Redis is never touched). The worker (`-c 2`,
acks_late, prefetch 1) runs one long task, so it holds an unacked message while its consumer
waits in BRPOP for the next one. Then Redis is killed and started again. The worker logs
"Unrecoverable error: AttributeError("'NoneType' object has no attribute 'hostname'")" and
exits; the cause is explained in sagaq/runtime/kombu_fix.py. Exit status 0 means what the flag
promised happened (`--fixed`: the same worker PID ran a task after the restart; without it:
the worker died with that error).

As a Celery app this module is also the worker: `celery -A tests.chaos.repro_kombu_restart`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celery import Celery

from tests.chaos.services import OwnRedis, wait_until

BROKER = os.environ.get("REPRO_BROKER_URL", "redis://127.0.0.1:1/0")
app = Celery("repro", broker=BROKER, backend=BROKER, set_as_current=False)
app.conf.update(
    task_acks_late=True,  # as sagaq's celeryconfig: the running task's message stays unacked
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
if os.environ.get("REPRO_FIXED") == "1":
    from sagaq.runtime.kombu_fix import patch_kombu_redis_close

    patch_kombu_redis_close()


@app.task(name="repro.nap")
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def run(fixed: bool) -> bool:
    root = Path(__file__).resolve().parents[2]
    log = Path(tempfile.mkdtemp(prefix="sagaq-repro-")) / "worker.log"
    with OwnRedis() as redis:
        env = {**os.environ, "REPRO_BROKER_URL": redis.url, "REPRO_FIXED": "1" if fixed else "0"}
        command = [
            str(Path(sys.executable).with_name("celery")), "-A", "tests.chaos.repro_kombu_restart",
            "worker", "-P", "prefork", "-c", "2", "-l", "INFO", "--without-gossip",
            "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with log.open("wb") as out:
            worker = subprocess.Popen(
                command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            wait_until(lambda: " ready." in log.read_text(errors="replace"), 60, "worker ready")
            client = Celery("repro-client", broker=redis.url, backend=redis.url)
            client.send_task("repro.nap", (3.0,), ignore_result=True)  # the consumer: in BRPOP
            wait_until(lambda: "received" in log.read_text(errors="replace"), 30, "task received")
            redis.stop()
            time.sleep(1.0)
            redis.start()
            survived = True
            try:
                client.send_task("repro.nap", (0.0,)).get(timeout=30)
            except Exception as exc:
                print(f"no task ran after the restart: {type(exc).__name__}: {exc}")
                survived = False
            survived = survived and worker.poll() is None
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, 9)
            worker.wait(timeout=10)
    text = log.read_text(errors="replace")
    crashed = "Unrecoverable error" in text and "'hostname'" in text
    print(f"fix applied: {fixed}; worker pid {worker.pid} survived the restart: {survived}; "
          f"hostname AttributeError logged: {crashed}; log: {log}")  # fmt: skip
    return survived and not crashed if fixed else crashed and not survived


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixed", action="store_true", help="apply sagaq's kombu fix")
    sys.exit(0 if run(parser.parse_args().fixed) else 1)
