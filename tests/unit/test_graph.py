"""Step graphs as the CLI and the dashboard draw them: ASCII, Mermaid, DOT."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from celery.canvas import Signature, _chain, chord, group

from sagaq import Saga, StepContext
from sagaq.compiler import compile_compensation
from sagaq.graph import mermaid_id, plan, render, to_ascii, to_dot, to_mermaid

app = Celery("graph-tests", set_as_current=False)


def noop(ctx: StepContext) -> None:
    return None


def undo(ctx: StepContext, result: Any) -> None:
    return None


def make(name: str, edges: dict[str, list[str]], undoable: set[str] | None = None) -> Saga:
    saga = Saga(name)
    for step, deps in edges.items():
        added = saga.step(name=step, depends_on=deps)(noop)
        if undoable is None or step in undoable:
            added.compensate(undo)
    saga.validate()
    return saga


DIAMOND = make("diamond", {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})


def test_forward_plan_puts_parallel_steps_in_one_layer() -> None:
    p = plan(DIAMOND)

    assert p.layers == (("a",), ("b", "c"), ("d",))
    assert set(p.edges) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}


def test_ascii_shows_each_layer_with_arrows_to_the_next_steps() -> None:
    text = to_ascii(DIAMOND)

    assert text.splitlines() == [
        "diamond: steps",
        " 1  a",
        "      --> b",
        "      --> c",
        " 2  b",
        "      --> d",
        "    c",
        "      --> d",
        " 3  d",
    ]


def test_compensation_plan_undoes_dependents_first_and_skips_steps_without_undo() -> None:
    # Given a line a -> b -> c -> d where c (say, an e-mail) cannot be undone
    line = make("line", {"a": [], "b": ["a"], "c": ["b"], "d": ["c"]}, undoable={"a", "b", "d"})

    # When its compensation plan is drawn
    p = plan(line, compensation=True)

    # Then d is undone, then b (c has nothing to undo), then a
    assert p.layers == (("d",), ("b",), ("a",))
    assert p.edges == (("d", "b"), ("b", "a"))
    assert "undo d\n      --> undo b" in to_ascii(line, compensation=True)


def test_compensation_plan_undoes_parallel_branches_together() -> None:
    p = plan(DIAMOND, compensation=True)

    assert p.layers == (("d",), ("c", "b"), ("a",))
    assert set(p.edges) == {("d", "b"), ("d", "c"), ("b", "a"), ("c", "a")}


def test_steps_after_the_pivot_are_not_in_the_compensation_plan() -> None:
    saga = Saga("shipping")
    first = saga.step(name="reserve")(noop)
    first.compensate(undo)
    pay = saga.step(name="pay", depends_on=[first], pivot=True)(noop)
    saga.step(name="ship", depends_on=[pay])(noop).compensate(undo)
    saga.validate()

    assert plan(saga, compensation=True).layers == (("reserve",),)


def test_a_saga_with_nothing_to_undo_says_so() -> None:
    saga = make("emails", {"send": []}, undoable=set())

    assert "no step has a compensation" in to_ascii(saga, compensation=True)


def test_mermaid_has_a_node_per_step_an_edge_per_dependency_and_status_classes() -> None:
    statuses = {"a": "COMPLETED", "b": "COMPLETED", "c": "FAILED"}

    text = to_mermaid(DIAMOND, statuses=statuses)

    lines = text.splitlines()
    assert "flowchart TD" in lines
    assert '    s_a["a<br/>COMPLETED"]' in lines
    assert '    s_d["d"]' in lines
    assert "    s_b --> s_d" in lines
    assert "    class s_a,s_b completed" in lines
    assert "    class s_c failed" in lines
    assert any(line.startswith("    classDef failed fill:") for line in lines)


def test_mermaid_node_ids_do_not_collide_with_mermaid_keywords() -> None:
    saga = make("keywords", {"start": [], "end": ["start"]})

    text = to_mermaid(saga)

    assert f"    {mermaid_id('start')} --> {mermaid_id('end')}" in text.splitlines()
    assert "    end -->" not in text


def test_dot_draws_the_reverse_plan_with_coloured_nodes() -> None:
    text = to_dot(DIAMOND, compensation=True, statuses={"a": "COMPENSATED"})

    assert text.startswith('digraph "diamond compensation" {')
    assert '    "d" -> "b";' in text
    assert '    "a" [label="undo a\\nCOMPENSATED", fillcolor="#f3e8ff", color="#9333ea"];' in text
    assert text.rstrip().endswith("}")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown graph format 'png'"):
        render(DIAMOND, "png")


def _drawn_order(saga: Saga) -> set[tuple[str, str]]:
    """(x, y) when the compensation drawing undoes x before y (transitively)."""
    p = plan(saga, compensation=True)
    after: dict[str, set[str]] = {n: set() for layer in p.layers for n in layer}
    for node in reversed([n for layer in p.layers for n in layer]):
        for succ in p.successors(node):
            after[node] |= {succ, *after[succ]}
    return {(x, y) for x, ys in after.items() for y in ys}


def _canvas_order(sig: Signature) -> tuple[list[str], set[tuple[str, str]]]:
    """The steps a compensation canvas undoes, and (x, y) when y starts after x finished."""
    if isinstance(sig, chord):
        head_steps, head_order = _canvas_order(group(sig.tasks))
        body_steps, body_order = _canvas_order(sig.body)
        cross = {(x, y) for x in head_steps for y in body_steps}
        return head_steps + body_steps, head_order | body_order | cross
    if isinstance(sig, group | _chain):
        steps: list[str] = []
        order: set[tuple[str, str]] = set()
        for part in sig.tasks:
            part_steps, part_order = _canvas_order(part)
            if isinstance(sig, _chain):
                order |= {(x, y) for x in steps for y in part_steps}
            steps += part_steps
            order |= part_order
        return steps, order
    if sig.task.startswith(("sagaq.", "celery.")):  # finalizers and barriers undo nothing
        return [], set()
    return [sig.task.split(".")[1]], set()


@pytest.mark.parametrize(
    "saga",
    [
        DIAMOND,
        make("gap", {"a": [], "b": ["a"], "c": ["b"], "d": ["c"]}, undoable={"a", "b", "d"}),
        make("nsp", {"a": [], "b": [], "c": ["a", "b"], "d": ["b"]}),
        make("fan", {"a": [], "b": ["a"], "c": ["a"], "d": ["a"], "e": ["b", "c"]}),
    ],
    ids=lambda saga: saga.name,
)
def test_the_compensation_drawing_is_what_the_compiled_rollback_runs(saga: Saga) -> None:
    # When the whole saga is rolled back, the compiler undoes the plan's undoable steps
    canvas = compile_compensation(saga, "sid", saga.plan.undoable, app)
    undone, runs_before = _canvas_order(canvas)

    # Then the drawing shows exactly those steps, in exactly that order
    drawn = plan(saga, compensation=True)
    assert sorted(undone) == sorted(n for layer in drawn.layers for n in layer)
    assert _drawn_order(saga) == runs_before
    assert saga.plan.compensation is not None


def test_the_pivot_saga_draws_only_what_precedes_the_pivot() -> None:
    saga = Saga("pivot_draw")
    a = saga.step(name="a")(noop)
    a.compensate(undo)
    b = saga.step(name="b", depends_on=[a])(noop)
    b.compensate(undo)
    pay = saga.step(name="pay", depends_on=[b], pivot=True)(noop)
    pay.compensate(undo)  # allowed, never part of a rollback
    saga.step(name="ship", depends_on=[pay])(noop).compensate(undo)

    assert plan(saga, compensation=True).layers == (("b",), ("a",))
    assert (
        _drawn_order(saga)
        == _canvas_order(compile_compensation(saga, "sid", saga.plan.undoable, app))[1]
    )
