"""The user functions of generated sagas. Each follows the plan in the saga's input (fail
never / transiently / for good; undo normally / transiently / for good / slowly) and records
what it did in the ledger. Between its steps it offers the scheduler a checkpoint, where the
worker may crash or be parked while other things happen."""

from __future__ import annotations

from typing import Any, Protocol

from sagaq import NonRetryableError, StepContext
from tests.simulation.ledger import Ledger


class Hooks(Protocol):
    """What the scheduler offers user functions."""

    ledger: Ledger
    healed: bool

    def checkpoint(self, where: str, ctx: StepContext, *, hold: float = 0.0) -> None: ...

    def violation(self, text: str) -> None: ...


class TransientError(ConnectionError):
    """A failure that goes away after a few attempts."""


class PermanentError(RuntimeError):
    """A failure that stays until an operator fixes its cause (the schedule heals it)."""


def plan_of(ctx: StepContext) -> dict[str, Any]:
    plan: dict[str, Any] = ctx.input["plan"].get(ctx.step, {})
    return plan


def do(hooks: Hooks, ctx: StepContext) -> dict[str, Any]:
    """A forward step (or a TCC try / confirm): its effect is keyed by the idempotency key."""
    plan = plan_of(ctx)
    hooks.checkpoint("before effect", ctx)
    kind = plan.get("fail", "ok")
    if not hooks.healed:
        if kind == "permanent":
            raise PermanentError(f"{ctx.step} fails")
        if kind == "fatal":
            raise NonRetryableError(f"{ctx.step} fails, not retryable")
        if kind == "transient" and ctx.attempt <= plan.get("times", 1):
            raise TransientError(f"{ctx.step} fails on attempt {ctx.attempt}")
    hooks.ledger.do(ctx.idempotency_key)
    hooks.checkpoint("after effect", ctx)
    return {"step": ctx.step}


def undo(hooks: Hooks, ctx: StepContext, result: Any) -> None:
    """A compensation (or a TCC cancel)."""
    if result is not None and result != {"step": ctx.step}:
        hooks.violation(f"compensation of {ctx.saga_id}:{ctx.step} got the result {result!r}")
    plan = plan_of(ctx)
    kind = plan.get("undo", "ok")
    hooks.checkpoint("before undo", ctx, hold=plan.get("slow", 0.0) if kind == "slow" else 0.0)
    if not hooks.healed:
        if kind == "permanent":
            raise PermanentError(f"undo of {ctx.step} fails")
        if kind == "transient" and ctx.attempt <= plan.get("undo_times", 1):
            raise TransientError(f"undo of {ctx.step} fails on attempt {ctx.attempt}")
    hooks.ledger.undo(ctx.idempotency_key)
    hooks.checkpoint("after undo", ctx)
