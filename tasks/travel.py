"""Travel booking: the flight first, then hotel and car in parallel, then payment.

If payment fails, hotel and car are cancelled (in parallel), then the flight.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from sagaq import NonRetryableError, Saga, StepContext


class TripIn(BaseModel):
    trip_id: str = Field(min_length=1)
    destination: str = "Lisbon"
    nights: int = Field(default=3, ge=1)
    fail_at: str | None = None


travel_saga = Saga("travel", input=TripIn)


def fail_if_asked(ctx: StepContext) -> None:
    if ctx.input.fail_at == ctx.step:
        raise NonRetryableError(f"{ctx.step} failed (injected by fail_at)")


@travel_saga.step
def book_flight(ctx: StepContext) -> dict[str, Any]:
    fail_if_asked(ctx)
    return {"flight": f"FL-{ctx.input.trip_id}", "to": ctx.input.destination}


@book_flight.compensate
def cancel_flight(ctx: StepContext, result: dict[str, Any]) -> None:
    """Cancel the flight booking (a real one would call the airline with the idempotency key)."""


@travel_saga.step(depends_on=[book_flight])
def book_hotel(ctx: StepContext) -> dict[str, Any]:
    fail_if_asked(ctx)
    return {"hotel": f"HT-{ctx.input.trip_id}", "nights": ctx.input.nights}


@book_hotel.compensate
def cancel_hotel(ctx: StepContext, result: dict[str, Any]) -> None:
    """Cancel the hotel booking."""


@travel_saga.step(depends_on=[book_flight])
def book_car(ctx: StepContext) -> dict[str, Any]:
    fail_if_asked(ctx)
    return {"car": f"CR-{ctx.input.trip_id}"}


@book_car.compensate
def cancel_car(ctx: StepContext, result: dict[str, Any]) -> None:
    """Cancel the car rental."""


@travel_saga.step(depends_on=[book_hotel, book_car], queue="payments")
def pay(ctx: StepContext) -> dict[str, Any]:
    fail_if_asked(ctx)
    bookings = [ctx.results["book_hotel"]["hotel"], ctx.results["book_car"]["car"]]
    return {"paid_for": bookings}
