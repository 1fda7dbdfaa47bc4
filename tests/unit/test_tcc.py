"""A TCC transaction is built as an ordinary Saga: tries, a pivot `decide`, then confirms."""

from __future__ import annotations

from typing import Any

import pytest

from sagaq import DefinitionError, StepContext
from sagaq.compiler import Leaf, Par, Seq, forward_shape
from sagaq.tcc import Tcc


def hold(ctx: StepContext) -> dict[str, str]:
    return {"hold": ctx.idempotency_key}


def confirm(ctx: StepContext, held: dict[str, str]) -> dict[str, Any]:
    return {"confirmed": held["hold"]}


def release(ctx: StepContext, held: dict[str, str]) -> None:
    return None


def trip() -> Tcc:
    tcc = Tcc("trip", queue="travel", confirm_retry=7, confirm_backoff=0.2, cancel_retry=3)
    tcc.participant("flight", try_=hold, confirm=confirm, cancel=release, queue="air")
    tcc.participant("hotel", try_=hold, confirm=confirm, cancel=release, retry=2)
    tcc.participant("payment", try_=hold, confirm=None, cancel=release, depends_on=["flight"])
    return tcc


def test_tries_then_a_pivot_then_confirms() -> None:
    saga = trip().saga

    deps = {name: step.depends_on for name, step in saga.steps.items()}
    assert deps == {
        "try_flight": (),
        "try_hotel": (),
        "try_payment": ("try_flight",),
        "decide": ("try_flight", "try_hotel", "try_payment"),
        "confirm_flight": ("decide", "try_flight"),
        "confirm_hotel": ("decide", "try_hotel"),
    }
    assert [s for s in saga.steps if saga.steps[s].pivot] == ["decide"]
    assert saga.after_pivot() == {"confirm_flight", "confirm_hotel"}
    assert forward_shape(saga) == Seq(
        (
            Par((Seq((Leaf("try_flight"), Leaf("try_payment"))), Leaf("try_hotel"))),
            Leaf("decide"),
            Par((Leaf("confirm_flight"), Leaf("confirm_hotel"))),
        )
    )


def test_cancel_is_the_compensation_of_the_try_and_the_bounds_are_the_sagas() -> None:
    saga = trip().saga

    assert {s: step.compensation for s, step in saga.steps.items() if step.compensation} == {
        "try_flight": release,
        "try_hotel": release,
        "try_payment": release,
    }
    assert (saga.forward_retry, saga.compensation_retry) == (7, 3)
    assert saga.steps["confirm_flight"].backoff == 0.2
    assert saga.steps["try_hotel"].retry == 2
    assert (saga.steps["try_flight"].queue, saga.steps["confirm_flight"].queue) == ("air", "air")
    assert saga.steps["decide"].queue == "travel"


def test_confirm_receives_what_the_try_returned() -> None:
    saga = trip().saga
    ctx = StepContext(
        saga_id="s-1",
        saga="trip",
        step="confirm_flight",
        input={},
        results={"decide": {"decision": "confirm"}, "try_flight": {"hold": "s-1:try_flight"}},
    )

    assert saga.steps["confirm_flight"].fn(ctx) == {"confirmed": "s-1:try_flight"}


def test_the_saga_is_built_once_and_then_frozen() -> None:
    tcc = trip()

    assert tcc.saga is tcc.saga is tcc.__saga__
    with pytest.raises(DefinitionError, match="already built"):
        tcc.participant("car", try_=hold, confirm=confirm, cancel=release)


@pytest.mark.parametrize(
    ("participants", "error"),
    [
        ([], "has no participants"),
        ([("a", ["ghost"])], "participant 'a' depends on unknown participant 'ghost'"),
        ([("a", ["b"]), ("b", ["a"])], "dependency cycle: try_a -> try_b -> try_a"),
    ],
)
def test_bad_participants_are_definition_errors(
    participants: list[tuple[str, list[str]]], error: str
) -> None:
    tcc = Tcc("bad")
    for name, deps in participants:
        tcc.participant(name, try_=hold, confirm=confirm, cancel=release, depends_on=deps)

    with pytest.raises(DefinitionError, match=error):
        _ = tcc.saga


def test_duplicate_and_invalid_participant_names_are_refused_at_once() -> None:
    tcc = Tcc("names")
    tcc.participant("a", try_=hold, confirm=confirm, cancel=release)

    with pytest.raises(DefinitionError, match="duplicate participant 'a'"):
        tcc.participant("a", try_=hold, confirm=confirm, cancel=release)
    with pytest.raises(DefinitionError, match="invalid participant name 'a-b'"):
        tcc.participant("a-b", try_=hold, confirm=confirm, cancel=release)


def test_the_frozen_plan_cancels_tries_only_and_never_touches_confirms() -> None:
    plan = trip().saga.freeze()

    assert plan.pivot == "decide"
    assert plan.after_pivot == {"confirm_flight", "confirm_hotel"}
    assert plan.undoable == {"try_flight", "try_hotel", "try_payment"}
    # try_payment depends on try_flight: its cancel runs first; the hotel's in parallel
    assert plan.compensation == Par(
        (Seq((Leaf("try_payment"), Leaf("try_flight"))), Leaf("try_hotel"))
    )


def test_a_participant_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(DefinitionError, match="invalid participant name"):
        Tcc("nl").participant("flight\n", try_=hold, confirm=confirm, cancel=release)
