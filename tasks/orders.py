"""Order fulfilment: validate, reserve inventory, charge payment, ship, notify.

Every step that changes the world has a compensation; notify has none (an e-mail cannot be
unsent). Put a step name in `fail_at` to make that step fail for good.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, Field

from sagaq import NonRetryableError, Saga, StepContext

log = logging.getLogger("tasks.orders")


class OrderIn(BaseModel):
    order_id: str = Field(min_length=1)
    sku: str = "sku-1"
    quantity: int = Field(default=1, ge=1)
    amount_cents: int = Field(default=1999, ge=0)
    fail_at: str | None = None


order_saga = Saga("order", input=OrderIn)


def fail_if_asked(ctx: StepContext) -> None:
    if ctx.input.fail_at == ctx.step:
        raise NonRetryableError(f"{ctx.step} failed (injected by fail_at)")


@order_saga.step
def validate_order(ctx: StepContext) -> dict[str, Any]:
    fail_if_asked(ctx)
    return {"order_id": ctx.input.order_id, "valid": True}


@order_saga.step(depends_on=[validate_order], queue="inventory", retry=3, timeout=10.0)
def reserve_inventory(ctx: StepContext) -> dict[str, Any]:
    fail_if_asked(ctx)
    log.info("reserve %s x %s for %s", ctx.input.quantity, ctx.input.sku, ctx.input.order_id)
    return {"reservation_id": f"res-{ctx.idempotency_key}", "sku": ctx.input.sku}


@reserve_inventory.compensate
def release_inventory(ctx: StepContext, result: dict[str, Any]) -> None:
    log.info("release reservation %s", result["reservation_id"])


@order_saga.step(depends_on=[reserve_inventory], queue="payments", retry=3, timeout=10.0)
def charge_payment(ctx: StepContext) -> dict[str, Any]:
    fail_if_asked(ctx)
    return {"charge_id": f"ch-{ctx.idempotency_key}", "amount_cents": ctx.input.amount_cents}


@charge_payment.compensate
def refund_payment(ctx: StepContext, result: dict[str, Any]) -> None:
    log.info("refund %s (%s cents)", result["charge_id"], result["amount_cents"])


@order_saga.step(depends_on=[charge_payment], retry=2)
def ship(ctx: StepContext) -> dict[str, Any]:
    fail_if_asked(ctx)
    return {"tracking": f"trk-{ctx.input.order_id}"}


@ship.compensate
def cancel_shipment(ctx: StepContext, result: dict[str, Any]) -> None:
    log.info("cancel shipment %s", result["tracking"])


@order_saga.step(depends_on=[ship])
def notify(ctx: StepContext) -> dict[str, Any]:
    fail_if_asked(ctx)
    tracking = ctx.results["ship"]["tracking"]
    return {"sent_to": f"customer-of-{ctx.input.order_id}", "tracking": tracking}
