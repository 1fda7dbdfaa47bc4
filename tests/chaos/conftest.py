"""The chaos suite: `pytest tests/chaos` (bounded), or longer with SAGAQ_CHAOS_SAGAS=1000 or
`pytest tests/chaos --chaos-sagas=1000`."""

from __future__ import annotations

import os

import pytest

DEFAULT_SAGAS = 120  # per broker: the whole suite stays within a few minutes in CI


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


@pytest.fixture
def chaos_sagas(pytestconfig: pytest.Config) -> int:
    return sagas_per_broker(pytestconfig)
