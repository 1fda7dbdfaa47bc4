"""Brokers the tests start, restart and stop themselves: a `redis-server` and a RabbitMQ node of
their own, on free ports with their own data directories.

The machine's Redis (6379) and RabbitMQ (5672) belong to the developer or to CI and to the
other tests running beside these; nothing here ever stops, restarts or flushes them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


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
        time.sleep(0.05)


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, the process group of a service this module started."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class OwnRedis:
    """A `redis-server` on a free port (or the one given) with a data directory of its own.

    Like CI's Redis it keeps nothing on disk, so a restart loses every queued message, every
    unacked message and every chord counter: the worst case for recovery."""

    name = "redis"

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.dir = Path(tempfile.mkdtemp(prefix="sagaq-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        command = [
            "redis-server", "--bind", self.host, "--port", str(self.port),
            "--save", "", "--appendonly", "no", "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, start_new_session=True)
        wait_until(self.up, 30, f"redis on {self.host}:{self.port} did not start")

    def stop(self) -> None:
        """As if the server crashed: no chance to save or to say goodbye to clients."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def up(self) -> bool:
        try:
            return bool(self.client().ping())
        except (redis.RedisError, OSError):
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=2)

    def close(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> OwnRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian's, without the su wrapper
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


class OwnRabbitMQ:
    """A RabbitMQ node of its own: node name, AMQP and distribution ports, Mnesia and log
    directories, config (which moves the management listener off 15672), environment file and
    Erlang cookie (HOME) all under one directory owned by the `rabbitmq` user, who runs it.
    Starting a node takes ~7 s; a restart stops and starts the RabbitMQ application."""

    name = "rabbitmq"

    def __init__(self) -> None:
        self.port = free_port()
        self.node = f"sagaq{uuid.uuid4().hex[:8]}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="sagaq-rabbitmq-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {
            "HOME": str(self.dir),  # its own Erlang cookie, made on first start
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _as_rabbitmq(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", "rabbitmq", "--", *command]

    def _environment(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {**keep, **self.env}

    def start(self) -> None:
        if self.process is None:
            self._prepare()
            self.process = subprocess.Popen(
                self._as_rabbitmq([RABBITMQ_SERVER]), env=self._environment(), cwd=self.dir,
                stdout=(self.dir / "stdout.log").open("wb"), stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        else:
            self._ctl("start_app")
        wait_until(self.up, 90, f"rabbitmq node {self.node} did not start")

    def _prepare(self) -> None:
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"management.tcp.port = {free_port()}\n"
            "loopback_users = none\n"
        )
        (self.dir / "rabbitmq-env.conf").write_text("")
        rabbitmq = pwd.getpwnam("rabbitmq")
        for path in [self.dir, *self.dir.rglob("*")]:
            os.chown(path, rabbitmq.pw_uid, rabbitmq.pw_gid)

    def stop(self) -> None:
        """Stop the RabbitMQ application: every client connection drops, the node stays."""
        self._ctl("stop_app")
        wait_until(lambda: not answers(self.port), 30, f"rabbitmq {self.node} did not stop")

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            self._as_rabbitmq([RABBITMQCTL, "-n", self.node, *args]),
            env=self._environment(), check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def up(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = (self.dir / "stdout.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"rabbitmq node {self.node} exited:\n{log}")
        return answers(self.port)

    def close(self) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._ctl("stop")
            stop_process_group(self.process)
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> OwnRabbitMQ:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def machine_redis_run_id(url: str) -> str | None:
    """The run_id of the machine's Redis (a new one means it was restarted), None if it does
    not answer. Read only: INFO."""
    try:
        info = redis.Redis.from_url(url, socket_timeout=2).info("server")
    except (redis.RedisError, OSError):
        return None
    return str(info["run_id"])


def listening_socket(port: int) -> str | None:
    """The inode of the socket listening on TCP `port` (IPv4 or IPv6), None if none is. A
    broker that was restarted, even only its application (rabbitmqctl stop_app/start_app),
    listens on a new socket."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    return inode
    return None
