"""The async client a web app awaits: the event loop keeps running while sagaq talks to the
database and the broker. No services: the embedded engine, and a broker on a closed port for
a start() that takes a while to be refused."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from celery import Celery

from sagaq import BrokerUnavailableError, Saga, SagaQ, StepContext
from sagaq.embedded import embedded_app, in_process_worker


def line() -> Saga:
    saga = Saga("line")

    @saga.step
    def first(ctx: StepContext) -> dict[str, int]:
        time.sleep(0.2)  # long enough for the loop to tick while wait_async polls
        return {"n": 1}

    saga.step(name="second", depends_on=[first])(lambda ctx: None)
    return saga


async def ticking(work: asyncio.Future[object] | asyncio.Task[object]) -> int:
    """How many 10 ms ticks the loop managed while `work` ran."""
    ticks = 0
    while not work.done():
        await asyncio.sleep(0.01)
        ticks += 1
    return ticks


def test_start_async_and_wait_async_finish_a_saga_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    app = embedded_app("async-client")
    engine = SagaQ(app, store=f"sqlite:///{tmp_path / 's.db'}")
    engine.register(line())

    async def main() -> tuple[str, int]:
        handle = await engine.start_async("line", {}, idempotency_key="a-1")
        waiting = asyncio.ensure_future(handle.wait_async(timeout=20))
        ticks = await ticking(waiting)
        return (await waiting).status, ticks

    with in_process_worker(app, engine.queues()):
        status, ticks = asyncio.run(main())

    assert status == "COMPLETED"
    assert ticks >= 10  # the saga took >= 200 ms and the loop ticked all along
    engine.store.dispose()


def test_a_slow_refusal_does_not_block_the_loop(tmp_path: Path) -> None:
    app = Celery("down", broker="redis://127.0.0.1:1/0", backend="redis://127.0.0.1:1/0")
    engine = SagaQ(app, store=f"sqlite:///{tmp_path / 's.db'}")
    engine.register(line())

    async def main() -> int:
        starting = asyncio.ensure_future(engine.start_async("line", {}))
        ticks = await ticking(starting)
        with pytest.raises(BrokerUnavailableError):
            await starting
        return ticks

    began = time.monotonic()
    ticks = asyncio.run(main())
    took = time.monotonic() - began

    # Refused after ~1.5 s of retries. A blocked loop would not tick at all; a free one fits
    # about took/10ms ticks (fewer under load: a quarter of them is plenty).
    assert took > 0.3
    assert ticks >= (took / 0.01) / 4, (ticks, took)
    assert engine.list() == []
    engine.store.dispose()
