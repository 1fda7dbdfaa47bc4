"""Class-style definitions produce the same Saga as the decorator API, validated when the class
is decorated, and run like any saga on the embedded default."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from sagaq import DefinitionError, NonRetryableError, Saga, SagaQ, SagaStatus, StepContext
from sagaq.definition.classes import compensation_step, saga, saga_of, saga_step
from sagaq.embedded import embedded_app, in_process_worker


class OrderIn(BaseModel):
    order_id: str
    fail_at: str | None = None


CALLS: list[tuple[str, str, str]] = []  # (what, saga_id, step), in the order they happened


@saga("class_order", input=OrderIn, queue="orders", compensation_retry=2)
class ClassOrder:
    instances = 0

    def __init__(self) -> None:
        type(self).instances += 1

    @saga_step("reserve", retry=2, timeout_ms=5000, queue="inventory")
    def reserve(self, ctx: StepContext) -> dict[str, Any]:
        return self._act(ctx)

    @compensation_step("reserve")
    def release(self, ctx: StepContext, result: dict[str, Any]) -> None:
        assert result == {"step": ctx.step}
        CALLS.append(("undo", ctx.saga_id, ctx.step))

    @saga_step("charge", depends_on=["reserve"], backoff_ms=100)
    def charge(self, ctx: StepContext) -> dict[str, Any]:
        return self._act(ctx)

    @compensation_step("charge")
    def refund(self, ctx: StepContext, result: dict[str, Any]) -> None:
        assert result == {"step": ctx.step}
        CALLS.append(("undo", ctx.saga_id, ctx.step))

    @saga_step(depends_on=[charge], pivot=True)  # id defaults to the method name
    def ship(self, ctx: StepContext) -> dict[str, Any]:
        return self._act(ctx)

    def _act(self, ctx: StepContext) -> dict[str, Any]:
        CALLS.append(("do", ctx.saga_id, ctx.step))
        if ctx.input.fail_at == ctx.step:
            raise NonRetryableError(f"{ctx.step} failed")
        return {"step": ctx.step}


def decorator_api_equivalent() -> Saga:
    order = Saga("class_order", input=OrderIn, queue="orders", compensation_retry=2)

    @order.step(retry=2, timeout=5.0, queue="inventory")
    def reserve(ctx: StepContext) -> None: ...

    @reserve.compensate
    def release(ctx: StepContext, result: Any) -> None: ...

    @order.step(depends_on=[reserve], backoff=0.1)
    def charge(ctx: StepContext) -> None: ...

    @charge.compensate
    def refund(ctx: StepContext, result: Any) -> None: ...

    @order.step(depends_on=[charge], pivot=True)
    def ship(ctx: StepContext) -> None: ...

    return order


def shape(definition: Saga) -> dict[str, Any]:
    """Everything of a definition except the function objects themselves."""
    return {
        "name": definition.name,
        "input": definition.input_model,
        "queue": definition.queue,
        "compensation_retry": definition.compensation_retry,
        "order": definition.order(),
        "steps": {
            name: (
                s.depends_on,
                s.retry,
                s.backoff,
                s.timeout,
                s.queue,
                s.pivot,
                s.compensation is not None,
                s.fn.__name__,
            )
            for name, s in definition.steps.items()
        },
    }


def test_class_style_gives_the_same_saga_as_the_decorator_api() -> None:
    produced = saga_of(ClassOrder)

    assert isinstance(produced, Saga)
    assert produced is ClassOrder.__saga__  # type: ignore[attr-defined]
    assert shape(produced) == shape(decorator_api_equivalent())
    assert produced.steps["reserve"].timeout == 5.0  # timeout_ms=5000


def test_compensation_for_an_unknown_step_is_refused_when_the_class_is_decorated() -> None:
    with pytest.raises(DefinitionError, match=r"Bad.undo compensates step 'nope', which does"):

        @saga("bad")
        class Bad:
            @saga_step("a")
            def a(self, ctx: StepContext) -> None: ...

            @compensation_step("nope")
            def undo(self, ctx: StepContext, result: Any) -> None: ...


def test_a_cycle_is_refused_when_the_class_is_decorated() -> None:
    with pytest.raises(DefinitionError, match=r"dependency cycle: a -> b -> a"):

        @saga("cyclic")
        class Cyclic:
            @saga_step("a", depends_on=["b"])
            def a(self, ctx: StepContext) -> None: ...

            @saga_step("b", depends_on=["a"])
            def b(self, ctx: StepContext) -> None: ...


def test_two_methods_with_the_same_step_id_are_refused_and_named() -> None:
    with pytest.raises(DefinitionError, match=r"methods 'first' and 'second' both define step 'a'"):

        @saga("dup")
        class Dup:
            @saga_step("a")
            def first(self, ctx: StepContext) -> None: ...

            @saga_step("a")
            def second(self, ctx: StepContext) -> None: ...


def test_unknown_dependency_and_constructor_arguments_are_refused() -> None:
    with pytest.raises(DefinitionError, match=r"step 'a' depends on unknown step 'ghost'"):

        @saga("unknown_dep")
        class UnknownDep:
            @saga_step("a", depends_on=["ghost"])
            def a(self, ctx: StepContext) -> None: ...

    with pytest.raises(DefinitionError, match=r"NeedsArgs must be constructible with no"):

        @saga("needs_args")
        class NeedsArgs:
            def __init__(self, client: object) -> None: ...

            @saga_step("a")
            def a(self, ctx: StepContext) -> None: ...


def test_the_class_is_not_instantiated_when_decorated() -> None:
    created: list[object] = []

    @saga("lazy")
    class Lazy:
        def __init__(self) -> None:
            created.append(self)

        @saga_step("a")
        def a(self, ctx: StepContext) -> str:
            return "a"

    step = saga_of(Lazy).steps["a"]
    assert created == []
    ctx = StepContext(saga_id="s-1", saga="lazy", step="a", input={}, results={})
    assert step.fn(ctx) == step.fn(ctx) == "a"
    assert len(created) == 1


def test_saga_of_an_undecorated_class_says_so() -> None:
    class Plain: ...

    with pytest.raises(DefinitionError, match=r"Plain is not decorated with @saga"):
        saga_of(Plain)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaQ]:
    app = embedded_app("class-style")
    running = SagaQ(app, store=f"sqlite:///{tmp_path_factory.mktemp('classes')}/x.db")
    running.register(saga_of(ClassOrder))
    with in_process_worker(app, running.queues()):
        yield running
    running.store.dispose()


def calls(saga_id: str) -> list[str]:
    return [f"{what}:{step}" for what, sid, step in CALLS if sid == saga_id]


def test_a_class_style_saga_runs_and_compensates_on_a_real_worker(engine: SagaQ) -> None:
    done = engine.start("class_order", {"order_id": "o-1"}).wait(30)
    failed = engine.start("class_order", {"order_id": "o-2", "fail_at": "ship"}).wait(30)

    assert done.status == SagaStatus.COMPLETED
    assert done.results == {s: {"step": s} for s in ("reserve", "charge", "ship")}
    assert failed.status == SagaStatus.COMPENSATED
    assert failed.compensated_steps == ("charge", "reserve")
    assert calls(failed.id) == [
        "do:reserve",
        "do:charge",
        "do:ship",
        "undo:charge",
        "undo:reserve",
    ]
    assert ClassOrder.instances == 1
