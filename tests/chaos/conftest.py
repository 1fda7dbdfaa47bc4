"""The chaos suite: `pytest tests/chaos` (bounded), or longer with SAGAQ_CHAOS_SAGAS=1000 or
`pytest tests/chaos --chaos-sagas=1000`.

Its brokers are its own (services.py), started once per session; the machine's Redis and
RabbitMQ are never stopped, and test_machine_services.py checks that Redis on 6379 kept its
run_id through the whole suite."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.chaos.report import recorded
from tests.chaos.services import OwnRabbitMQ, OwnRedis, listening_socket, machine_redis_run_id
from tests.harness import REDIS_URL, REQUIRE_SERVICES

DEFAULT_SAGAS = 120  # per broker: the whole suite stays within a few minutes in CI
LAST = "test_machine_services.py"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-sagas",
        type=int,
        default=None,
        help=f"sagas per broker in the chaos suite (default {DEFAULT_SAGAS}, or "
        "SAGAQ_CHAOS_SAGAS); only when tests/chaos is named on the command line",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: kills workers and restarts brokers while sagas run (tests/chaos)"
    )


def sagas_per_broker(config: pytest.Config) -> int:
    option = config.getoption("--chaos-sagas", default=None)
    return int(option or os.environ.get("SAGAQ_CHAOS_SAGAS") or DEFAULT_SAGAS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Far above the expected run time (~1 min per broker for 120 sagas); scales with the load.
    timeout = 300 + sagas_per_broker(config)
    for item in items:
        if item.get_closest_marker("chaos"):
            item.add_marker(pytest.mark.timeout(timeout))
    # The check that the machine's services were left alone runs after everything else.
    items.sort(key=lambda item: item.path.name == LAST)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name, text in recorded("chaos-").items():
        terminalreporter.write_sep("-", name)
        terminalreporter.write_line(text)


@pytest.fixture
def chaos_sagas(pytestconfig: pytest.Config) -> int:
    return sagas_per_broker(pytestconfig)


def _missing(program: str) -> None:
    message = f"{program} is not installed"
    if REQUIRE_SERVICES:
        pytest.fail(message + " and SAGAQ_REQUIRE_SERVICES=1")
    pytest.skip(message)


@pytest.fixture(scope="session")
def own_redis() -> Iterator[OwnRedis]:
    """A redis-server of the suite's own (free port, own directory): restarted at will."""
    if shutil.which("redis-server") is None:
        _missing("redis-server")
    with OwnRedis() as redis:
        yield redis


@pytest.fixture(scope="session")
def own_rabbitmq() -> Iterator[OwnRabbitMQ]:
    """A RabbitMQ node of the suite's own (node name, ports, directories): restarted at will."""
    if os.geteuid() != 0 or not os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"):
        _missing("rabbitmq-server (run as root, to start a node as the rabbitmq user)")
    with OwnRabbitMQ() as rabbitmq:
        yield rabbitmq


@pytest.fixture(scope="session", autouse=True)
def machine_redis_before() -> str | None:
    """The run_id of the machine's Redis when the suite started (None if it is not running)."""
    return machine_redis_run_id(REDIS_URL)


@pytest.fixture(scope="session", autouse=True)
def machine_amqp_listener_before() -> str | None:
    """The socket the machine's RabbitMQ listened on when the suite started."""
    return listening_socket(5672)
