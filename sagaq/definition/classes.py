"""Class-style saga definitions, for teams used to decorator classes.

    @saga("order", input=OrderIn, queue="orders")
    class OrderSaga:
        @saga_step("reserve", retry=2, timeout_ms=5000, queue="inventory")
        def reserve(self, ctx: StepContext) -> dict[str, Any]: ...

        @compensation_step("reserve")
        def release(self, ctx: StepContext, result: dict[str, Any]) -> None: ...

        @saga_step("charge", depends_on=["reserve"])
        def charge(self, ctx: StepContext) -> dict[str, Any]: ...

    engine.register(saga_of(OrderSaga))      # the same object as OrderSaga.__saga__

`@saga_step` and `@compensation_step` only mark methods. `@saga` builds an ordinary sagaq.Saga
when the class statement runs, validates it there (DefinitionError for an unknown compensation
id, a cycle, a duplicate id...), attaches it as `__saga__` and returns the class unchanged.
The class is instantiated once, with no arguments, when one of its steps first runs (not at
import, so a worker importing it opens no connections early).
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from sagaq.definition.saga import CompensateFn, FailurePolicy, Saga, StepContext, StepFn
from sagaq.errors import DefinitionError

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)

_STEP_MARK = "__sagaq_step__"
_COMPENSATION_MARK = "__sagaq_compensation__"
_WRAPPED = ("__module__", "__name__", "__qualname__", "__doc__")


@dataclass(frozen=True)
class _StepMark:
    id: str | None  # None: the method's name
    depends_on: tuple[str | Callable[..., Any], ...]
    retry: int
    backoff_ms: int
    timeout_ms: int | None
    queue: str | None
    pivot: bool


@dataclass(frozen=True)
class _CompensationMark:
    step: str


def saga_step(
    id: str | None = None,
    *,
    depends_on: Iterable[str | Callable[..., Any]] = (),
    retry: int = 0,
    backoff_ms: int = 500,
    timeout_ms: int | None = None,
    queue: str | None = None,
    pivot: bool = False,
) -> Callable[[F], F]:
    """Mark a method `(self, ctx)` as step `id` (default: the method's name). `depends_on`
    takes step ids or the decorated methods themselves."""
    mark = _StepMark(id, tuple(depends_on), retry, backoff_ms, timeout_ms, queue, pivot)

    def marked(method: F) -> F:
        setattr(method, _STEP_MARK, mark)
        return method

    return marked


def compensation_step(step: str) -> Callable[[F], F]:
    """Mark a method `(self, ctx, result)` as the compensation of step `step`."""

    def marked(method: F) -> F:
        setattr(method, _COMPENSATION_MARK, _CompensationMark(step))
        return method

    return marked


def saga(
    name: str,
    input: type[BaseModel] | None = None,
    *,
    queue: str = "default",
    deadline: float | None = None,
    failure_policy: FailurePolicy | str = FailurePolicy.FAIL_FAST_WITH_GRACE,
    compensation_retry: int = 5,
    compensation_backoff: float = 0.5,
    forward_retry: int = 10,
) -> Callable[[C], C]:
    """Class decorator: build the Saga from the marked methods and attach it as `__saga__`.
    Options are those of `sagaq.Saga`."""

    def build(cls: C) -> C:
        definition = Saga(
            name,
            input,
            queue=queue,
            deadline=deadline,
            failure_policy=failure_policy,
            compensation_retry=compensation_retry,
            compensation_backoff=compensation_backoff,
            forward_retry=forward_retry,
        )
        _add_methods(definition, cls)
        definition.validate()
        cls.__saga__ = definition  # type: ignore[attr-defined]
        return cls

    return build


def saga_of(cls: type) -> Saga:
    """The Saga that `@saga` attached to `cls` (typed access to `cls.__saga__`)."""
    definition = getattr(cls, "__saga__", None)
    if not isinstance(definition, Saga):
        raise DefinitionError(
            f"{cls.__name__} is not decorated with @saga(...) (from sagaq.definition.classes)"
        )
    return definition


def _add_methods(definition: Saga, cls: type) -> None:
    _check_no_arguments(cls)
    instance = _LazyInstance(cls)
    steps: dict[str, str] = {}  # step id -> method name, to name both sides of a duplicate
    compensations: list[tuple[str, Callable[..., Any], _CompensationMark]] = []
    for attr, method in _methods(cls).items():
        step = getattr(method, _STEP_MARK, None)
        undo = getattr(method, _COMPENSATION_MARK, None)
        if isinstance(step, _StepMark) and isinstance(undo, _CompensationMark):
            raise DefinitionError(
                f"{cls.__name__}.{attr} is marked both as a step and as a compensation"
            )
        if isinstance(undo, _CompensationMark):
            compensations.append((attr, method, undo))
        if not isinstance(step, _StepMark):
            continue
        step_id = step.id or attr
        if step_id in steps:
            raise DefinitionError(
                f"{cls.__name__}: methods {steps[step_id]!r} and {attr!r} both define step "
                f"{step_id!r}"
            )
        steps[step_id] = attr
        definition.step(
            name=step_id,
            depends_on=[_dependency_id(cls, d) for d in step.depends_on],
            retry=step.retry,
            backoff=step.backoff_ms / 1000,
            timeout=step.timeout_ms / 1000 if step.timeout_ms is not None else None,
            queue=step.queue,
            pivot=step.pivot,
        )(_bound_step(instance, method))
    for attr, method, undo in compensations:
        if undo.step not in definition.steps:
            raise DefinitionError(
                f"{cls.__name__}.{attr} compensates step {undo.step!r}, which does not exist "
                f"(steps: {', '.join(definition.steps) or 'none'})"
            )
        definition.steps[undo.step].compensate(_bound_compensation(instance, method))


def _methods(cls: type) -> dict[str, Callable[..., Any]]:
    """Plain functions of the class and its bases, in definition order; subclasses override."""
    found: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if inspect.isfunction(value):
                found.pop(attr, None)
                found[attr] = value
    return found


def _dependency_id(cls: type, dep: str | Callable[..., Any]) -> str:
    if isinstance(dep, str):
        return dep
    mark = getattr(dep, _STEP_MARK, None)
    if not isinstance(mark, _StepMark):
        name = getattr(dep, "__name__", repr(dep))
        raise DefinitionError(f"{cls.__name__}: depends_on {name!r} is not a @saga_step method")
    return mark.id or dep.__name__


def _check_no_arguments(cls: type) -> None:
    try:
        inspect.signature(cls).bind()
    except TypeError:
        raise DefinitionError(
            f"{cls.__name__} must be constructible with no arguments: sagaq creates one instance"
        ) from None
    except ValueError:  # no signature to inspect (some builtins): find out at first use
        pass


class _LazyInstance:
    """The one instance of a saga class, created when a step first needs it."""

    def __init__(self, cls: type) -> None:
        self._cls = cls
        self._lock = threading.Lock()
        self._instance: Any = None

    def get(self) -> Any:
        if self._instance is None:
            with self._lock:
                if self._instance is None:
                    self._instance = self._cls()
        return self._instance


def _bound_step(instance: _LazyInstance, method: Callable[..., Any]) -> StepFn:
    if inspect.iscoroutinefunction(method):

        async def run_async(ctx: StepContext) -> Any:
            return await method(instance.get(), ctx)

        return functools.wraps(method, _WRAPPED, ())(run_async)

    def run(ctx: StepContext) -> Any:
        return method(instance.get(), ctx)

    return functools.wraps(method, _WRAPPED, ())(run)


def _bound_compensation(instance: _LazyInstance, method: Callable[..., Any]) -> CompensateFn:
    if inspect.iscoroutinefunction(method):

        async def undo_async(ctx: StepContext, result: Any) -> Any:
            return await method(instance.get(), ctx, result)

        return functools.wraps(method, _WRAPPED, ())(undo_async)

    def undo(ctx: StepContext, result: Any) -> Any:
        return method(instance.get(), ctx, result)

    return functools.wraps(method, _WRAPPED, ())(undo)
