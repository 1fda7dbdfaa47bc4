"""TCC (try / confirm / cancel) transactions, built as an ordinary Saga.

Every participant first *tries*: it holds its resource tentatively (a seat on hold, an amount
authorised). If every try succeeds, every participant *confirms* (the hold becomes final); if a
try fails, every participant whose try succeeded *cancels* (its hold is released).

    trip = Tcc("trip", input=TripIn)
    trip.participant("flight", try_=hold_seat, confirm=issue_ticket, cancel=release_seat)
    trip.participant("hotel", try_=hold_room, confirm=book_room, cancel=release_room)
    engine.register(trip.saga)

`trip.saga` is a plain sagaq.Saga with these steps, so the same compiler, store, CLI and API
serve it:

    try_<p>      one per participant, in parallel unless `depends_on` orders them;
                 its compensation is cancel_<p>(ctx, what try_<p> returned)
    decide       a no-op pivot step after every try: the point of no return
    confirm_<p>  one per participant, after `decide`: confirm_<p>(ctx, what try_<p> returned)

Past the pivot nothing is compensated: a confirm that fails is retried `confirm_retry` times,
then the transaction is FAILED for an operator (`sagaq retry <id>` resumes it). A cancel that
keeps failing is retried `cancel_retry` times, then the transaction is FAILED too. Confirm and
cancel must therefore be idempotent (use `ctx.idempotency_key`) and should not raise
NonRetryableError, which skips the retries.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from sagaq.definition.saga import Saga, StepContext
from sagaq.errors import DefinitionError

TryFn = Callable[[StepContext], Any]
ConfirmFn = Callable[[StepContext, Any], Any]  # (ctx, what the try returned)
CancelFn = Callable[[StepContext, Any], Any]  # (ctx, what the try returned)

DECIDE_STEP = "decide"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # fullmatch: "$" would accept a trailing "\n"


def try_step(participant: str) -> str:
    return f"try_{participant}"


def confirm_step(participant: str) -> str:
    return f"confirm_{participant}"


@dataclass(frozen=True)
class Participant:
    """One resource in a TCC transaction: how to hold it, make it final, or release it."""

    name: str
    try_: TryFn
    confirm: ConfirmFn | None  # None: the try did the work, nothing to confirm
    cancel: CancelFn
    depends_on: tuple[str, ...] = ()
    queue: str | None = None
    retry: int = 0
    timeout: float | None = None


class Tcc:
    """A try/confirm/cancel transaction; `.saga` is the Saga that runs it."""

    def __init__(
        self,
        name: str,
        input: type[BaseModel] | None = None,
        *,
        queue: str = "default",
        confirm_retry: int = 10,
        confirm_backoff: float = 0.5,
        cancel_retry: int = 5,
        cancel_backoff: float = 0.5,
    ) -> None:
        if min(confirm_retry, cancel_retry) < 0 or min(confirm_backoff, cancel_backoff) < 0:
            raise DefinitionError(f"tcc {name!r}: retries and backoffs must be >= 0")
        self.name = name
        self.input_model = input
        self.queue = queue
        self.confirm_retry = confirm_retry
        self.confirm_backoff = confirm_backoff
        self.cancel_retry = cancel_retry
        self.cancel_backoff = cancel_backoff
        self.participants: dict[str, Participant] = {}
        self._saga: Saga | None = None

    def __repr__(self) -> str:
        return f"Tcc({self.name!r}, participants={list(self.participants)})"

    def participant(
        self,
        name: str,
        *,
        try_: TryFn,
        confirm: ConfirmFn | None,
        cancel: CancelFn,
        depends_on: Iterable[str] = (),
        queue: str | None = None,
        retry: int = 0,
        timeout: float | None = None,
    ) -> Participant:
        """Add a participant. Its try runs once the tries of `depends_on` succeeded (and sees
        their results as ctx.results["try_<other>"]); `retry` applies to the try only."""
        if self._saga is not None:
            raise DefinitionError(f"tcc {self.name!r} is already built: add participants first")
        if not _NAME.fullmatch(name):
            raise DefinitionError(f"tcc {self.name!r}: invalid participant name {name!r}")
        if name in self.participants:
            raise DefinitionError(f"tcc {self.name!r}: duplicate participant {name!r}")
        added = Participant(name, try_, confirm, cancel, tuple(depends_on), queue, retry, timeout)
        self.participants[name] = added
        return added

    @property
    def saga(self) -> Saga:
        """The Saga that runs this transaction, built and validated on first use. After that
        the transaction is frozen: register this object with `engine.register(tcc.saga)`."""
        if self._saga is None:
            self._saga = self._build()
        return self._saga

    @property
    def __saga__(self) -> Saga:
        return self.saga

    def _build(self) -> Saga:
        if not self.participants:
            raise DefinitionError(f"tcc {self.name!r} has no participants")
        saga = Saga(
            self.name,
            self.input_model,
            queue=self.queue,
            forward_retry=self.confirm_retry,
            compensation_retry=self.cancel_retry,
            compensation_backoff=self.cancel_backoff,
        )
        for p in self.participants.values():
            for dep in p.depends_on:
                if dep not in self.participants:
                    raise DefinitionError(
                        f"tcc {self.name!r}: participant {p.name!r} depends on unknown "
                        f"participant {dep!r}"
                    )
            held = saga.step(
                name=try_step(p.name),
                depends_on=[try_step(d) for d in p.depends_on],
                retry=p.retry,
                timeout=p.timeout,
                queue=p.queue,
            )(p.try_)
            held.compensate(p.cancel)
        tries = [try_step(p) for p in self.participants]
        saga.step(name=DECIDE_STEP, depends_on=tries, pivot=True)(_decide)
        for p in self.participants.values():
            if p.confirm is not None:
                saga.step(
                    name=confirm_step(p.name),
                    depends_on=[DECIDE_STEP, try_step(p.name)],  # the try's result as input
                    backoff=self.confirm_backoff,
                    timeout=p.timeout,
                    queue=p.queue,
                )(_confirming(p.name, p.confirm))
        saga.validate()
        return saga


def _decide(ctx: StepContext) -> dict[str, str]:
    """Every try succeeded: from here on the transaction only moves forward."""
    return {"decision": "confirm"}


def _confirming(participant: str, confirm: ConfirmFn) -> TryFn:
    """The confirm step: `confirm(ctx, what the try returned)`, sync or async like `confirm`."""
    held = try_step(participant)
    run: TryFn
    if inspect.iscoroutinefunction(confirm):

        async def run_async(ctx: StepContext) -> Any:
            return await confirm(ctx, ctx.results[held])

        run = run_async
    else:

        def run_sync(ctx: StepContext) -> Any:
            return confirm(ctx, ctx.results[held])

        run = run_sync
    run.__name__ = run.__qualname__ = confirm_step(participant)
    return run
