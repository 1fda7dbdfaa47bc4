"""Stopping and starting the shared brokers. Other tests and CI use them after the chaos suite,
so every restart ends with the broker answering again, whatever happened in between."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

REDIS_PORT = 6379
AMQP_PORT = 5672
# Exactly how CI starts Redis: no persistence, so a restart loses every queued message,
# every unacked message and every chord counter.
REDIS_SERVER = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout:g}s")
        time.sleep(0.1)


def _run(*command: str, timeout: float = 60.0) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=timeout)


def _redis_pong() -> bool:
    done = subprocess.run(
        ["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True, text=True, timeout=5
    )
    return done.stdout.strip() == "PONG"


@dataclass(frozen=True)
class Broker:
    name: str
    stop: Callable[[], None]
    start: Callable[[], None]
    up: Callable[[], bool]

    def restart(self, down_for: float, while_down: Callable[[], None] | None = None) -> None:
        """Stop the broker, keep it down `down_for` seconds (calling `while_down` meanwhile),
        start it again: whatever happens, it is answering when this returns."""
        try:
            self.stop()
            began = time.monotonic()
            if while_down is not None:
                while_down()
            time.sleep(max(0.0, down_for - (time.monotonic() - began)))
        finally:
            self.ensure_up()

    def ensure_up(self) -> None:
        if not self.up():
            self.start()
        wait_until(self.up, 60, f"{self.name} is not answering again")


def _redis_stop() -> None:
    subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "shutdown", "nosave"], timeout=10)
    wait_until(lambda: not answers(REDIS_PORT), 10, "redis did not stop")


def _redis_start() -> None:
    _run(*REDIS_SERVER)


def _rabbit_stop() -> None:
    _run("rabbitmqctl", "stop_app")
    wait_until(lambda: not answers(AMQP_PORT), 30, "rabbitmq did not stop")


def _rabbit_start() -> None:
    _run("rabbitmqctl", "start_app")


def _redis_up() -> bool:
    try:
        return answers(REDIS_PORT) and _redis_pong()
    except (OSError, subprocess.SubprocessError):
        return False


REDIS = Broker("redis", _redis_stop, _redis_start, _redis_up)
RABBITMQ = Broker("rabbitmq", _rabbit_stop, _rabbit_start, lambda: answers(AMQP_PORT))
