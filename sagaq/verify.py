"""Failure verification: make every step fail in turn and check what was compensated.

    report = verify_saga(order_saga, {"order_id": "o-1"})
    report.ok                      # every injected failure was compensated correctly
    Console().print(report.render())

    assert_compensates_correctly(order_saga, {"order_id": "o-1"})     # in a pytest test

The saga runs on the embedded default (in-memory broker, in-process worker, SQLite unless
`store_url` says otherwise): once without failure, then once per step with that step raising
NonRetryableError. The user's saga is not touched: each step function is wrapped in a copy, and
the copy's backoffs are cut to 10 ms so a verification takes seconds. For every run the report
checks that exactly the completed steps that have a compensation were compensated, that none
was undone before a step depending on it, and the final status (COMPENSATED; FAILED when the
failure is past the pivot step, which is never compensated).

It starts and stops an in-process Celery worker, and Celery's test worker stops every worker of
the process when one stops: do not call it while another in-process worker must keep running.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import io
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from sagaq.client import SagaQ
from sagaq.definition.saga import Saga, Step, StepContext, StepFn
from sagaq.embedded import embedded_app, in_process_worker
from sagaq.errors import NonRetryableError, SagaTimeoutError
from sagaq.status import SagaStatus, StepStatus
from sagaq.store import SagaRecord, StepRecord

INJECTED = "injected by sagaq verify"
FAST_BACKOFF = 0.01
_UNDO = (StepStatus.COMPENSATING, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED)
_RAN = (StepStatus.COMPLETED, *_UNDO)


@dataclass(frozen=True)
class InjectionRun:
    """One run of the saga, with a failure injected at `failed_at` (None: no failure)."""

    failed_at: str | None
    status: SagaStatus
    expected_status: SagaStatus
    completed: tuple[str, ...]  # steps that completed (later undone or not), in saga order
    compensated: tuple[str, ...]  # in the order their compensations finished
    compensated_exactly: bool  # compensated == the completed steps that have a compensation
    order_respected: bool  # no step was undone before a step that depends on it
    problems: tuple[str, ...]
    warnings: tuple[str, ...]
    error: str | None  # the saga's error, as stored

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class VerifyReport:
    saga: str
    runs: tuple[InjectionRun, ...]

    @property
    def ok(self) -> bool:
        return all(run.ok for run in self.runs)

    @property
    def problems(self) -> list[str]:
        return [f"{_label(r)}: {p}" for r in self.runs for p in r.problems]

    @property
    def warnings(self) -> list[str]:
        """Each warning once, however many runs raised it."""
        return list(dict.fromkeys(w for run in self.runs for w in run.warnings))

    def render(self) -> Table:
        table = Table(title=f"sagaq verify: {self.saga}", title_justify="left")
        for column in ("failure at", "status", "completed", "compensated (in order)", "check"):
            table.add_column(column)
        for run in self.runs:
            status = run.status.value
            if run.status != run.expected_status:
                status += f" (expected {run.expected_status.value})"
            check = "[green]ok[/]" if run.ok else "\n".join(f"[red]{p}[/]" for p in run.problems)
            table.add_row(
                _label(run), status, ", ".join(run.completed), ", ".join(run.compensated), check
            )
        verdict = (
            "[green]ok: every injected failure was compensated correctly[/]"
            if self.ok
            else f"[red]{len(self.problems)} problem(s)[/]"
        )
        table.caption = "\n".join([verdict, *(f"[yellow]warning:[/] {w}" for w in self.warnings)])
        table.caption_justify = "left"
        return table

    def text(self, width: int = 120) -> str:
        """The rendered table as plain text (for assertion messages and logs)."""
        out = io.StringIO()
        Console(file=out, width=width, color_system=None, force_terminal=False).print(self.render())
        return out.getvalue()


def verify_saga(
    saga: Saga, input: Any, *, store_url: str | None = None, timeout: float = 30.0
) -> VerifyReport:
    """Run `saga` with `input` once without failure, then once per step with that step failing,
    on the embedded default; `timeout` bounds each run. Raises DefinitionError or
    InvalidInputError before running anything if the saga or the input is invalid."""
    target = _Target()
    copied = _injectable_copy(saga, target)
    copied.validate()
    copied.parse_input(input)
    runs: list[InjectionRun] = []
    with _engine(copied, store_url) as engine:
        for step in [None, *copied.order()]:
            target.step = step
            try:
                record = _run(engine, copied, input, timeout)
            except SagaTimeoutError as exc:
                runs.append(_unfinished(step, str(exc)))
                break  # its tasks may still run and would see the next injection
            runs.append(_check(copied, step, record))
    return VerifyReport(saga.name, tuple(runs))


def assert_compensates_correctly(
    saga: Saga, input: Any, *, store_url: str | None = None, timeout: float = 30.0
) -> VerifyReport:
    """For pytest: `verify_saga`, raising AssertionError with the report when it is not ok."""
    report = verify_saga(saga, input, store_url=store_url, timeout=timeout)
    if not report.ok:
        raise AssertionError(
            f"saga {saga.name!r} does not compensate correctly:\n"
            + "\n".join(f"- {p}" for p in report.problems)
            + "\n\n"
            + report.text()
        )
    return report


class _Target:
    """The step that fails in the current run. Runs are sequential, so one slot suffices."""

    step: str | None = None


def _injectable_copy(saga: Saga, target: _Target) -> Saga:
    """A copy of `saga` sharing no mutable state with it, every step function wrapped."""
    copied = copy.copy(saga)
    for attr, value in vars(saga).items():
        if isinstance(value, dict):
            setattr(copied, attr, dict(value))
    copied.steps = {
        name: dataclasses.replace(
            step, fn=_failing_when_targeted(step, target), backoff=min(step.backoff, FAST_BACKOFF)
        )
        for name, step in saga.steps.items()
    }
    copied.compensation_backoff = min(saga.compensation_backoff, FAST_BACKOFF)
    return copied


def _failing_when_targeted(step: Step, target: _Target) -> StepFn:
    fn = step.fn
    if inspect.iscoroutinefunction(fn):

        async def run_async(ctx: StepContext) -> Any:
            if target.step == ctx.step:
                raise NonRetryableError(INJECTED)
            return await fn(ctx)

        run_async.__name__ = getattr(fn, "__name__", step.name)
        return run_async

    def run(ctx: StepContext) -> Any:
        if target.step == ctx.step:
            raise NonRetryableError(INJECTED)
        return fn(ctx)

    run.__name__ = getattr(fn, "__name__", step.name)
    return run


@contextmanager
def _engine(saga: Saga, store_url: str | None) -> Iterator[SagaQ]:
    with tempfile.TemporaryDirectory(prefix="sagaq-verify-") as tmp:
        engine = SagaQ(embedded_app("sagaq-verify"), store=store_url or f"sqlite:///{tmp}/v.db")
        try:
            engine.register(saga)
            with in_process_worker(engine.app, engine.queues()), _quiet_injected_failures():
                yield engine
        finally:
            engine.store.dispose()


class _DropInjected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return INJECTED not in record.getMessage()


@contextmanager
def _quiet_injected_failures() -> Iterator[None]:
    """Celery logs every failed task with a traceback; the injected failures are expected."""
    loggers = [logging.getLogger(name) for name in ("celery.app.trace", "celery.backends.base")]
    drop = _DropInjected()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def _run(engine: SagaQ, saga: Saga, input: Any, timeout: float) -> SagaRecord:
    handle = engine.start(saga.name, input)
    engine.wait(handle.id, timeout)
    record = engine.store.get(handle.id)
    assert record is not None  # it was just created
    return record


def _label(run: InjectionRun) -> str:
    return run.failed_at or "(none)"


def _unfinished(step: str | None, error: str) -> InjectionRun:
    return InjectionRun(
        failed_at=step,
        status=SagaStatus.RUNNING,
        expected_status=SagaStatus.COMPLETED if step is None else SagaStatus.COMPENSATED,
        completed=(),
        compensated=(),
        compensated_exactly=False,
        order_respected=False,
        problems=(f"did not finish: {error}; verification stopped here",),
        warnings=(),
        error=error,
    )


def _expected_status(saga: Saga, step: str | None, record: SagaRecord) -> SagaStatus:
    if step is None or record.step(step).status == StepStatus.SKIPPED:
        return SagaStatus.COMPLETED
    if step in saga.after_pivot():
        return SagaStatus.FAILED  # past the point of no return: forward only, nothing undone
    return SagaStatus.COMPENSATED


def _check(saga: Saga, step: str | None, record: SagaRecord) -> InjectionRun:
    """Compare one finished run with what correct compensation would have done."""
    expected_status = _expected_status(saga, step, record)
    completed = tuple(s.name for s in record.steps if s.status in _RAN)
    undone = sorted(
        (s for s in record.steps if s.status == StepStatus.COMPENSATED),
        key=lambda s: s.compensated_at or 0.0,
    )
    compensated = tuple(s.name for s in undone)
    broken = [s for s in record.steps if s.status == StepStatus.COMPENSATION_FAILED]
    compensating = expected_status is SagaStatus.COMPENSATED or any(
        s.status in _UNDO for s in record.steps
    )
    expected = {s for s in completed if compensating and saga.steps[s].compensation is not None}
    failed_undo = {s.name for s in broken}  # reported on their own line
    missing = [s for s in completed if s in expected and s not in {*compensated, *failed_undo}]
    extra = [s for s in compensated if s not in expected]
    misordered = _misordered(saga, undone)

    problems: list[str] = []
    if record.status != expected_status:
        why = f": {record.error}" if record.error and not broken else ""
        problems.append(f"ended {record.status.value}, expected {expected_status.value}{why}")
    problems += [f"compensation of {s.name} failed: {s.compensation_error}" for s in broken]
    if missing:
        problems.append(f"completed but not compensated: {', '.join(missing)}")
    if extra:
        problems.append(f"compensated though it should not be: {', '.join(extra)}")
    problems += misordered

    warnings: list[str] = []
    if step is not None and record.step(step).status == StepStatus.SKIPPED:
        warnings.append(f"step {step} was skipped (its condition was false): nothing injected")
    if compensating:
        warnings += [
            f"{s} completed without a compensation: nothing undoes it when a later step fails "
            "(fine if it changes nothing)"
            for s in completed
            if saga.steps[s].compensation is None and not saga.steps[s].pivot
        ]
    return InjectionRun(
        failed_at=step,
        status=record.status,
        expected_status=expected_status,
        completed=completed,
        compensated=compensated,
        compensated_exactly=not missing and not extra,
        order_respected=not misordered,
        problems=tuple(problems),
        warnings=tuple(warnings),
        error=record.error,
    )


def _misordered(saga: Saga, undone: list[StepRecord]) -> list[str]:
    """A step must be undone after every compensated step that depends on it."""
    ancestors = saga.ancestors()
    finished = {s.name: s.compensated_at or 0.0 for s in undone}
    return [
        f"{earlier} was undone before {later}, which depends on it"
        for later in finished
        for earlier in ancestors[later]
        if earlier in finished and finished[earlier] < finished[later]
    ]
