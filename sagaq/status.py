"""The state machine: saga and step statuses, their groups, and the one table of allowed
transitions. Every conditional UPDATE in the store is built from `saga_move` / `step_move`,
which refuse a transition this table does not allow, so the SQL cannot drift from it."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import TypeVar


class SagaStatus(StrEnum):
    PENDING = "PENDING"  # recorded; its canvas may not be published yet
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    FAILED = "FAILED"  # needs an operator: `sagaq retry`

    @property
    def is_terminal(self) -> bool:
        return self in SAGA_TERMINAL


class StepStatus(StrEnum):
    PENDING = "PENDING"  # not started, or waiting for its next attempt
    RUNNING = "RUNNING"  # an attempt holds it (see the lease: heartbeat_at)
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"  # failed for good; compensated too when `applied` (it may have happened)
    SKIPPED = "SKIPPED"  # never ran: its `when` was false, or the saga stopped first
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"


S, T = SagaStatus, StepStatus

# -- groups ---------------------------------------------------------------------------------

SAGA_ACTIVE = frozenset({S.PENDING, S.RUNNING})  # forward work may still start
SAGA_UNFINISHED = frozenset({S.PENDING, S.RUNNING, S.COMPENSATING})  # the sweeper looks at these
SAGA_TERMINAL = frozenset({S.COMPLETED, S.COMPENSATED, S.FAILED})

STEP_DONE = frozenset({T.COMPLETED, T.SKIPPED})  # a dependent may start
STEP_IN_FLIGHT = frozenset({T.RUNNING, T.COMPENSATING})  # an attempt may be executing
# Steps whose effect may stand and must be undone (when `undoable`; FAILED only when `applied`).
STEP_TO_UNDO = frozenset({T.COMPLETED, T.FAILED})
# A saga is COMPENSATED once none of its steps is in one of these (see the store's finish).
STEP_BLOCKS_COMPENSATED = frozenset({T.RUNNING, T.COMPENSATING, T.COMPENSATION_FAILED})

# -- the transition table ---------------------------------------------------------------------

SAGA_TRANSITIONS: dict[SagaStatus, frozenset[SagaStatus]] = {
    S.PENDING: frozenset({S.RUNNING, S.COMPLETED, S.COMPENSATING, S.FAILED}),
    S.RUNNING: frozenset({S.COMPLETED, S.COMPENSATING, S.FAILED}),
    # a completed sub-saga is undone when its parent compensates
    S.COMPLETED: frozenset({S.COMPENSATING}),
    S.COMPENSATING: frozenset({S.COMPENSATED, S.FAILED}),
    # operator retry: of a compensation that gave up, or of the steps after the pivot
    S.FAILED: frozenset({S.COMPENSATING, S.RUNNING}),
    S.COMPENSATED: frozenset(),
}

STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    T.PENDING: frozenset({T.RUNNING, T.SKIPPED}),
    # RUNNING -> RUNNING: a new attempt takes over a lease that expired (worker lost);
    # RUNNING -> PENDING: the attempt failed cleanly and the next one is scheduled.
    T.RUNNING: frozenset({T.RUNNING, T.PENDING, T.COMPLETED, T.SKIPPED, T.FAILED}),
    T.COMPLETED: frozenset({T.COMPENSATING}),
    # FAILED -> COMPENSATING when it may have applied; -> PENDING on a forward retry (pivot)
    T.FAILED: frozenset({T.COMPENSATING, T.PENDING}),
    T.SKIPPED: frozenset({T.PENDING}),  # forward retry after the pivot
    # COMPENSATING -> COMPENSATING: a retry, or a new attempt after the lease expired
    T.COMPENSATING: frozenset({T.COMPENSATING, T.COMPENSATED, T.COMPENSATION_FAILED}),
    T.COMPENSATION_FAILED: frozenset({T.COMPENSATING}),  # operator retry
    T.COMPENSATED: frozenset(),
}


E = TypeVar("E", SagaStatus, StepStatus)


def needs_undo(status: StepStatus, undoable: bool, applied: bool) -> bool:
    """Does this step's effect (may) stand, with a compensation to run?"""
    return undoable and (status == T.COMPLETED or (status == T.FAILED and applied))


class IllegalTransitionError(AssertionError):
    """Raised (at import time of the store) when code asks for a transition the table forbids."""


def _check(table: dict[E, frozenset[E]], sources: Iterable[E], target: E) -> tuple[E, ...]:
    found = tuple(sources)
    for source in found:
        if target not in table[source]:
            raise IllegalTransitionError(f"{source} -> {target} is not an allowed transition")
    return found


def saga_move(sources: Iterable[SagaStatus], target: SagaStatus) -> tuple[SagaStatus, ...]:
    """The statuses a saga may be in for an UPDATE to `target`; checked against the table."""
    return _check(SAGA_TRANSITIONS, sources, target)


def step_move(sources: Iterable[StepStatus], target: StepStatus) -> tuple[StepStatus, ...]:
    """The statuses a step may be in for an UPDATE to `target`; checked against the table."""
    return _check(STEP_TRANSITIONS, sources, target)
