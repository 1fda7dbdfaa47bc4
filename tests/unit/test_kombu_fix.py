"""sagaq/runtime/kombu_fix.py: a Redis channel whose connection kombu already detached reports
a connection error (which Celery's worker survives) instead of an AttributeError (which killed
it). The whole scenario, with a real worker and Redis restart, is
tests/chaos/test_found_by_chaos.py::test_a_worker_keeps_consuming_after_redis_restarts_under_a_running_task."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis
from kombu.transport import redis as kombu_redis

from sagaq.runtime.kombu_fix import patch_kombu_redis_close


def _detached_channel() -> kombu_redis.Channel:
    # What Connection.collect() leaves behind: the channel's transport has no client any more.
    channel = object.__new__(kombu_redis.Channel)
    channel.connection = SimpleNamespace(client=None)
    return channel


def test_a_channel_of_a_closed_connection_raises_the_transports_connection_error() -> None:
    assert patch_kombu_redis_close()

    with pytest.raises(redis.exceptions.ConnectionError) as raised:
        _detached_channel()._connparams()

    transport_errors = kombu_redis.Transport.connection_errors
    assert isinstance(raised.value, transport_errors)  # what Celery's ignore_errors swallows


def test_every_engine_applies_the_patch_once() -> None:
    # SagaQ.__init__ applies it; a second engine in the process must not wrap it again.
    patch_kombu_redis_close()
    patched = kombu_redis.Channel._connparams
    patch_kombu_redis_close()

    assert kombu_redis.Channel._connparams is patched
