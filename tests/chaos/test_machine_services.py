"""The chaos suite restarts brokers of its own only: the machine's Redis (the developer's, or
CI's, used by the other tests at the same time) is the same process after it as before.
tests/chaos/conftest.py runs this module last."""

from __future__ import annotations

import pytest

from tests.chaos.services import listening_socket, machine_redis_run_id
from tests.harness import AMQP_URL, REDIS_URL, require

pytestmark = pytest.mark.chaos


def test_the_machines_redis_was_not_restarted_by_the_chaos_suite(
    machine_redis_before: str | None,
) -> None:
    require(REDIS_URL)
    assert machine_redis_before is not None, "the machine's Redis was down when the suite began"
    assert machine_redis_run_id(REDIS_URL) == machine_redis_before, (
        "the machine's Redis has a new run_id: something in tests/chaos restarted it"
    )


def test_the_machines_rabbitmq_was_not_restarted_by_the_chaos_suite(
    machine_amqp_listener_before: str | None,
) -> None:
    require(AMQP_URL)
    assert machine_amqp_listener_before is not None, "nothing listened on 5672 at the start"
    assert listening_socket(5672) == machine_amqp_listener_before, (
        "the machine's RabbitMQ listens on a new socket: something in tests/chaos restarted it"
    )
