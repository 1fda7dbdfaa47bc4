"""Bugs the simulator found that are not fixed yet, recognised by their end state. A schedule
whose problems come with one of these signatures is reported, not failed, so `make test`
keeps catching new bugs meanwhile; each has an xfail regression test in test_found_bugs.py.
Delete an entry when its fix lands (its regression test then passes, and xfail(strict) says
so)."""

from __future__ import annotations

from collections.abc import Callable

from sagaq.status import SagaStatus, StepStatus
from sagaq.store import SagaRecord
from tests.simulation.scheduler import Sim


def _child_past_its_pivot(records: list[SagaRecord], sim: Sim) -> bool:
    """A sub-saga whose child has a pivot: once the child is past it, the parent can neither
    undo the child (its compensation FAILs for good, and no retry clears it) nor should it
    treat the child's FAILED-after-pivot as a failure that compensates (the child's
    irreversible steps are orphaned; a retry of the child completes it under a COMPENSATED
    parent)."""
    by_id = {r.id: r for r in records}
    for child in records:
        parent = by_id.get(child.parent_id or "")
        if parent is None or parent.status == SagaStatus.COMPLETED:
            continue
        pivot = next((s.name for s in sim.sagas[child.name].steps.values() if s.pivot), None)
        if pivot is not None and child.step(pivot).status == StepStatus.COMPLETED:
            return True
    return False


KNOWN: dict[str, Callable[[list[SagaRecord], Sim], bool]] = {
    "sub-saga past its pivot": _child_past_its_pivot,
}


def known_bugs(sim: Sim) -> list[str]:
    records = [r for i in sorted(sim.names) if (r := sim.store.get(i)) is not None]
    return [name for name, present in KNOWN.items() if present(records, sim)]
