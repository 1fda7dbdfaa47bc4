"""One schedule from a seed: draw sagas and faults, start them, walk, recover, check.

python -m tests.simulation.runner 1234      # replay seed 1234 and print its trace
"""

from __future__ import annotations

import random
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

from celery import Celery
from sqlalchemy import delete

import sagaq.runtime.invoke as invoke_module
import sagaq.runtime.launch as launch_module
from sagaq.definition.saga import Saga
from sagaq.runtime.launch import retry, start_saga
from sagaq.status import SagaStatus
from sagaq.store import SagaStore
from sagaq.store.schema import saga as saga_table
from sagaq.store.schema import saga_event, saga_step
from tests.simulation.faults import Faults
from tests.simulation.invariants import check
from tests.simulation.known import known_bugs
from tests.simulation.scheduler import BEAT, LEASE, STALL_AFTER, Sim
from tests.simulation.shapes import Drawn, draw
from tests.simulation.world import SimClock

REPLAY = "SAGAQ_SIM_SEED={seed}{without} .venv/bin/pytest tests/simulation -k replay -s"
RECOVERY_ROUNDS = 8


@dataclass
class Outcome:
    seed: int
    problems: list[str]
    trace: list[str]
    events: int
    known: list[str] = field(default_factory=list)  # known bugs whose signature is present
    without: frozenset[str] = frozenset()  # faults switched off (shrinking)

    @property
    def replay(self) -> str:
        off = f" SAGAQ_SIM_WITHOUT={','.join(sorted(self.without))}" if self.without else ""
        return REPLAY.format(seed=self.seed, without=off)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self, trace_lines: int = 400) -> str:
        shown = self.trace[-trace_lines:]
        return "\n".join(
            [
                f"schedule {self.seed} failed: {len(self.problems)} problem(s)"
                + (f" (known bug: {'; '.join(self.known)})" if self.known else ""),
                *(f"  - {p}" for p in self.problems[:20]),
                f"replay: {self.replay}",
                f"trace ({len(self.trace)} events, the last {len(shown)} shown):",
                *shown,
            ]
        )


class World:
    """What schedules share in one process: a store (emptied between schedules; SQLite in a
    folder, or a store URL) and a Celery app used only to build signatures."""

    def __init__(self, where: Path | str) -> None:
        self.clock = SimClock()
        url = where if isinstance(where, str) else f"sqlite:///{where / 'sim.db'}"
        self.store = SagaStore(url, clock=self.clock)
        self.app = Celery("sagaq-sim", set_as_current=False)

    def reset(self) -> None:
        with self.store._begin() as conn:
            for table in (saga_event, saga_step, saga_table):
                conn.execute(delete(table))
        self.clock.now = 1_000_000.0


@contextmanager
def deterministic(rng: random.Random) -> Iterator[None]:
    """Saga ids and backoff jitter from the schedule's RNG instead of the OS."""
    counter = iter(range(1, 1 << 30))

    def uuid4() -> uuid.UUID:
        return uuid.UUID(int=(rng.getrandbits(96) << 32) | next(counter), version=4)

    saved = launch_module.uuid, invoke_module.random
    launch_module.uuid = SimpleNamespace(uuid4=uuid4)  # type: ignore[assignment]
    invoke_module.random = rng  # type: ignore[assignment]
    try:
        yield
    finally:
        launch_module.uuid, invoke_module.random = saved


def run_schedule(world: World, seed: int, without: frozenset[str] = frozenset()) -> Outcome:
    """Run the schedule of `seed`, with the faults named in `without` switched off (a
    different walk from the same seed: what shrinking tries)."""
    world.reset()
    rng = random.Random(seed)
    faults = Faults.draw(rng)
    for name in without:
        setattr(faults, name, 0.0)
    sagas: dict[str, Saga] = {}
    sim = Sim(seed, world.store, world.clock, world.app, sagas, faults, rng)
    sim.fault_budget = rng.choice([4, 12, 30])
    drawn: list[Drawn] = [draw(rng, f"s{i}", sim) for i in range(rng.choice([1, 1, 2]))]
    effectful: dict[str, set[str]] = {}
    for d in drawn:
        for saga in (d.saga, *d.children):
            sim.register(saga)
        effectful |= d.effectful
    sim.log(f"seed {seed}; up to {sim.fault_budget} faults: {faults.summary()}")
    for d in drawn:
        sim.log(f"saga {d.saga.name} ({d.kind}, {d.saga.failure_policy}): {_shape(d.saga)}")
        for child in d.children:
            sim.log(f"  child {child.name}: {_shape(child)}")
    sim.next_beat = world.clock.now + BEAT
    with deterministic(rng):
        for d in drawn:
            start(sim, d)
        finished = sim.run_until_quiet()
        if not finished:
            sim.violation(f"no quiescence within {sim.events} events: {_unfinished(sim)}")
        _adopt_children(sim)
        stuck = _unfinished(sim)
        if stuck and not sim.lost and finished and not sim.problems:
            sim.violation(f"not terminal without a sweep, though nothing was lost: {stuck}")
        recover(sim)
        heal_and_retry(sim)
    problems = sim.problems + (check(sim, effectful) if not sim.problems else [])
    known = known_bugs(sim) if problems else []
    return Outcome(seed, problems, sim.trace, sim.events, known, without)


def shrink(world: World, failed: Outcome) -> Outcome:
    """A smaller failing schedule: switch the faults off one at a time, keeping each switch
    that still fails, then prefer the shortest trace seen."""
    best = failed
    for name in sorted(f.name for f in fields(Faults)):
        if name in best.without:
            continue
        tried = run_schedule(world, failed.seed, best.without | {name})
        if not tried.ok and not tried.known and len(tried.trace) <= len(best.trace):
            best = tried
    return best


def start(sim: Sim, d: Drawn) -> None:
    def action() -> None:
        saga_id, _ = start_saga(sim.rt, d.saga, d.input)
        sim.names[saga_id] = d.saga.name

    sim.act(f"start {d.saga.name}", action)


def recover(sim: Sim) -> None:
    """Quiescence, then sweeps (with the clock past every lease and stall) until terminal."""
    sim.faults = Faults()
    for _ in range(RECOVERY_ROUNDS):
        if not _unfinished(sim):
            return
        sim.advance(sim.clock.now + max(STALL_AFTER, LEASE) + 1)
        sim.act("recovery sweep", sim.sweep)
        if not sim.run_until_quiet():
            sim.violation(f"no quiescence after a recovery sweep: {_unfinished(sim)}")
            return
        _adopt_children(sim)
    if stuck := _unfinished(sim):
        sim.violation(f"not terminal after {RECOVERY_ROUNDS} recovery sweeps: {stuck}")


def heal_and_retry(sim: Sim) -> None:
    """FAILED needs an operator: it must say why, and retry (once the cause is fixed) must
    finish it. Children first: a parent's compensation waits for its child's."""
    failed = [
        record
        for saga_id in sorted(sim.names)
        if (record := sim.store.get(saga_id)) is not None and record.status == SagaStatus.FAILED
    ]
    if not failed:
        return
    sim.healed = True
    for record in sorted(failed, key=lambda r: r.parent_id is None):
        if not record.error:
            sim.violation(f"[{sim.short(record.id)}] FAILED without a reason")
        saga = sim.sagas[record.name]
        label = f"operator retry [{sim.short(record.id)}]"
        sim.act(label, lambda s=saga, i=record.id: retry(sim.rt, s, i))
        sim.run_until_quiet()
    recover(sim)
    for saga_id in sorted(sim.names):
        record = sim.store.get(saga_id)
        if record is not None and record.status == SagaStatus.FAILED:
            who = sim.short(saga_id)
            sim.violation(f"[{who}] still FAILED after an operator retry: {record.error}")


def _adopt_children(sim: Sim) -> None:
    """Name the sub-sagas the runtime started, for the trace and the checks."""
    with sim.store._begin() as conn:
        rows = conn.execute(
            saga_table.select().with_only_columns(saga_table.c.id, saga_table.c.parent_id)
        ).all()
    for row in rows:
        if row.id not in sim.names:
            parent = sim.names.get(row.parent_id or "", "?")
            sim.names[row.id] = f"{parent}/child{len(sim.names)}"


def _unfinished(sim: Sim) -> list[str]:
    stuck = []
    for saga_id in sorted(sim.names):
        status = sim.status_of(saga_id)
        if status is not None and not status.is_terminal:
            stuck.append(f"{sim.short(saga_id)}={status}")
    return stuck


def _shape(saga: Saga) -> str:
    parts = []
    for step in saga.steps.values():
        flags = "".join(
            [
                "P" if step.pivot else "",
                "W" if step.when else "",
                f"<{step.sub_saga}>" if step.sub_saga else "",
                "" if step.compensation else "!",
            ]
        )
        deps = ",".join(step.depends_on)
        parts.append(f"{step.name}{flags}" + (f"<-{deps}" if deps else ""))
    return " ".join(parts)


def main() -> None:
    seed = int(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_schedule(World(Path(tmp)), seed)
    print(outcome.report(trace_lines=100_000) if not outcome.ok else "\n".join(outcome.trace))
    print("OK" if outcome.ok else "FAILED")


if __name__ == "__main__":
    main()
