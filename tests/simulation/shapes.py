"""Random saga shapes: DAGs of up to 8 steps (series-parallel or not), a pivot, TCC, one level
of sub-sagas, `when=` conditions, every failure policy; and a plan of faults in user code
(failing steps, failing or slow compensations) carried in the saga's input."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from sagaq import Saga
from sagaq.definition import FailurePolicy
from sagaq.tcc import Tcc
from tests.simulation.effects import Hooks, do, undo


@dataclass
class Drawn:
    """A saga definition with its children, and an input that drives its faults."""

    saga: Saga
    input: dict[str, Any]
    children: list[Saga] = field(default_factory=list)
    effectful: dict[str, set[str]] = field(default_factory=dict)  # saga -> steps that `do`
    kind: str = "dag"


def random_deps(rng: random.Random, names: list[str], p: float) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        earlier = names[:i]
        deps[name] = [d for d in earlier if rng.random() < p][:3]
    return deps


def _options(rng: random.Random) -> dict[str, Any]:
    return {
        "failure_policy": rng.choice(list(FailurePolicy)),
        "compensation_retry": rng.choice([0, 1, 2, 3]),
        "compensation_backoff": rng.choice([0.05, 0.5, 2.0]),
        "forward_retry": rng.choice([0, 1, 3]),
        "deadline": rng.choice([None, None, None, 2.0, 9.0, 40.0]),
    }


def _add_step(
    saga: Saga,
    hooks: Hooks,
    rng: random.Random,
    name: str,
    deps: list[str],
    *,
    pivot: bool = False,
    undoable: bool = True,
) -> None:
    conditional = not pivot and rng.random() < 0.12
    step = saga.step(
        name=name,
        depends_on=deps,
        retry=rng.choice([0, 0, 1, 2]),
        backoff=rng.choice([0.01, 0.2, 1.0]),
        pivot=pivot,
        when=(lambda ctx: bool(ctx.input["when"][ctx.step])) if conditional else None,
    )(lambda ctx: do(hooks, ctx))
    if undoable:
        step.compensate(lambda ctx, result: undo(hooks, ctx, result))


def draw_dag(rng: random.Random, name: str, hooks: Hooks, n: int, *, pivot: bool) -> Saga:
    saga = Saga(name, **_options(rng))
    names = [f"s{i}" for i in range(n)]
    if not pivot or n < 2:
        deps = random_deps(rng, names, rng.choice([0.25, 0.5, 0.8]))
        for step in names:
            _add_step(saga, hooks, rng, step, deps[step], undoable=rng.random() < 0.85)
        return saga
    # Every step is an ancestor or a descendant of the pivot (the definition rule).
    cut = rng.randrange(0, n - 1)
    before, pivot_name, after = names[:cut], names[cut], names[cut + 1 :]
    deps = random_deps(rng, before, 0.5)
    for step in before:
        _add_step(saga, hooks, rng, step, deps[step], undoable=rng.random() < 0.85)
    _add_step(saga, hooks, rng, pivot_name, before, pivot=True, undoable=rng.random() < 0.5)
    later = random_deps(rng, after, 0.5)
    for step in after:
        _add_step(saga, hooks, rng, step, later[step] or [pivot_name], undoable=rng.random() < 0.5)
    return saga


def draw_tcc(rng: random.Random, name: str, hooks: Hooks) -> Saga:
    tcc = Tcc(
        name,
        confirm_retry=rng.choice([0, 1, 3]),
        cancel_retry=rng.choice([0, 1, 3]),
        cancel_backoff=rng.choice([0.05, 0.5]),
        confirm_backoff=rng.choice([0.05, 0.5]),
    )
    parts = [f"p{i}" for i in range(rng.randint(1, 3))]
    deps = random_deps(rng, parts, 0.3)
    for part in parts:
        tcc.participant(
            part,
            try_=lambda ctx: do(hooks, ctx),
            confirm=(lambda ctx, held: do(hooks, ctx)) if rng.random() < 0.8 else None,
            cancel=lambda ctx, result: undo(hooks, ctx, result),
            depends_on=deps[part],
            retry=rng.choice([0, 1]),
        )
    return tcc.saga


def plan_for(rng: random.Random, saga: Saga, fail_rate: float) -> dict[str, Any]:
    """Input of one saga: per step, how it fails and how its compensation behaves."""
    plan: dict[str, Any] = {}
    for step in saga.steps:
        roll = rng.random()
        entry: dict[str, Any] = {"fail": "ok"}
        if roll < fail_rate * 0.4:
            entry = {"fail": "transient", "times": rng.randint(1, 3)}
        elif roll < fail_rate * 0.8:
            entry = {"fail": "permanent"}
        elif roll < fail_rate:
            entry = {"fail": "fatal"}
        undo_roll = rng.random()
        if undo_roll < 0.12:
            entry |= {"undo": "transient", "undo_times": rng.randint(1, 3)}
        elif undo_roll < 0.17:
            entry |= {"undo": "permanent"}
        elif undo_roll < 0.27:
            entry |= {"undo": "slow", "slow": rng.choice([0.5, 0.5, 4.0])}
        plan[step] = entry
    when = {step: rng.random() < 0.6 for step in saga.steps}
    return {"plan": plan, "when": when}


def draw(rng: random.Random, name: str, hooks: Hooks, *, nested: bool = True) -> Drawn:
    kind = rng.choice(["dag", "dag", "pivot", "tcc"] + (["sub"] if nested else []))
    fail_rate = rng.choice([0.0, 0.1, 0.25, 0.5])
    children: list[Saga] = []
    child_input: dict[str, Any] | None = None
    effectful: dict[str, set[str]] = {}
    if kind == "tcc":
        saga = draw_tcc(rng, name, hooks)
    else:
        saga = draw_dag(rng, name, hooks, rng.randint(1, 8), pivot=kind == "pivot")
    if kind == "sub":
        child = draw(rng, f"{name}c", hooks, nested=False)
        children.append(child.saga)
        child_input = child.input
        effectful |= child.effectful
        host = rng.choice(list(saga.steps))
        # Rebuild with the chosen step as a sub-saga step, same dependencies.
        rebuilt = Saga(name, failure_policy=saga.failure_policy, deadline=saga.deadline)
        rebuilt.compensation_retry = saga.compensation_retry
        rebuilt.compensation_backoff = saga.compensation_backoff
        for step in saga.steps.values():
            if step.name == host:
                rebuilt.sub_saga(
                    step.name,
                    child.saga.name,
                    input=lambda ctx: ctx.input["child"],
                    depends_on=step.depends_on,
                )
            else:
                rebuilt.steps[step.name] = step
        saga = rebuilt
    saga.validate()
    effectful[name] = {
        s.name for s in saga.steps.values() if s.sub_saga is None and s.name != "decide"
    }
    data = plan_for(rng, saga, fail_rate)
    if child_input is not None:
        data["child"] = child_input
    return Drawn(saga, data, children, effectful, kind)
