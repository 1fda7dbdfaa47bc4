"""The canvas the compiler emits, for the shapes the design names."""

from __future__ import annotations

import json
import time
from typing import Any

from celery import Celery
from celery.canvas import Signature, _chain, chord, group
from kombu.utils import json as kombu_json

from sagaq import Saga, StepContext
from sagaq.compiler import (
    Leaf,
    Par,
    Seq,
    compensation_shape,
    compile_compensation,
    compile_saga,
    forward_shape,
)
from sagaq.definition.saga import MAX_STEPS

app = Celery("compiler-tests", set_as_current=False)


def noop(ctx: StepContext) -> None:
    return None


def undo(ctx: StepContext, result: Any) -> None:
    return None


def make(name: str, edges: dict[str, list[str]], queue: str = "default") -> Saga:
    saga = Saga(name, queue=queue)
    for step, deps in edges.items():
        saga.step(name=step, depends_on=deps)(noop).compensate(undo)
    return saga


LINE = make("line", {f"s{i}": [f"s{i - 1}"] if i > 1 else [] for i in range(1, 6)})
DIAMOND = make("diamond", {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})
FAN_OUT = make(
    "fan",
    {"start": [], **{f"p{i}": ["start"] for i in range(8)}, "join": [f"p{i}" for i in range(8)]},
)
NOT_SP = make("nsp", {"a": [], "b": [], "c": ["a", "b"], "d": ["b"]})


def describe(sig: Signature) -> Any:
    """Canvas as nested tuples: ("chain", [...]), ("group", [...]), ("chord", [...], body)."""
    if isinstance(sig, chord):
        return ("chord", [describe(t) for t in sig.tasks], describe(sig.body))
    if isinstance(sig, group):
        return ("group", [describe(t) for t in sig.tasks])
    if isinstance(sig, _chain):
        return ("chain", [describe(t) for t in sig.tasks])
    return sig.task + ("+final" if sig.kwargs.get("final") else "")


def test_line_compiles_to_one_chain_of_five_steps_the_last_one_finishing_the_saga() -> None:
    canvas = compile_saga(LINE, "sid", app)

    assert describe(canvas) == (
        "chain",
        ["line.s1", "line.s2", "line.s3", "line.s4", "line.s5+final"],
    )


def test_every_step_signature_is_immutable_routed_and_has_an_immutable_errback() -> None:
    canvas = compile_saga(make("routed", {"x": [], "y": ["x"]}, queue="payments"), "sid-1", app)

    for sig in canvas.tasks:
        assert sig.immutable
        assert sig.kwargs["saga_id"] == "sid-1"
        assert sig.options["queue"] == "payments"
        [errback] = [Signature(e) for e in sig.options["link_error"]]
        assert errback.task == "sagaq.step_failed"
        assert errback.immutable  # a mutable errback can be swallowed by an EncodeError
        assert errback.kwargs == {"saga_id": "sid-1", "saga": "routed", "step": sig.task[7:]}


def test_diamond_compiles_to_a_chord_whose_body_joins() -> None:
    canvas = compile_saga(DIAMOND, "sid", app)

    assert describe(canvas) == (
        "chain",
        [
            "diamond.a",
            ("chord", ["diamond.b", "diamond.c"], "diamond.d+final"),
        ],
    )


def test_fan_out_of_eight_compiles_to_a_chord_of_eight() -> None:
    canvas = compile_saga(FAN_OUT, "sid", app)

    start, fan = describe(canvas)[1]
    assert start == "fan.start"
    assert fan == (
        "chord",
        [f"fan.p{i}" for i in range(8)],
        "fan.join+final",
    )


def test_dag_that_is_not_series_parallel_is_layered() -> None:
    assert forward_shape(NOT_SP) == Seq((Par((Leaf("a"), Leaf("b"))), Par((Leaf("c"), Leaf("d")))))
    # Two groups in a row: a no-op barrier joins the first, instead of a chord nested in the
    # body of another (each level multiplied the message size ~16-fold)
    assert describe(compile_saga(NOT_SP, "sid", app)) == (
        "chain",
        [
            ("chord", ["nsp.a", "nsp.b"], "celery.accumulate"),
            ("chord", ["nsp.c", "nsp.d"], "sagaq.saga_done"),
        ],
    )


def test_a_deep_layered_dag_stays_a_flat_linear_message() -> None:
    # Given a "ladder" (a_i -> a_i+1, b_i -> b_i+1, a_i -> b_i+1): not series-parallel, so
    # one layer per rung; nested chords made 9 rungs a 187 MB message
    edges: dict[str, list[str]] = {}
    for i in range(100):
        edges[f"a{i}"] = [f"a{i - 1}"] if i else []
        edges[f"b{i}"] = [f"b{i - 1}", f"a{i - 1}"] if i else []
    backed = Celery("compiler-ladder", backend="cache+memory://", set_as_current=False)

    canvas = compile_saga(make("ladder", edges), "sid", backed)

    assert len(canvas.tasks) == 100  # one chord per rung, in one chain
    canvas.freeze()
    assert len(kombu_json.dumps(canvas)) < 500_000  # ~230 KB


def test_independent_branches_of_different_lengths_stay_independent() -> None:
    saga = make("branches", {"a": [], "b": ["a"], "x": [], "j": ["b", "x"]})

    assert forward_shape(saga) == Seq((Par((Seq((Leaf("a"), Leaf("b"))), Leaf("x"))), Leaf("j")))


def test_compensation_runs_in_reverse_dependency_order() -> None:
    assert compensation_shape(LINE, ["s1", "s2", "s3"]) == Seq((Leaf("s3"), Leaf("s2"), Leaf("s1")))
    assert compensation_shape(DIAMOND, ["a", "b", "c"]) == Seq(
        (Par((Leaf("c"), Leaf("b"))), Leaf("a"))
    )
    assert compensation_shape(DIAMOND, []) is None


def test_compensation_canvas_has_a_task_for_exactly_the_given_steps() -> None:
    # Given first -> second, where second has no compensation function (it may still be
    # running: the runtime's task for it waits or records it, and first waits for that)
    saga = Saga("mixed")
    first = saga.step(name="first")(noop)
    first.compensate(undo)
    saga.step(name="second", depends_on=[first])(noop)

    canvas = compile_compensation(saga, "sid", ["first", "second"], app)

    assert describe(canvas) == (
        "chain",
        ["mixed.second.compensate", "mixed.first.compensate+final"],
    )


def test_compensation_of_a_subset_keeps_reverse_order_and_parallel_branches() -> None:
    canvas = compile_compensation(DIAMOND, "sid", ["a", "b", "c"], app)

    assert describe(canvas) == (
        "chord",
        ["diamond.c.compensate", "diamond.b.compensate"],
        "diamond.a.compensate+final",
    )
    assert all(t.options["queue"] == "default" for t in canvas.tasks)


def test_compensation_tasks_carry_no_errback() -> None:
    canvas = compile_compensation(LINE, "sid", ["s1", "s2"], app)

    assert all("link_error" not in sig.options for sig in canvas.tasks)


def test_a_chain_of_joins_is_one_flat_chain_of_chords_with_single_task_bodies() -> None:
    # Given two diamonds in a row: a -> (b, c) -> d -> (e, f) -> g
    saga = make(
        "twice",
        {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d"], "f": ["d"], "g": ["e", "f"]},
    )

    # Then each chord's body is the join only, and the rest follows in the same chain: a
    # body holding the rest of the saga would be copied into every header task, per join
    assert describe(compile_saga(saga, "sid", app)) == (
        "chain",
        [
            "twice.a",
            ("chord", ["twice.b", "twice.c"], "twice.d"),
            ("chord", ["twice.e", "twice.f"], "twice.g+final"),
        ],
    )


def test_a_thousand_step_line_compiles_and_survives_celery_freeze_and_json() -> None:
    # Given a 1,000-step line (MAX_STEPS) and an app with a result backend, as chords need
    saga = make("long", {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(MAX_STEPS)})
    backed = Celery("compiler-long", backend="cache+memory://", set_as_current=False)

    started = time.perf_counter()
    saga.freeze()
    canvas = compile_saga(saga, "sid", backed)
    elapsed = time.perf_counter() - started

    # Then it is one flat chain that Celery can freeze and serialize without RecursionError
    assert len(canvas.tasks) == MAX_STEPS
    assert canvas.tasks[-1].kwargs == {"saga_id": "sid", "final": True}
    canvas.freeze()
    message = json.loads(kombu_json.dumps(canvas))
    assert len(message["kwargs"]["tasks"]) == MAX_STEPS
    undo_all = compile_compensation(saga, "sid", saga.plan.order, backed)
    undo_all.freeze()
    assert [t["task"] for t in json.loads(kombu_json.dumps(undo_all))["kwargs"]["tasks"]][:2] == [
        "long.s999.compensate",
        "long.s998.compensate",
    ]
    assert elapsed < 1.0  # ~15 ms measured for plan + compile; see the report for numbers


def test_a_chain_of_250_diamonds_survives_celery_freeze_and_json() -> None:
    edges: dict[str, list[str]] = {}
    join: list[str] = []
    for i in range(250):
        edges |= {
            f"a{i}": join,
            f"b{i}": [f"a{i}"],
            f"c{i}": [f"a{i}"],
            f"d{i}": [f"b{i}", f"c{i}"],
        }
        join = [f"d{i}"]
    backed = Celery("compiler-diamonds", backend="cache+memory://", set_as_current=False)

    canvas = compile_saga(make("diamonds", edges), "sid", backed)

    canvas.freeze()
    assert len(kombu_json.dumps(canvas)) < 2_000_000  # linear: ~0.9 MB for 1,000 steps


def test_a_canvas_ending_in_parallel_steps_gets_a_finalizer_task() -> None:
    saga = make("tails", {"a": [], "b": ["a"], "c": ["a"]})

    assert describe(compile_saga(saga, "sid", app)) == (
        "chain",
        ["tails.a", ("chord", ["tails.b", "tails.c"], "sagaq.saga_done")],
    )
