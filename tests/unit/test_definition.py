"""Definition errors surface when the saga is defined or registered, never at run time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from pydantic import BaseModel

import sagaq
from sagaq import DefinitionError, InvalidInputError, Saga, SagaQ, StepContext
from sagaq.definition.saga import MAX_STEPS


def noop(ctx: StepContext) -> None:
    return None


def test_duplicate_step_name_is_refused_at_definition() -> None:
    saga = Saga("dup")
    saga.step(name="a")(noop)

    with pytest.raises(DefinitionError, match="duplicate step 'a'"):
        saga.step(name="a")(noop)


def test_unknown_dependency_is_refused_at_validation() -> None:
    saga = Saga("unknown")
    saga.step(name="a", depends_on=["ghost"])(noop)

    with pytest.raises(DefinitionError, match="step 'a' depends on unknown step 'ghost'"):
        saga.validate()


def test_cycle_is_refused_and_named() -> None:
    saga = Saga("cyclic")
    saga.step(name="a", depends_on=["c"])(noop)
    saga.step(name="b", depends_on=["a"])(noop)
    saga.step(name="c", depends_on=["b"])(noop)

    with pytest.raises(DefinitionError, match=r"dependency cycle: a -> c -> b -> a"):
        saga.validate()


def test_compensation_for_a_missing_step_is_refused_at_registration(tmp_path: Path) -> None:
    saga = Saga("orphan")
    saga.step(name="a")(noop)

    @saga.compensation("nope")
    def undo_nope(ctx: StepContext, result: Any) -> None:
        return None

    with pytest.raises(DefinitionError, match="compensation 'undo_nope' is for step 'nope'"):
        engine = SagaQ(Celery("defs", set_as_current=False), store=f"sqlite:///{tmp_path}/s.db")
        engine.register(saga)


def test_dependency_on_a_step_of_another_saga_is_refused() -> None:
    other = Saga("other")
    foreign = other.step(name="x")(noop)

    with pytest.raises(DefinitionError, match="of another saga"):
        Saga("mine").step(name="y", depends_on=[foreign])(noop)


def test_second_compensation_for_a_step_is_refused() -> None:
    step = Saga("twice").step(name="a")(noop)
    step.compensate(lambda ctx, result: None)

    with pytest.raises(DefinitionError, match="already has a compensation"):
        step.compensate(lambda ctx, result: None)


def test_bad_names_and_options_are_refused() -> None:
    with pytest.raises(DefinitionError, match="invalid saga name"):
        Saga("has space")
    with pytest.raises(DefinitionError, match="invalid step name"):
        Saga("ok").step(name="a.b")(noop)
    with pytest.raises(DefinitionError, match="timeout > 0"):
        Saga("ok").step(name="a", timeout=0)(noop)


def test_empty_saga_is_refused() -> None:
    with pytest.raises(DefinitionError, match="has no steps"):
        Saga("empty").validate()


class OrderIn(BaseModel):
    order_id: str
    quantity: int = 1


def test_input_is_validated_against_the_model_with_the_field_named() -> None:
    saga = Saga("typed", input=OrderIn)

    with pytest.raises(InvalidInputError, match="order_id: Field required"):
        saga.parse_input({"quantity": 2})
    with pytest.raises(InvalidInputError, match="quantity: Input should be a valid integer"):
        saga.parse_input({"order_id": "o", "quantity": "many"})
    assert saga.parse_input({"order_id": "o"}) == {"order_id": "o", "quantity": 1}
    assert saga.load_input({"order_id": "o", "quantity": 1}) == OrderIn(order_id="o")


def test_decorators_keep_the_step_callable_and_record_options() -> None:
    saga = Saga("opts", queue="q1")

    @saga.step
    def first(ctx: StepContext) -> str:
        return "one"

    @saga.step(depends_on=[first], retry=3, backoff=0.1, timeout=5, queue="payments")
    async def second(ctx: StepContext) -> str:
        return "two"

    assert first.queue == "q1" and second.queue == "payments"
    assert (second.depends_on, second.retry, second.backoff, second.timeout) == (
        ("first",),
        3,
        0.1,
        5,
    )
    assert saga.order() == ["first", "second"]


def test_public_api_is_pinned() -> None:
    assert set(sagaq.__all__) == {
        "FailurePolicy", "Saga", "Step", "StepContext", "Tcc", "compensation_step", "saga",
        "saga_of", "saga_step", "Capabilities", "PatternChoice", "VerifyReport",
        "assert_compensates_correctly", "choose_pattern", "verify_saga", "SagaHandle", "SagaQ",
        "SagaResult", "SagaStatus", "Settings", "StepResult", "StepStatus",
        "BrokerUnavailableError", "ConfigurationError", "DefinitionError",
        "IdempotencyConflictError", "InvalidInputError", "InvalidStateError",
        "NonRetryableError", "SagaNotFoundError", "SagaTimeoutError", "SagaqError",
        "StepTimeoutError", "StoreUnavailableError", "UnknownSagaError",
        "UnserializableResultError",
    }  # fmt: skip
    errors = [n for n in sagaq.__all__ if n.endswith("Error")]
    assert all(issubclass(getattr(sagaq, n), sagaq.SagaqError) for n in errors)


def test_step_timeout_beyond_the_redis_visibility_timeout_is_refused(tmp_path: Path) -> None:
    app = Celery("vis", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    app.conf.broker_transport_options = {"visibility_timeout": 600}
    engine = SagaQ(app, store=f"sqlite:///{tmp_path}/s.db")
    saga = Saga("slowpoke")
    saga.step(name="crawl", timeout=900)(noop)

    with pytest.raises(DefinitionError, match=r"slowpoke.crawl may run 900s.*visibility_timeout"):
        engine.register(saga)
    assert "slowpoke" not in engine.sagas


def test_pivot_marks_the_steps_after_it_and_only_one_pivot_is_allowed() -> None:
    saga = Saga("pivoted")
    a = saga.step(name="a")(noop)
    b = saga.step(name="b", depends_on=[a], pivot=True)(noop)
    saga.step(name="c", depends_on=[b])(noop)
    saga.step(name="e", pivot=True)(noop)

    with pytest.raises(DefinitionError, match="several pivot steps"):
        saga.validate()
    del saga.steps["e"]
    assert saga.after_pivot() == {"c"}


def test_a_step_neither_before_nor_after_the_pivot_is_refused_and_named() -> None:
    # Given reserve -> pay (pivot) -> ship, and a side branch "audit" hanging off reserve
    saga = Saga("side")
    reserve = saga.step(name="reserve")(noop)
    pay = saga.step(name="pay", depends_on=[reserve], pivot=True)(noop)
    saga.step(name="ship", depends_on=[pay])(noop)
    saga.step(name="audit", depends_on=[reserve])(noop)

    # Then registration refuses it: audit could run, or be undone, past the point of no return
    with pytest.raises(DefinitionError, match="step 'audit' is neither before nor after the pivot"):
        saga.freeze()


def test_a_compensation_after_the_pivot_is_allowed_but_never_undone() -> None:
    saga = Saga("late_undo")
    pay = saga.step(name="pay", pivot=True)(noop)
    pay.compensate(lambda ctx, result: None)
    ship = saga.step(name="ship", depends_on=[pay])(noop)
    ship.compensate(lambda ctx, result: None)

    plan = saga.freeze()

    assert plan.undoable == frozenset() and plan.compensation is None


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("order\n", "invalid saga name"),
        ("9lives", "invalid saga name"),
        ("x" * 201, "201 characters, at most 200"),
        ("sagaq", "saga name 'sagaq' is reserved"),
    ],
)
def test_bad_saga_names_are_refused(name: str, problem: str) -> None:
    with pytest.raises(DefinitionError, match=problem):
        Saga(name)


def test_a_saga_name_of_two_hundred_characters_is_accepted() -> None:
    assert Saga("x" * 200).name == "x" * 200


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("charge\n", "invalid step name"),
        ("a-b", "invalid step name"),
        ("s" * 201, "201 characters, at most 200"),
    ],
)
def test_bad_step_names_are_refused(name: str, problem: str) -> None:
    with pytest.raises(DefinitionError, match=problem):
        Saga("names").step(name=name)(noop)


@pytest.mark.parametrize(
    "options",
    [
        {"forward_retry": -1},
        {"compensation_retry": -1},
        {"compensation_backoff": -0.5},
        {"compensation_backoff": float("nan")},
        {"deadline": 0},
        {"deadline": -5},
        {"deadline": float("inf")},
    ],
)
def test_negative_saga_options_are_refused(options: dict[str, Any]) -> None:
    [option] = options
    with pytest.raises(DefinitionError, match=option):
        Saga("opts", **options)


@pytest.mark.parametrize(
    "options",
    [
        {"retry": -1},
        {"backoff": -0.1},
        {"backoff": float("nan")},
        {"timeout": 0},
        {"timeout": -3},
    ],
)
def test_negative_step_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(DefinitionError, match="retry and backoff must be >= 0 and timeout > 0"):
        Saga("opts").step(name="a", **options)(noop)


def test_more_than_max_steps_is_refused_naming_the_limit() -> None:
    saga = Saga("huge")
    for i in range(MAX_STEPS):
        saga.step(name=f"s{i}")(noop)

    with pytest.raises(DefinitionError, match=f"MAX_STEPS \\({MAX_STEPS}\\)"):
        saga.step(name="one_more")(noop)


def test_unknown_failure_policy_is_refused() -> None:
    with pytest.raises(DefinitionError, match="unknown failure_policy 'yolo'"):
        Saga("p", failure_policy="yolo")
