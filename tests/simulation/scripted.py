"""Hand-written schedules: the simulator with its decisions scripted instead of drawn, for
regression tests that must not depend on what a seed happens to generate."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sagaq import Saga, StepContext
from sagaq.runtime.launch import retry, start_saga
from tests.simulation.effects import do, undo
from tests.simulation.faults import Faults
from tests.simulation.runner import World, deterministic
from tests.simulation.scheduler import Sim

Script = dict[tuple[str, str, int], str]  # (step, checkpoint, attempt) -> "crash" | "park"


@dataclass
class ScriptedSim(Sim):
    checkpoints: Script = field(default_factory=dict)
    # task name -> (dies before the ack, its sends left), used once per delivery, in order
    acks: dict[str, list[tuple[bool, bool]]] = field(default_factory=dict)
    # task name -> when a message whose worker died comes back (None: lost); default at once
    redeliveries: dict[str, float | None] = field(default_factory=dict)

    def at_checkpoint(self, where: str, ctx: StepContext) -> str:
        return self.checkpoints.get((ctx.step, where, ctx.attempt), "go")

    def before_ack(self, message: Any) -> tuple[bool, bool]:
        planned = self.acks.get(message.task)
        return planned.pop(0) if planned else (False, True)

    def redelivery_delay(self, message: Any) -> float | None:
        return self.redeliveries.get(message.task, 0.0)


def scripted(world: World, **scripts: Any) -> ScriptedSim:
    world.reset()
    # No periodic sweep: these schedules show what finishes without one.
    scripts.setdefault("next_beat", float("inf"))
    return ScriptedSim(
        0, world.store, world.clock, world.app, {}, Faults(), random.Random(0), **scripts
    )


def add_step(
    sim: Sim,
    saga: Saga,
    name: str,
    deps: Iterable[str] = (),
    *,
    undoable: bool = True,
    **options: Any,
) -> None:
    step = saga.step(name=name, depends_on=list(deps), **options)(lambda ctx: do(sim, ctx))
    if undoable:
        step.compensate(lambda ctx, result: undo(sim, ctx, result))


def run(
    sim: Sim, saga: Saga, plan: dict[str, Any], *, children: Iterable[Saga] = (), **extra: Any
) -> str:
    """Start `saga` (its steps behave as `plan` says) and run until nothing can happen (or
    the event budget is spent: see sim.trace)."""
    for child in children:
        child.validate()
        sim.register(child)
    saga.validate()
    sim.register(saga)
    data = {"plan": plan, "when": {s: True for s in saga.steps}, **extra}
    with deterministic(sim.rng):
        saga_id, _ = start_saga(sim.rt, saga, data)
        sim.names[saga_id] = saga.name
        sim.run_until_quiet()
    return saga_id


def operator_retry(sim: Sim, saga: Saga, saga_id: str) -> None:
    """The cause is fixed (every plan now succeeds) and an operator retries the saga."""
    sim.healed = True
    with deterministic(sim.rng):
        retry(sim.rt, saga, saga_id)
        sim.run_until_quiet()
