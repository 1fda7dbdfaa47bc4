"""What must hold once a schedule is quiet and swept, checked against the ledger of effects:

- every saga is terminal;
- COMPLETED: every step that was not skipped has its effect exactly once, skipped ones none;
- COMPENSATED: the net effect of every undoable step is zero; nothing at or after the pivot
  applied; the reason is given;
- a dependent is undone before its dependencies;
- nothing is undone once the pivot applied;
- a step that started after its saga left the active states was undone;
- failed_step, compensated_steps and error agree with the ledger;
- a parent's sub-saga ends the way its parent does (completed, or compensated)."""

from __future__ import annotations

from sagaq.client import SagaResult
from sagaq.definition.saga import Saga
from sagaq.runtime.launch import pivot_of, undoable_steps
from sagaq.status import SagaStatus, StepStatus
from sagaq.store import SagaRecord
from tests.simulation.scheduler import Sim


def check(sim: Sim, effectful: dict[str, set[str]]) -> list[str]:
    problems: list[str] = []
    records = {i: r for i in sorted(sim.names) if (r := sim.store.get(i)) is not None}
    for record in records.values():
        saga = sim.sagas[record.name]
        who = f"[{sim.short(record.id)}] {record.name} {record.status}"
        found = _check_saga(sim, saga, record, effectful.get(record.name, set()))
        problems += [f"{who}: {p}" for p in found]
        if record.parent_id is not None and record.parent_id in records:
            problems += [f"{who}: {p}" for p in _check_child(record, records[record.parent_id])]
    return problems + _one_child_each(records)


def _check_saga(sim: Sim, saga: Saga, record: SagaRecord, effectful: set[str]) -> list[str]:
    problems: list[str] = []
    status = record.status
    if not status.is_terminal:
        return [f"not terminal ({status})"]
    undoable = undoable_steps(saga)
    pivot = pivot_of(saga)
    anc = saga.ancestors()
    past = saga.after_pivot() | ({pivot} if pivot else set())
    hist = {s: sim.ledger.of(f"{record.id}:{s}") for s in effectful}
    rows = {s.name: s for s in record.steps}

    if status == SagaStatus.COMPLETED:
        for name, h in hist.items():
            if rows[name].status == StepStatus.SKIPPED:
                if h.dos:
                    problems.append(f"{name} was SKIPPED but its effect happened")
            elif not h.applied:
                problems.append(f"{name} ({rows[name].status}) has no effect standing")
        for name, row in rows.items():
            if row.status not in (StepStatus.COMPLETED, StepStatus.SKIPPED):
                problems.append(f"step {name} is {row.status} in a COMPLETED saga")
    if status == SagaStatus.COMPENSATED:
        for name, h in hist.items():
            if name in undoable and h.applied:
                problems.append(f"{name}'s effect stands (do x{h.dos}, undo x{h.undos})")
            if name in past and h.dos:
                problems.append(f"{name} (pivot or after it) applied, yet the saga compensated")
            if name in undoable and h.dos and rows[name].status != StepStatus.COMPENSATED:
                problems.append(f"{name} applied but is {rows[name].status}, not COMPENSATED")
        if not record.error:
            problems.append("compensated without a reason (error is empty)")
        result = SagaResult.from_record(record)
        undone = {n for n, h in hist.items() if h.undos}
        said = set(result.compensated_steps) & effectful
        if said != undone:
            problems.append(f"compensated_steps says {sorted(said)}, ledger {sorted(undone)}")
        if record.cause == "failure":
            culprit = record.failed_step
            settled = (StepStatus.FAILED, StepStatus.COMPENSATED)
            if culprit is None or rows[culprit].status not in settled or not rows[culprit].error:
                problems.append(f"failed_step {culprit!r} did not fail")
    for name in _late_starts(sim, record.id) & effectful:
        if hist[name].applied and status != SagaStatus.COMPLETED:
            problems.append(f"{name} started after the saga stopped and its effect stands")
    for name, h in hist.items():
        for dep in anc[name] & effectful:
            first = hist[dep]
            if h.last_undo and first.last_undo and first.last_undo < h.last_undo and h.dos:
                problems.append(f"{dep} was undone before its dependent {name}")
        if h.redone_after_undo and h.applied:
            problems.append(f"{name}'s effect landed after its undo and stands")
    if pivot and pivot in hist and hist[pivot].dos:
        undone = sorted(n for n, h in hist.items() if h.undos)
        if undone:
            problems.append(f"the pivot {pivot} applied, yet {undone} were undone")
    return problems


def _late_starts(sim: Sim, saga_id: str) -> set[str]:
    """Steps whose attempt was claimed after the saga left the active states (and before an
    operator retry made it active again), from the saga's history."""
    stopped, late = False, set()
    for event in sim.store.events(saga_id):
        if event["kind"] == "saga":
            stopped = event["status"] not in (SagaStatus.PENDING, SagaStatus.RUNNING)
        elif stopped and event["kind"] == "step" and event["status"] == StepStatus.RUNNING:
            late.add(str(event["step"]))
    return late


def _check_child(child: SagaRecord, parent: SagaRecord) -> list[str]:
    """A sub-saga follows its parent: a compensated parent left no child standing; a
    completed parent's children are completed (the one its step returned) or compensated."""
    if parent.status == SagaStatus.COMPENSATED and child.status != SagaStatus.COMPENSATED:
        return [f"its parent is COMPENSATED but this sub-saga is {child.status}"]
    settled = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)
    if parent.status == SagaStatus.COMPLETED and child.status not in settled:
        return [f"its parent is COMPLETED but this sub-saga is {child.status}"]
    return []


def _one_child_each(records: dict[str, SagaRecord]) -> list[str]:
    """A completed parent step stands on one completed child: earlier children of the same
    step (from attempts that failed) were compensated."""
    completed: dict[tuple[str, str], list[str]] = {}
    for r in records.values():
        if r.parent_id and r.parent_step and r.status == SagaStatus.COMPLETED:
            completed.setdefault((r.parent_id, r.parent_step), []).append(r.id)
    return [
        f"[{parent[-4:]}] step {step} has {len(ids)} COMPLETED sub-sagas"
        for (parent, step), ids in completed.items()
        if len(ids) > 1
    ]
