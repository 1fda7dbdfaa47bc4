"""Worker "hosts" made of network namespaces, and a PostgreSQL cluster of the test's own.

Each host is a network namespace joined to the root namespace by a veth pair, with a /30 from
the 198.18.0.0/15 benchmarking range (RFC 2544), never a routable one: the root side is
198.18.<net>.<4i+1>, the host side .<4i+2>. Services listen on the root sides. A host's
processes run under `unshare --uts` with their own host name, so Celery node names and
`socket.gethostname()` in the steps tell the hosts apart.

Everything made here is torn down by `Cluster.close()`, which the test calls in a `finally`:
namespaces, links and the processes started in them.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.services import answers, free_port, stop_process_group, wait_until


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def netns_works() -> str | None:
    """None if network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "`ip` (iproute2) or `unshare` is not installed"
    probe = f"sagaq-probe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        return f"`ip netns add` does not work here: {stderr.decode(errors='replace').strip()}"
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip("netns", "del", probe)
    return None


@dataclass
class Host:
    name: str  # also its host name
    netns: str
    root_if: str
    host_if: str
    root_addr: str  # where the services listen for this host
    addr: str

    def prefix(self) -> list[str]:
        """Run a command on this host: its namespace, its host name."""
        return [
            "ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c",
            f'hostname {self.name} && exec "$@"', "sh",
        ]  # fmt: skip

    def partition(self) -> None:
        """Pull the host's cable: it reaches nothing and nothing reaches it."""
        _ip("-n", self.netns, "link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("-n", self.netns, "link", "set", self.host_if, "up")
        _ip("-n", self.netns, "route", "replace", "default", "via", self.root_addr)


@dataclass
class Cluster:
    size: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    net: int = field(default_factory=lambda: _unused_net())
    hosts: list[Host] = field(default_factory=list)

    def open(self) -> Cluster:
        for i in range(self.size):
            name = f"h{i + 1}"
            host = Host(
                name=name,
                netns=f"sagaq-{self.tag}-{name}",
                root_if=f"sq{self.tag}r{i + 1}",
                host_if=f"sq{self.tag}n{i + 1}",
                root_addr=f"198.18.{self.net}.{4 * i + 1}",
                addr=f"198.18.{self.net}.{4 * i + 2}",
            )
            self.hosts.append(host)  # before creating anything: close() removes what exists
            _ip("netns", "add", host.netns)
            _ip("link", "add", host.root_if, "type", "veth", "peer", "name", host.host_if)
            _ip("link", "set", host.host_if, "netns", host.netns)
            _ip("addr", "add", f"{host.root_addr}/30", "dev", host.root_if)
            _ip("link", "set", host.root_if, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.addr}/30", "dev", host.host_if)
            _ip("-n", host.netns, "link", "set", "lo", "up")
            host.heal()
        return self

    def close(self) -> None:
        for host in self.hosts:
            for pid in _pids_in(host.netns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", host.root_if)  # takes its peer with it
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", host.netns)
        self.hosts.clear()

    def __enter__(self) -> Cluster:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unused_net() -> int:
    """A /24 of 198.18.0.0/24..198.18.255.0/24 no interface here uses (another cluster test
    running at the same time)."""
    shown = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    used = {int(part.split(".")[2]) for part in shown.split() if part.startswith("198.18.")}
    return random.choice([n for n in range(256) if n not in used])


def _pids_in(netns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]


def postgres_initdb() -> Path | None:
    """PostgreSQL's initdb (Debian keeps it off PATH, in /usr/lib/postgresql/<v>/bin)."""
    if found := shutil.which("initdb"):
        return Path(found)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    return versions[0] if versions else None


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (initdb + pg_ctl as user postgres, its own port
    and data directory, trust authentication), listening on loopback and `addresses`. The
    machine's PostgreSQL is not touched."""

    def __init__(self, addresses: list[str], settings: str = "-c fsync=off") -> None:
        self.port = free_port()
        self.addresses = ["127.0.0.1", *addresses]
        self.settings = settings  # fsync off for the tests; the capacity measurement keeps it
        self.dir = Path(tempfile.mkdtemp(prefix="sagaq-pg-"))
        self.data = self.dir / "data"
        initdb = postgres_initdb()
        assert initdb is not None, "PostgreSQL's server programs are not installed"
        self.bin = initdb.resolve().parent

    def url(self, host: str = "127.0.0.1") -> str:
        return f"postgresql://postgres@{host}:{self.port}/postgres"

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def start(self) -> None:
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres",
            "--no-sync",
        )  # fmt: skip
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 198.18.0.0/15 trust\n")
        options = (
            f"-p {self.port} -c listen_addresses={','.join(self.addresses)} "
            f"-c unix_socket_directories={self.dir} -c max_connections=200 {self.settings}"
        )
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.dir / "postgres.log"), "-w", "start",
        )  # fmt: skip

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                self._as_postgres(
                    str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"
                )
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> OwnPostgres:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BoundRedis:
    """A redis-server of the test's own listening on loopback and on `addresses`."""

    def __init__(self, addresses: list[str]) -> None:
        self.port = free_port()
        self.addresses = ["127.0.0.1", *addresses]
        self.dir = Path(tempfile.mkdtemp(prefix="sagaq-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, host: str = "127.0.0.1", db: int = 0) -> str:
        return f"redis://{host}:{self.port}/{db}"

    def __enter__(self) -> BoundRedis:
        command = [
            "redis-server", "--bind", *self.addresses, "--port", str(self.port), "--save", "",
            "--protected-mode", "no",  # clients come from the hosts; it listens on no other
            "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.dir / "log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, start_new_session=True)
        wait_until(lambda: answers(self.port), 30, "the cluster's redis did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_process_group(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)
