"""SagaPlan: everything sagaq derives from a saga's step graph, computed once when the saga is
frozen (at registration) and read by the compiler, runtime, sweeper and graph drawings.

Public home: `sagaq.plan` (this module lives under definition/ so that `Saga.freeze` can
build it without an import cycle).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sagaq.definition.graph import ancestor_masks, dependents, members, topological_order
from sagaq.definition.shape import Shape, shape_of

if TYPE_CHECKING:
    from sagaq.definition.saga import Saga


class StepSets(Mapping[str, frozenset[str]]):
    """step -> a set of steps, stored as bit masks and decoded on first access: a 1,000-step
    line has half a million (step, ancestor) pairs, which nobody reads all at once."""

    def __init__(self, names: Sequence[str], masks: Sequence[int]) -> None:
        self._names = tuple(names)
        self._masks = dict(zip(names, masks, strict=True))
        self._decoded: dict[str, frozenset[str]] = {}

    def __getitem__(self, step: str) -> frozenset[str]:
        found = self._decoded.get(step)
        if found is None:
            found = self._decoded[step] = members(self._masks[step], self._names)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return f"StepSets({dict(self)!r})"


@dataclass(frozen=True)
class SagaPlan:
    """A saga's step graph, frozen.

    `after_pivot` holds the strict descendants of the pivot: once the pivot completed they are
    retried forward and never undone. `undoable` holds the steps that have a compensation and
    are neither the pivot nor after it: a compensation attached to the pivot or to a step after
    it is allowed (the step may be reused elsewhere) but never runs as part of a rollback.
    """

    name: str
    queue: str
    order: tuple[str, ...]  # topological, definition order on ties
    deps: Mapping[str, tuple[str, ...]]
    ancestors: Mapping[str, frozenset[str]]  # transitive
    descendants: Mapping[str, frozenset[str]]  # transitive
    pivot: str | None
    after_pivot: frozenset[str]
    undoable: frozenset[str]
    queues: Mapping[str, str]
    sub_sagas: Mapping[str, str]  # step -> child saga name
    forward: Shape
    compensation: Shape | None  # reverse shape over every undoable step
    # Bit masks behind `ancestors` / `descendants`, for the shapes of subsets. Descendant
    # masks are indexed by position in reversed(order), so that undoing is planned exactly
    # like running, over the reversed graph.
    _ancestor_masks: tuple[int, ...] = field(repr=False, compare=False)
    _descendant_masks: tuple[int, ...] = field(repr=False, compare=False)
    _position: Mapping[str, int] = field(repr=False, compare=False)

    def forward_shape(self, steps: Iterable[str] | None = None) -> Shape:
        """The shape of the whole saga, or of `steps` only (work that remains after a
        recovery: dependencies outside `steps` are taken as done)."""
        if steps is None:
            return self.forward
        chosen = sorted({self._position[s] for s in steps})
        if not chosen:
            raise ValueError(f"saga {self.name!r}: no step to run")
        return shape_of(self.order, self._ancestor_masks, chosen)

    def compensation_shape(self, steps: Iterable[str]) -> Shape | None:
        """Reverse dependency order over exactly `steps`: a step is undone only after every
        given step that depends on it; independent branches in parallel. None if empty."""
        last = len(self.order) - 1
        chosen = sorted({last - self._position[s] for s in steps})
        if not chosen:
            return None
        return shape_of(self.order[::-1], self._descendant_masks, chosen)


def plan_saga(saga: Saga) -> SagaPlan:
    """Build the plan of a saga whose graph is already valid (see `Saga.freeze`)."""
    deps = {name: step.depends_on for name, step in saga.steps.items()}
    order = tuple(topological_order(deps))
    anc = ancestor_masks(order, deps)
    reversed_order = order[::-1]
    desc = ancestor_masks(reversed_order, dependents(deps))  # bit i: reversed_order[i]
    last = len(order) - 1
    pivot = next((s.name for s in saga.steps.values() if s.pivot), None)
    position = {name: i for i, name in enumerate(order)}
    after_pivot = (
        members(desc[last - position[pivot]], reversed_order) if pivot else frozenset[str]()
    )
    undoable = frozenset(
        name
        for name, step in saga.steps.items()
        if step.compensation is not None and name != pivot and name not in after_pivot
    )
    undo_order = sorted(last - position[s] for s in undoable)
    return SagaPlan(
        name=saga.name,
        queue=saga.queue,
        order=order,
        deps=deps,
        ancestors=StepSets(order, anc),
        descendants=StepSets(reversed_order, desc),
        pivot=pivot,
        after_pivot=after_pivot,
        undoable=undoable,
        queues={name: step.queue or saga.queue for name, step in saga.steps.items()},
        sub_sagas={n: s.sub_saga for n, s in saga.steps.items() if s.sub_saga is not None},
        forward=shape_of(order, anc, range(len(order))),
        compensation=shape_of(reversed_order, desc, undo_order) if undo_order else None,
        _ancestor_masks=tuple(anc),
        _descendant_masks=tuple(desc),
        _position=position,
    )
