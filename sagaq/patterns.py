"""Saga or TCC? A small decision table over what the participants can do.

    choice = choose_pattern(
        [Capabilities("inventory", can_reserve=True), Capabilities("email", can_compensate=False)],
        consistency="eventual",
    )
    choice.pattern, choice.pivot, choice.reasons

- A saga commits each step at once and undoes it later if needed: others may see the
  intermediate state (stock gone, then back). Every step before the pivot must be compensable.
- TCC holds every resource tentatively first and makes them final together: nothing is final
  until all holds succeeded. Every participant must be able to hold (try) and release (cancel).
- One participant that can neither be undone nor held can still take part: as the saga's pivot
  (run it after every compensable step). Any others like it must come after the pivot and be
  idempotent, because there they are retried until they succeed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from sagaq.errors import DefinitionError


class Consistency(StrEnum):
    EVENTUAL = "eventual"  # others may briefly see intermediate state
    ISOLATED = "isolated"  # no visible intermediate state


_CONSISTENCY_ALIASES = {"no-visible-intermediate-state": Consistency.ISOLATED}


class Pattern(StrEnum):
    SAGA = "saga"
    TCC = "tcc"
    NEITHER = "neither"  # change a participant first; the reasons say which and how


@dataclass(frozen=True)
class Capabilities:
    """What one participant (a service, an API) can do."""

    name: str
    can_compensate: bool = True  # its effect can be undone afterwards (refund, cancel booking)
    can_reserve: bool = False  # it can hold tentatively, then confirm or release it
    idempotent: bool = False  # repeating a call with the same key has no further effect

    @property
    def irreversible(self) -> bool:
        return not (self.can_compensate or self.can_reserve)


@dataclass(frozen=True)
class PatternChoice:
    pattern: Pattern
    reasons: list[str]
    pivot: str | None = None  # SAGA: the participant to mark `pivot=True`
    after_pivot: tuple[str, ...] = ()  # SAGA: participants to run after it (retried forward)

    def __str__(self) -> str:
        head = f"{self.pattern.value}" + (f" (pivot: {self.pivot})" if self.pivot else "")
        return "\n".join([head, *(f"- {reason}" for reason in self.reasons)])


def choose_pattern(
    participants: Sequence[Capabilities], consistency: Consistency | str
) -> PatternChoice:
    """Pick saga, TCC or neither for `participants` under `consistency`, and say why."""
    if not participants:
        raise DefinitionError("choose_pattern needs at least one participant")
    wanted = _consistency(consistency)
    if wanted is Consistency.ISOLATED:
        return _isolated(participants)
    return _eventual(participants)


def _consistency(value: Consistency | str) -> Consistency:
    if value in _CONSISTENCY_ALIASES:
        return _CONSISTENCY_ALIASES[value]
    try:
        return Consistency(value)
    except ValueError:
        known = ", ".join([*(c.value for c in Consistency), *_CONSISTENCY_ALIASES])
        raise DefinitionError(f"unknown consistency {value!r} (use {known})") from None


def _names(participants: Sequence[Capabilities]) -> str:
    return ", ".join(p.name for p in participants)


def _isolated(participants: Sequence[Capabilities]) -> PatternChoice:
    cannot_hold = [p for p in participants if not p.can_reserve]
    if not cannot_hold:
        return PatternChoice(
            Pattern.TCC,
            [
                "every participant can hold its resource tentatively, so nothing becomes final "
                "or visible as done until every try succeeded",
                "a saga would not do: it commits each step at once, so others could see the "
                "intermediate state before a later step fails and it is undone",
                *_idempotency_notes(
                    participants, "confirm and cancel are retried until they succeed"
                ),
            ],
        )
    fallback = _eventual(participants)
    return PatternChoice(
        Pattern.NEITHER,
        [
            f"no visible intermediate state needs every participant to hold tentatively; "
            f"{_names(cannot_hold)} cannot, so whatever it does is visible at once",
            f"give {_names(cannot_hold)} a reservation API (try/confirm/cancel) and use TCC, "
            f"or accept eventual consistency: then the choice is {fallback.pattern.value}"
            + (f" with {fallback.pivot} as the pivot" if fallback.pivot else ""),
        ],
    )


def _eventual(participants: Sequence[Capabilities]) -> PatternChoice:
    irreversible = [p for p in participants if p.irreversible]
    if not irreversible:
        return _saga_or_tcc(participants)
    risky = [p for p in irreversible if not p.idempotent]
    if len(risky) > 1:
        return PatternChoice(
            Pattern.NEITHER,
            [
                f"{_names(risky)} can neither be undone nor held, and only one such step can "
                "be the pivot (the point of no return)",
                f"make all but one of {_names(risky)} compensable, reservable, or idempotent "
                "(an idempotent step can run after the pivot, retried until it succeeds)",
            ],
        )
    pivot = risky[0] if risky else irreversible[0]
    after = tuple(p.name for p in irreversible if p is not pivot)
    held_only = [p for p in participants if p.can_reserve and not p.can_compensate]
    reasons = [
        f"{pivot.name} can neither be undone nor held: make it the pivot (pivot=True) and run "
        "it after every step that can be undone",
        "before the pivot a failure is compensated; after it the saga only moves forward",
    ]
    if after:
        reasons.append(
            f"{', '.join(after)}: cannot be undone either, but idempotent, so it can run after "
            "the pivot, where it is retried until it succeeds"
        )
    if held_only:
        reasons.append(
            f"{_names(held_only)} cannot be undone but can be held: hold before the pivot "
            "(compensation: release), confirm after it"
        )
    reasons += _idempotency_notes(
        participants, "steps are delivered at least once and may be retried"
    )
    return PatternChoice(Pattern.SAGA, reasons, pivot=pivot.name, after_pivot=after)


def _saga_or_tcc(participants: Sequence[Capabilities]) -> PatternChoice:
    held_only = [p for p in participants if not p.can_compensate]
    if held_only:
        return PatternChoice(
            Pattern.TCC,
            [
                f"{_names(held_only)} cannot be undone once done but can be held: TCC holds it "
                "in try and makes it final in confirm, only after every other try succeeded",
                "participants that can only be undone join with confirm=None: their try does "
                "the work and cancel undoes it",
                *_idempotency_notes(
                    participants, "confirm and cancel are retried until they succeed"
                ),
            ],
        )
    return PatternChoice(
        Pattern.SAGA,
        [
            "every participant can undo its step, and brief intermediate state is acceptable",
            "a saga needs one call per participant; TCC would add a confirm round trip to each "
            "for an isolation you did not ask for",
            *_idempotency_notes(
                participants, "steps are delivered at least once and may be retried"
            ),
        ],
    )


def _idempotency_notes(participants: Sequence[Capabilities], why: str) -> list[str]:
    repeatable = [p for p in participants if not p.idempotent]
    if not repeatable:
        return []
    return [
        f"{why}: make {_names(repeatable)} idempotent (key side effects on ctx.idempotency_key)"
    ]
