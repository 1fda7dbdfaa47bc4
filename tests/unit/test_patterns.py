"""The saga-or-TCC decision table: which pattern, which pivot, and a reason a reader can act on."""

from __future__ import annotations

import pytest

from sagaq import DefinitionError
from sagaq.patterns import Capabilities, Pattern, choose_pattern

undoable = Capabilities("inventory")  # can compensate (release stock)
holdable = Capabilities("seats", can_reserve=True)  # can hold, confirm, release; also undo
hold_only = Capabilities("tickets", can_compensate=False, can_reserve=True)
email = Capabilities("email", can_compensate=False)  # neither undone nor held
charge = Capabilities("charge", can_compensate=False)
receipt = Capabilities("receipt", can_compensate=False, idempotent=True)


@pytest.mark.parametrize(
    ("participants", "consistency", "pattern", "pivot"),
    [
        # eventual consistency
        ([undoable, holdable], "eventual", Pattern.SAGA, None),
        ([undoable, hold_only], "eventual", Pattern.TCC, None),
        ([undoable, email], "eventual", Pattern.SAGA, "email"),
        ([undoable, charge, receipt], "eventual", Pattern.SAGA, "charge"),
        ([undoable, receipt], "eventual", Pattern.SAGA, "receipt"),
        ([undoable, charge, email], "eventual", Pattern.NEITHER, None),
        # no visible intermediate state
        ([holdable, hold_only], "isolated", Pattern.TCC, None),
        ([holdable, hold_only], "no-visible-intermediate-state", Pattern.TCC, None),
        ([holdable, undoable], "isolated", Pattern.NEITHER, None),
        ([holdable, email], "isolated", Pattern.NEITHER, None),
    ],
)
def test_decision_table(
    participants: list[Capabilities], consistency: str, pattern: Pattern, pivot: str | None
) -> None:
    choice = choose_pattern(participants, consistency)

    assert (choice.pattern, choice.pivot) == (pattern, pivot)
    assert choice.reasons, "every choice explains itself"


def test_compensable_participants_under_eventual_consistency_get_a_plain_saga() -> None:
    choice = choose_pattern([undoable, holdable], "eventual")

    assert "every participant can undo its step" in choice.reasons[0]
    assert "TCC would add a confirm round trip" in choice.reasons[1]


def test_one_irreversible_participant_becomes_the_pivot_and_idempotent_ones_follow_it() -> None:
    choice = choose_pattern([undoable, charge, receipt], "eventual")

    assert choice.after_pivot == ("receipt",)
    assert "charge can neither be undone nor held: make it the pivot" in choice.reasons[0]
    assert any("receipt: cannot be undone either, but idempotent" in r for r in choice.reasons)


def test_two_irreversible_participants_say_what_to_change() -> None:
    choice = choose_pattern([undoable, charge, email], "eventual")

    assert choice.pattern is Pattern.NEITHER
    assert "only one such step can be the pivot" in choice.reasons[0]
    assert "make all but one of charge, email compensable, reservable, or idempotent" in str(choice)


def test_isolation_without_reservations_names_the_participant_and_the_fallback() -> None:
    choice = choose_pattern([holdable, email], "isolated")

    assert "email cannot" in choice.reasons[0]
    assert "give email a reservation API" in choice.reasons[1]
    assert "then the choice is saga with email as the pivot" in choice.reasons[1]


def test_participants_that_are_not_idempotent_are_named() -> None:
    choice = choose_pattern([undoable, Capabilities("ledger", idempotent=True)], "eventual")

    assert choice.reasons[-1].startswith("steps are delivered at least once")
    assert "make inventory idempotent" in choice.reasons[-1]


def test_bad_arguments_are_definition_errors() -> None:
    with pytest.raises(DefinitionError, match="at least one participant"):
        choose_pattern([], "eventual")
    with pytest.raises(DefinitionError, match="unknown consistency 'strong'"):
        choose_pattern([undoable], "strong")
