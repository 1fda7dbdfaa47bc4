"""Calling user code: timeouts, async functions, JSON results, backoff."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest
from pydantic import BaseModel

from sagaq import StepTimeoutError, UnserializableResultError
from sagaq.runtime.invoke import backoff_delay, call_user, to_json


def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


async def slow_async(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


def test_sync_function_over_its_timeout_fails_only_once_it_really_stopped() -> None:
    """Its effect may still land after the timeout: the step is failed (and compensated) only
    when the function has ended, with what it returned."""
    started = time.monotonic()

    with pytest.raises(StepTimeoutError, match=r"slow did not finish within 0.1s") as failed:
        call_user(slow, (0.5,), timeout=0.1)

    assert time.monotonic() - started >= 0.5
    assert failed.value.result == "done"


def test_async_function_is_awaited_and_cancelled_at_its_timeout() -> None:
    assert call_user(slow_async, (0.0,), timeout=1.0) == "done"
    with pytest.raises(StepTimeoutError, match="slow_async"):
        call_user(slow_async, (2.0,), timeout=0.1)


def test_errors_inside_a_timed_call_propagate_unchanged() -> None:
    def boom() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        call_user(boom, (), timeout=1.0)


def test_results_must_be_json() -> None:
    class Out(BaseModel):
        when: datetime

    assert to_json((1, "a"), "step x") == [1, "a"]
    assert to_json(Out(when=datetime(2026, 1, 2)), "step x") == {"when": "2026-01-02T00:00:00"}
    with pytest.raises(UnserializableResultError, match="step x returned a value that cannot"):
        to_json({"when": datetime(2026, 1, 2)}, "step x")
    with pytest.raises(UnserializableResultError):
        to_json(float("nan"), "step x")


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    delays = [backoff_delay(1.0, n) for n in range(4)]

    for n, delay in enumerate(delays):
        assert 2**n / 2 <= delay <= 2**n
    assert backoff_delay(1.0, 30, cap=5.0) <= 5.0
