"""Keep Celery 5.7 / kombu 5.7 workers alive when their Redis broker restarts.

The bug (reproduced by tests/chaos/repro_kombu_restart.py): a prefork worker exits with
"Unrecoverable error: AttributeError: 'NoneType' object has no attribute 'hostname'" raised in
kombu's `redis.Channel._connparams`. It needs Redis to go away while the consumer's channel is
blocked in BRPOP *and* holds an unacked (acks_late) message, which is the normal state of a
busy sagaq worker. Then, in Celery's `Consumer.on_connection_error_after_connected`:

1. `connection.collect()` closes the channels. The channel's `close()` first reads the pending
   BRPOP reply, which raises `ConnectionError` before the channel is marked closed; kombu's
   `maybe_close_channel` swallows it. `collect()` then detaches the transport from its
   connection (`transport.client = None`) although that channel is still open.
2. `connection.close()` closes the still-open channel again. This time it gets as far as
   requeueing its unacked message (`QoS.restore_unacked_once`), which needs a new Redis pool,
   built from `transport.client.hostname`: AttributeError. That is not one of the transport's
   connection errors, so Celery's `ignore_errors` lets it through and the worker dies.

The fix: a channel whose connection has been detached says so with the transport's own
connection error (`redis.ConnectionError`) instead of an AttributeError. Every caller on this
path already treats a connection error as "the broker is gone": the close goes on, the
consumer reconnects, and the unacked message is redelivered as it would be after any lost
connection (from the unacked index after the visibility timeout if Redis kept it, or by
sagaq's sweeper if a Redis without persistence lost it).

Applied once per process by `SagaQ.__init__`, so every worker that builds a SagaQ has it.
Remove it when kombu's `Connection.collect` stops detaching a transport whose channels it
failed to close.
"""

from __future__ import annotations

import functools
from typing import Any

_PATCHED = "_sagaq_detached_connection_fix"


def patch_kombu_redis_close() -> bool:
    """Install the fix in kombu's Redis transport (idempotent). False when kombu's Redis
    transport cannot be imported (no `redis` package), so there is nothing to fix."""
    try:
        import redis
        from kombu.transport import redis as kombu_redis
    except ImportError:
        return False
    channel: Any = kombu_redis.Channel  # the stubs do not know its private methods
    if getattr(channel, _PATCHED, False):
        return True
    original = channel._connparams

    @functools.wraps(original)
    def _connparams(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError(
                "kombu: this channel's broker connection is already closed"
            )
        return original(self, *args, **kwargs)

    channel._connparams = _connparams
    setattr(channel, _PATCHED, True)
    return True
