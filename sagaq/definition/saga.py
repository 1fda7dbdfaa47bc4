"""Saga and Step: what a user writes. Pure Python + pydantic, no Celery."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, overload

from pydantic import BaseModel, ValidationError

from sagaq.definition.plan import SagaPlan, plan_saga
from sagaq.errors import DefinitionError, InvalidInputError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # always fullmatch: "$" accepts a trailing "\n"
_SAGA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

MAX_NAME_LENGTH = 200  # the width of the saga and step name columns in the store
# Celery carries the rest of a chain inside every message of it: the first message of a
# 1,000-step line is ~400 KB and the line moves O(steps^2) bytes through the broker in all.
# Beyond this, split the work into sub-sagas.
MAX_STEPS = 1000
# sagaq's own tasks (sagaq.step_failed, sagaq.saga_done, sagaq.compensation_done,
# sagaq.sweep...) live under this prefix; a saga's tasks are "<saga>.<step>", so the saga
# name "sagaq" would collide with them.
SAGAQ_TASK_PREFIX = "sagaq."

StepFn = Callable[["StepContext"], Any]
CompensateFn = Callable[["StepContext", Any], Any]


class FailurePolicy(StrEnum):
    """What happens to parallel siblings when a step fails for good."""

    FAIL_FAST = "fail-fast"  # compensate at once; running siblings undo themselves when done
    FAIL_FAST_WITH_GRACE = "fail-fast-with-grace"  # stop what has not started, wait for the rest
    WAIT_ALL = "wait-all"  # let siblings (started or ready to start) finish, then compensate


@dataclass(frozen=True)
class StepContext:
    """What a step or compensation function receives."""

    saga_id: str
    saga: str
    step: str
    input: Any
    results: Mapping[str, Any]
    attempt: int = 1
    # Values set by earlier steps (ancestors) for later steps and compensations to read; what a
    # step writes here is stored with its completion, so it survives redelivery.
    data: dict[str, Any] = field(default_factory=dict)
    # Set at start (correlation id, tracing ids); read-only, inherited by sub-sagas.
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and redeliveries: use it to make side effects idempotent."""
        return f"{self.saga_id}:{self.step}"


@dataclass
class Step:
    """One step of a saga. Created by `@saga.step`; `@step.compensate` attaches its undo."""

    saga: str
    name: str
    fn: StepFn
    depends_on: tuple[str, ...] = ()
    retry: int = 0
    backoff: float = 0.5
    timeout: float | None = None
    queue: str | None = None
    pivot: bool = False
    when: Callable[[StepContext], bool] | None = field(default=None, repr=False)
    sub_saga: str | None = None  # a step that runs another registered saga
    compensation: CompensateFn | None = field(default=None, repr=False)
    # Set when the saga is frozen: the plan already decided what is undone.
    _sealed: bool = field(default=False, init=False, repr=False, compare=False)

    def compensate(self, fn: CompensateFn) -> CompensateFn:
        """Decorator: `fn(ctx, result)` undoes this step; `result` is what the step returned.

        A compensation of the pivot or of a step after it is accepted but never runs in a
        rollback: past the point of no return those steps are retried forward instead."""
        if self._sealed:
            raise DefinitionError(_registered(self.saga))
        if self.compensation is not None:
            raise DefinitionError(f"step {self.saga}.{self.name} already has a compensation")
        self.compensation = fn
        return fn

    def __call__(self, ctx: StepContext) -> Any:
        return self.fn(ctx)


def _undo_child_saga(ctx: StepContext, result: Any) -> None:
    """Marks a sub-saga step as undoable; sagaq's runtime compensates the child saga."""
    raise NotImplementedError("sub-saga compensation runs in sagaq's runtime")


class Saga:
    """A named business transaction: steps with dependencies, each with an optional compensation.

    Definition errors (cycle, unknown dependency, duplicate step, compensation for a step that does
    not exist, a step neither before nor after the pivot) raise DefinitionError when the
    decorator runs or, for forward references by name, at `validate()` / `freeze()`.
    `SagaQ.register` freezes the saga into its `plan`; no step or compensation can be added after.
    """

    def __init__(
        self,
        name: str,
        input: type[BaseModel] | None = None,
        *,
        queue: str = "default",
        deadline: float | None = None,
        failure_policy: FailurePolicy | str = FailurePolicy.FAIL_FAST_WITH_GRACE,
        compensation_retry: int = 5,
        compensation_backoff: float = 0.5,
        forward_retry: int = 10,
    ) -> None:
        _check_name("saga", name, _SAGA_NAME, "letters, digits, '_' and '-'")
        if f"{name}.".startswith(SAGAQ_TASK_PREFIX):
            raise DefinitionError(
                f"saga name {name!r} is reserved: sagaq's own tasks are named "
                f"{SAGAQ_TASK_PREFIX}* (step_failed, saga_done, sweep...)"
            )
        if input is not None and not (isinstance(input, type) and issubclass(input, BaseModel)):
            raise DefinitionError(f"saga {name!r}: input must be a pydantic model class or None")
        self.name = name
        self.input_model = input
        if deadline is not None and not _positive(deadline):
            raise DefinitionError(f"saga {name!r}: deadline must be > 0 seconds, got {deadline!r}")
        for option, value in (
            ("forward_retry", forward_retry),
            ("compensation_retry", compensation_retry),
            ("compensation_backoff", compensation_backoff),
        ):
            if not _non_negative(value):
                raise DefinitionError(f"saga {name!r}: {option} must be >= 0, got {value!r}")
        try:
            self.failure_policy = FailurePolicy(failure_policy)
        except ValueError:
            choices = ", ".join(p.value for p in FailurePolicy)
            raise DefinitionError(
                f"saga {name!r}: unknown failure_policy {failure_policy!r} (use {choices})"
            ) from None
        self.queue = queue
        self.deadline = deadline
        self.forward_retry = forward_retry
        self.compensation_retry = compensation_retry
        self.compensation_backoff = compensation_backoff
        self.steps: dict[str, Step] = {}
        self._late_compensations: dict[str, CompensateFn] = {}
        self._plan: SagaPlan | None = None

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, steps={list(self.steps)})"

    @overload
    def step(self, fn: StepFn, /) -> Step: ...

    @overload
    def step(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        depends_on: Iterable[Step | str] = (),
        retry: int = 0,
        backoff: float = 0.5,
        timeout: float | None = None,
        queue: str | None = None,
        pivot: bool = False,
        when: Callable[[StepContext], bool] | None = None,
    ) -> Callable[[StepFn], Step]: ...

    def step(
        self,
        fn: StepFn | None = None,
        /,
        *,
        name: str | None = None,
        depends_on: Iterable[Step | str] = (),
        retry: int = 0,
        backoff: float = 0.5,
        timeout: float | None = None,
        queue: str | None = None,
        pivot: bool = False,
        when: Callable[[StepContext], bool] | None = None,
    ) -> Step | Callable[[StepFn], Step]:
        """Decorator that adds a step. `retry` is the number of retries after the first attempt.

        A `pivot` step is the point of no return: once it completed, a later step that fails is
        retried forward (up to `forward_retry` times, then the saga is FAILED for an operator)
        instead of compensating backward. A step whose `when(ctx)` is false is SKIPPED (not
        compensated) and its dependents still run."""

        def add(fn: StepFn) -> Step:
            if self._plan is not None:
                raise DefinitionError(_registered(self.name))
            step_name = name or fn.__name__
            _check_name(
                "step", step_name, _NAME, "letters, digits and '_'", f"saga {self.name!r}: "
            )
            if step_name in self.steps:
                raise DefinitionError(f"saga {self.name!r}: duplicate step {step_name!r}")
            if len(self.steps) >= MAX_STEPS:
                raise DefinitionError(
                    f"saga {self.name!r}: more than MAX_STEPS ({MAX_STEPS}) steps; Celery "
                    "carries the rest of a chain in each message, so split it into sub-sagas"
                )
            if not (
                _non_negative(retry)
                and _non_negative(backoff)
                and (timeout is None or _positive(timeout))
            ):
                raise DefinitionError(
                    f"saga {self.name!r} step {step_name!r}: retry and backoff must be >= 0 "
                    f"and timeout > 0 (got retry={retry!r}, backoff={backoff!r}, "
                    f"timeout={timeout!r})"
                )
            step = Step(
                saga=self.name,
                name=step_name,
                fn=fn,
                depends_on=tuple(self._dependency_name(step_name, d) for d in depends_on),
                retry=retry,
                backoff=backoff,
                timeout=timeout,
                queue=queue or self.queue,
                pivot=pivot,
                when=when,
            )
            self.steps[step_name] = step
            return step

        return add(fn) if fn is not None else add

    def sub_saga(
        self,
        name: str,
        saga: str,
        *,
        input: Callable[[StepContext], Any] | None = None,
        depends_on: Iterable[Step | str] = (),
        queue: str | None = None,
        when: Callable[[StepContext], bool] | None = None,
    ) -> Step:
        """A step that starts the registered saga `saga` (with `input(ctx)`, default this
        saga's input) and completes when it completes; its result is the child's results.
        If this saga is compensated later, a completed child is compensated too."""

        def child_input(ctx: StepContext) -> Any:
            if input is not None:
                return input(ctx)
            return (
                ctx.input.model_dump(mode="json") if isinstance(ctx.input, BaseModel) else ctx.input
            )

        child_input.__name__ = name
        step = self.step(name=name, depends_on=depends_on, queue=queue, when=when)(child_input)
        step.sub_saga = saga
        step.compensate(_undo_child_saga)
        return step

    def compensation(self, step: str) -> Callable[[CompensateFn], CompensateFn]:
        """Decorator attaching a compensation by step name (the step may be defined later)."""

        def attach(fn: CompensateFn) -> CompensateFn:
            if self._plan is not None:
                raise DefinitionError(_registered(self.name))
            if step in self.steps:
                return self.steps[step].compensate(fn)
            self._late_compensations[step] = fn
            return fn

        return attach

    def _dependency_name(self, step_name: str, dep: Step | str) -> str:
        if isinstance(dep, Step):
            if dep.saga != self.name:
                raise DefinitionError(
                    f"saga {self.name!r} step {step_name!r} depends on step {dep.name!r} "
                    f"of another saga ({dep.saga!r})"
                )
            return dep.name
        return dep

    @property
    def dependencies(self) -> dict[str, tuple[str, ...]]:
        return {name: step.depends_on for name, step in self.steps.items()}

    def validate(self) -> None:
        """Check the whole graph; raises DefinitionError naming what is wrong."""
        self._checked_plan()

    def freeze(self) -> SagaPlan:
        """Validate, build the plan once and keep it; afterwards the saga cannot change."""
        if self._plan is None:
            plan = self._checked_plan()
            for step in self.steps.values():
                step._sealed = True
            self._plan = plan
        return self._plan

    @property
    def plan(self) -> SagaPlan:
        """The frozen plan (freezes the saga on first use)."""
        return self.freeze()

    def _checked_plan(self) -> SagaPlan:
        if not self.steps:
            raise DefinitionError(f"saga {self.name!r} has no steps")
        for step_name, fn in list(self._late_compensations.items()):
            if step_name not in self.steps:
                raise DefinitionError(
                    f"saga {self.name!r}: compensation {getattr(fn, '__name__', fn)!r} is for "
                    f"step {step_name!r}, which does not exist"
                )
            self.steps[step_name].compensate(fn)
            del self._late_compensations[step_name]
        for step in self.steps.values():
            for dep in step.depends_on:
                if dep not in self.steps:
                    raise DefinitionError(
                        f"saga {self.name!r}: step {step.name!r} depends on unknown step {dep!r}"
                    )
                if dep == step.name:
                    raise DefinitionError(f"saga {self.name!r}: step {dep!r} depends on itself")
        pivots = [s.name for s in self.steps.values() if s.pivot]
        if len(pivots) > 1:
            raise DefinitionError(f"saga {self.name!r} has several pivot steps: {pivots}")
        plan = plan_saga(self)  # raises on a cycle
        if plan.pivot is not None:
            _check_pivot_region(plan, plan.pivot)
        return plan

    def order(self) -> list[str]:
        """Step names in a valid execution order."""
        return list(self.plan.order)

    def ancestors(self) -> Mapping[str, frozenset[str]]:
        return self.plan.ancestors

    def after_pivot(self) -> frozenset[str]:
        """Steps that run after the pivot step (they are retried forward, never compensated)."""
        return self.plan.after_pivot

    def parse_input(self, data: Any) -> dict[str, Any]:
        """Validate input against the input model; returns the JSON-ready form that is stored."""
        if self.input_model is None:
            if not isinstance(data, Mapping):
                raise InvalidInputError(
                    f"saga {self.name!r} takes a JSON object as input, got {type(data).__name__}"
                )
            return dict(data)
        try:
            model = self.input_model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(input)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise InvalidInputError(f"invalid input for saga {self.name!r}: {problems}") from None
        return model.model_dump(mode="json")

    def load_input(self, stored: dict[str, Any]) -> Any:
        """The object steps see as ctx.input: the model instance, or the plain dict."""
        if self.input_model is None:
            return stored
        return self.input_model.model_validate(stored)


def _check_pivot_region(plan: SagaPlan, pivot: str) -> None:
    """Every step must be before the pivot (undone if the saga fails before it completes) or
    after it (retried forward once it completed). A step on neither side could still be
    running, or be undone, past the point of no return."""
    before, after = plan.ancestors[pivot], plan.descendants[pivot]
    for step in plan.order:
        if step != pivot and step not in before and step not in after:
            raise DefinitionError(
                f"saga {plan.name!r}: step {step!r} is neither before nor after the pivot "
                f"{pivot!r}; make it depend on {pivot!r}, or {pivot!r} on it"
            )


def _check_name(
    kind: str, name: str, pattern: re.Pattern[str], allowed: str, where: str = ""
) -> None:
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise DefinitionError(
            f"{where}invalid {kind} name {name!r}: use {allowed}, not starting with a digit"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise DefinitionError(
            f"{where}invalid {kind} name {name[:20]!r}...: {len(name)} characters, at most "
            f"{MAX_NAME_LENGTH} (MAX_NAME_LENGTH)"
        )


def _non_negative(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


def _positive(value: float) -> bool:
    return _non_negative(value) and value > 0


def _registered(saga: str) -> str:
    return f"saga {saga!r} is registered; define all steps before registering"
