"""Deterministic simulation of sagas under faults (issue 9, section 3). See README.md here.

SAGAQ_SIM_SEEDS=100000 .venv/bin/pytest tests/simulation -k schedules   # more schedules
SAGAQ_SIM_SEED=1234 .venv/bin/pytest tests/simulation -k replay -s     # one, with trace
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import PG_URL, pg_schema_url, require
from tests.simulation.runner import World, run_schedule, shrink

DEFAULT_SEEDS = 1500  # about 50 s here (35 ms each); see README.md
CHUNKS = 20


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # The runtime logs every recovery it makes; thousands of schedules make that noise.
    logging.disable(logging.CRITICAL)
    try:
        yield World(tmp_path_factory.mktemp("sim"))
    finally:
        logging.disable(logging.NOTSET)


def _seeds(chunk: int) -> range:
    count = int(os.environ.get("SAGAQ_SIM_SEEDS", DEFAULT_SEEDS))
    first = int(os.environ.get("SAGAQ_SIM_FIRST", 0))
    size = -(-count // CHUNKS)
    start = first + chunk * size
    return range(start, min(start + size, first + count))


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_schedules_keep_every_invariant(world: World, chunk: int) -> None:
    """Given random sagas and faults, when each schedule runs to quiescence and is swept,
    then every invariant holds (a failure prints the seed, a replay command and the trace)."""
    started = time.perf_counter()
    failures, known = [], []
    seeds = _seeds(chunk)
    for seed in seeds:
        outcome = run_schedule(world, seed)
        if outcome.ok:
            continue
        (known if outcome.known else failures).append(outcome)
    elapsed = time.perf_counter() - started
    for outcome in known:
        print(f"seed {outcome.seed}: known bug ({'; '.join(outcome.known)}): {outcome.problems[0]}")
    print(f"{len(seeds)} schedules in {elapsed:.1f}s; {len(known)} hit known bugs")
    if failures:
        print(f"FAILED seeds: {[o.seed for o in failures]}")
        others = ", ".join(str(o.seed) for o in failures[1:20])
        smaller = shrink(world, failures[0])
        shrunk = f"\n\nshrunk (faults off: {sorted(smaller.without)}):\n{smaller.report()}"
        pytest.fail(
            failures[0].report()
            + (f"\nalso failed: seeds {others}" if others else "")
            + (shrunk if smaller is not failures[0] else ""),
            pytrace=False,
        )


@pytest.mark.redis
def test_schedules_keep_every_invariant_on_postgresql() -> None:
    """The same on PostgreSQL, whose store has its own statements for start, claim and
    completion (the fast path): fewer schedules, each costs a few round trips more."""
    require(PG_URL)
    count = int(os.environ.get("SAGAQ_SIM_PG_SEEDS", 300))
    logging.disable(logging.CRITICAL)
    try:
        with pg_schema_url() as url:
            world = World(url)
            try:
                outcomes = [run_schedule(world, seed) for seed in range(count)]
            finally:
                world.store.dispose()
    finally:
        logging.disable(logging.NOTSET)
    failures = [o for o in outcomes if not o.ok and not o.known]
    if failures:
        pytest.fail(failures[0].report(), pytrace=False)


@pytest.mark.skipif("SAGAQ_SIM_SEED" not in os.environ, reason="set SAGAQ_SIM_SEED to replay")
def test_replay(world: World) -> None:
    """One schedule, printed in full (run with -s)."""
    off = os.environ.get("SAGAQ_SIM_WITHOUT", "")
    outcome = run_schedule(
        world, int(os.environ["SAGAQ_SIM_SEED"]), frozenset(f for f in off.split(",") if f)
    )
    print(outcome.report(trace_lines=1_000_000) if not outcome.ok else "\n".join(outcome.trace))
    assert outcome.ok, outcome.report()


def test_a_schedule_replays_exactly(tmp_path: Path) -> None:
    """The same seed gives the same trace, event for event (what makes a replay useful)."""
    logging.disable(logging.CRITICAL)
    try:
        (tmp_path / "a").mkdir()
        first = run_schedule(World(tmp_path / "a"), 7)
        (tmp_path / "b").mkdir()
        second = run_schedule(World(tmp_path / "b"), 7)
    finally:
        logging.disable(logging.NOTSET)
    assert first.trace == second.trace
    assert len(first.trace) > 10
