"""Calling user code: sync or async, with a timeout, and results checked to be JSON."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
import threading
import traceback
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from sagaq.errors import StepTimeoutError, UnserializableResultError


def call_user(fn: Callable[..., Any], args: tuple[Any, ...], timeout: float | None) -> Any:
    """Run `fn(*args)`; raise StepTimeoutError if it takes longer than `timeout` seconds.

    An async function is cancelled at the timeout. A sync function cannot be stopped from the
    outside in Python: it runs in a helper thread and, past the timeout, this call still waits
    for it to end (its effect may land, and it is compensated only once it really stopped;
    under prefork, Celery's hard time limit is the backstop). The StepTimeoutError then carries
    what the function returned, if it did.
    """
    if inspect.iscoroutinefunction(fn):
        return asyncio.run(_await_with_timeout(fn, args, timeout))
    if timeout is None:
        return fn(*args)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=f"sagaq-step-{fn.__name__}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        worker.join()  # it may still apply its effect: wait until it has really stopped
        raise StepTimeoutError(
            f"{fn.__name__} did not finish within {timeout:g}s", result=outcome.get("value")
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


async def _await_with_timeout(
    fn: Callable[..., Any], args: tuple[Any, ...], timeout: float | None
) -> Any:
    try:
        return await asyncio.wait_for(fn(*args), timeout)
    except TimeoutError:
        raise StepTimeoutError(f"{fn.__name__} did not finish within {timeout:g}s") from None


def to_json(value: Any, what: str) -> Any:
    """The JSON form of a step result, or UnserializableResultError saying what is wrong."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise UnserializableResultError(
            f"{what} returned a value that cannot be stored as JSON ({exc}); return dicts, "
            "lists, strings, numbers, booleans, None or a pydantic model"
        ) from None


def backoff_delay(base: float, retries_so_far: int, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter: uniform in [base*2^n / 2, base*2^n], capped."""
    ceiling = min(cap, base * 2.0**retries_so_far)
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def describe(exc: BaseException) -> str:
    """One line for the store and the user: type and message, plus where it was raised. The
    file is named without its directory: the error is shown to API clients and operators, who
    need not learn the layout of the worker's disk."""
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    place = f" (at {os.path.basename(where[0].filename)}:{where[0].lineno})" if where else ""
    return f"{type(exc).__name__}: {exc}{place}"
