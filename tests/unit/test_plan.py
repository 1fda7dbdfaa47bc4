"""The frozen plan: what registration computes once and the compiler, runtime and drawings read."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from sagaq import DefinitionError, Saga, StepContext
from sagaq.plan import Leaf, Par, SagaPlan, Seq, Shape, edges, leaves, plan_saga


def noop(ctx: StepContext) -> None:
    return None


def undo(ctx: StepContext, result: Any) -> None:
    return None


def make(name: str, edges: dict[str, list[str]], *, undoable: set[str] | None = None) -> Saga:
    saga = Saga(name, queue="sagas")
    for step, deps in edges.items():
        added = saga.step(name=step, depends_on=deps)(noop)
        if undoable is None or step in undoable:
            added.compensate(undo)
    return saga


def test_plan_of_a_line() -> None:
    plan = make("line", {"a": [], "b": ["a"], "c": ["b"]}).freeze()

    assert plan.name == "line" and plan.queue == "sagas"
    assert plan.order == ("a", "b", "c")
    assert dict(plan.deps) == {"a": (), "b": ("a",), "c": ("b",)}
    assert dict(plan.ancestors) == {"a": set(), "b": {"a"}, "c": {"a", "b"}}
    assert dict(plan.descendants) == {"a": {"b", "c"}, "b": {"c"}, "c": set()}
    assert plan.pivot is None and plan.after_pivot == frozenset()
    assert plan.undoable == {"a", "b", "c"}
    assert plan.forward == Seq((Leaf("a"), Leaf("b"), Leaf("c")))
    assert plan.compensation == Seq((Leaf("c"), Leaf("b"), Leaf("a")))


def test_plan_of_a_diamond() -> None:
    plan = make("diamond", {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}).freeze()

    assert plan.order == ("a", "b", "c", "d")
    assert plan.ancestors["d"] == {"a", "b", "c"}
    assert plan.descendants["a"] == {"b", "c", "d"}
    assert plan.forward == Seq((Leaf("a"), Par((Leaf("b"), Leaf("c"))), Leaf("d")))
    assert plan.compensation == Seq((Leaf("d"), Par((Leaf("c"), Leaf("b"))), Leaf("a")))


def test_plan_of_a_dag_that_is_not_series_parallel_is_layered() -> None:
    # a -> c, b -> c, b -> d: no cut separates {a, b} from {c, d} exactly
    plan = make("nsp", {"a": [], "b": [], "c": ["a", "b"], "d": ["b"]}).freeze()

    assert plan.order == ("a", "b", "c", "d")
    assert plan.descendants["b"] == {"c", "d"}
    assert plan.forward == Seq((Par((Leaf("a"), Leaf("b"))), Par((Leaf("c"), Leaf("d")))))
    assert plan.compensation == Seq((Par((Leaf("d"), Leaf("c"))), Par((Leaf("b"), Leaf("a")))))


def test_topological_order_keeps_definition_order_on_ties() -> None:
    plan = make("ties", {"late": ["first"], "first": [], "other": []}).freeze()

    assert plan.order == ("first", "late", "other")


def test_plan_of_a_pivot_saga() -> None:
    # Given reserve -> pay (pivot) -> ship -> notify, every step with a compensation
    saga = make("shop", {"reserve": [], "pay": ["reserve"], "ship": ["pay"], "notify": ["ship"]})
    saga.steps["pay"].pivot = True

    plan = saga.freeze()

    # Then only what lies before the pivot is undone; the rest is retried forward
    assert plan.pivot == "pay"
    assert plan.after_pivot == {"ship", "notify"}
    assert plan.undoable == {"reserve"}
    assert plan.compensation == Leaf("reserve")


def test_queues_and_sub_sagas_are_in_the_plan() -> None:
    saga = Saga("parent", queue="orders")
    saga.step(name="a", queue="payments")(noop)
    saga.sub_saga("child", "kid", depends_on=["a"])

    plan = saga.freeze()

    assert dict(plan.queues) == {"a": "payments", "child": "orders"}
    assert dict(plan.sub_sagas) == {"child": "kid"}


def test_compensation_shape_covers_exactly_the_given_steps() -> None:
    # Given a diamond where b (a notification, say) has nothing to undo
    plan = make(
        "partial", {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}, undoable={"a", "c", "d"}
    ).freeze()

    # b is still running when the saga compensates: its undo task is included, c's is not
    # waited for by b, and a waits for both
    assert plan.compensation_shape(["a", "b"]) == Seq((Leaf("b"), Leaf("a")))
    assert plan.compensation_shape(["b", "c", "a"]) == Seq((Par((Leaf("c"), Leaf("b"))), Leaf("a")))
    assert plan.compensation_shape(["c"]) == Leaf("c")
    assert plan.compensation_shape([]) is None
    # the whole-saga compensation leaves out b, which has nothing to undo
    assert plan.compensation == Seq((Leaf("d"), Leaf("c"), Leaf("a")))


def test_a_step_between_two_given_steps_still_orders_them() -> None:
    # a -> b -> c: undoing only {a, c} must still undo c before a
    plan = make("gap", {"a": [], "b": ["a"], "c": ["b"]}).freeze()

    assert plan.compensation_shape(["a", "c"]) == Seq((Leaf("c"), Leaf("a")))
    assert plan.forward_shape(["a", "c"]) == Seq((Leaf("a"), Leaf("c")))


def test_forward_shape_of_the_remaining_steps() -> None:
    plan = make("rest", {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}).freeze()

    assert plan.forward_shape() == plan.forward
    assert plan.forward_shape(["c", "d"]) == Seq((Leaf("c"), Leaf("d")))
    assert plan.forward_shape(["b", "c"]) == Par((Leaf("b"), Leaf("c")))


def test_freeze_builds_the_plan_once_and_seals_the_saga() -> None:
    saga = make("sealed", {"a": []})

    plan = saga.freeze()

    assert saga.plan is plan and saga.freeze() is plan
    with pytest.raises(DefinitionError, match="saga 'sealed' is registered; define all steps"):
        saga.step(name="b")(noop)
    with pytest.raises(DefinitionError, match="is registered"):
        saga.steps["a"].compensate(undo)
    with pytest.raises(DefinitionError, match="is registered"):
        saga.compensation("a")(undo)
    assert list(saga.steps) == ["a"]


def test_plan_saga_builds_a_plan_without_freezing() -> None:
    saga = make("loose", {"a": []})

    assert isinstance(plan_saga(saga), SagaPlan)
    saga.step(name="b", depends_on=["a"])(noop)  # still open
    assert saga.plan.order == ("a", "b")


def test_a_thousand_step_line_plans_without_recursion_in_well_under_a_second() -> None:
    saga = make("long", {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(1000)})

    started = time.perf_counter()
    plan = saga.freeze()
    elapsed = time.perf_counter() - started

    assert plan.order[0] == "s0" and plan.order[-1] == "s999"
    assert len(plan.ancestors["s999"]) == 999 and plan.descendants["s0"] == set(plan.order[1:])
    assert isinstance(plan.forward, Seq) and len(plan.forward.parts) == 1000
    assert elapsed < 1.0  # ~8 ms measured; the number itself belongs in a benchmark


def _precedence(shape: Shape) -> set[tuple[str, str]]:
    """(x, y) when y starts only after x finished, in `shape`."""
    after: dict[str, set[str]] = {}
    pairs = edges(shape)
    for a, b in pairs:
        after.setdefault(a, set()).add(b)
    closed: set[tuple[str, str]] = set()
    for start in list(after):
        stack, seen = list(after[start]), set()
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(after.get(node, ()))
        closed |= {(start, node) for node in seen}
    return closed


@pytest.mark.parametrize("seed", range(200))
def test_random_dags_plan_shapes_that_respect_every_dependency(seed: int) -> None:
    # Given a random DAG of up to 9 steps, defined in a random order
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(rng.randint(1, 9))]
    density = rng.random()
    deps = {n: [m for m in names[:i] if rng.random() < density] for i, n in enumerate(names)}
    saga = Saga(f"random{seed}")
    for name in rng.sample(names, len(names)):
        saga.step(name=name, depends_on=deps[name])(noop)
    plan = saga.freeze()
    subset = [n for n in names if rng.random() < 0.7] or names[:1]

    # Then every shape holds each chosen step once and runs it after what it depends on,
    # and undoes it before what it depends on
    forward = plan.forward_shape(subset)
    undo = plan.compensation_shape(subset)
    assert undo is not None
    assert sorted(leaves(forward)) == sorted(leaves(undo)) == sorted(subset)
    needed = {(a, s) for s in subset for a in plan.ancestors[s] if a in subset}
    assert needed <= _precedence(forward)
    assert {(s, a) for a, s in needed} <= _precedence(undo)
    assert all(plan.order.index(d) < plan.order.index(n) for n in names for d in deps[n])
