"""Example: a shop's web app whose request handler starts the order saga.

    SAGAQ_BROKER_URL=redis://... SAGAQ_STORE_URL=postgresql+psycopg://... \\
        uvicorn tasks.webapp:app

`POST /orders` returns 202 as soon as the saga is recorded and published; the workers do the
rest. The order id is the idempotency key, so a client that retries after a timeout gets the
same saga instead of a second charge. The engine is the workers' (workers/main.py), imported on
the first request; tests swap it with `app.dependency_overrides[get_engine]`.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel

from sagaq import SagaNotFoundError, SagaQ, SagaStatus
from tasks.orders import OrderIn


@cache
def get_engine() -> SagaQ:
    from workers.main import engine

    return engine


Engine = Annotated[SagaQ, Depends(get_engine)]


class OrderAccepted(BaseModel):
    order_id: str
    saga_id: str
    duplicate: bool


class OrderState(BaseModel):
    saga_id: str
    status: SagaStatus
    tracking: str | None
    problem: str | None


app = FastAPI(title="example shop")


@app.post("/orders", status_code=202)
def place_order(order: OrderIn, engine: Engine) -> OrderAccepted:
    handle = engine.start(
        "order", order.model_dump(mode="json"), idempotency_key=f"order:{order.order_id}"
    )
    return OrderAccepted(order_id=order.order_id, saga_id=handle.id, duplicate=not handle.created)


@app.get("/orders/{saga_id}")
def order_state(saga_id: str, engine: Engine) -> OrderState:
    try:
        result = engine.status(saga_id)
    except SagaNotFoundError:
        raise HTTPException(status_code=404, detail="no such order") from None
    shipped = result.results.get("ship") or {}
    return OrderState(
        saga_id=result.id,
        status=result.status,
        tracking=shipped.get("tracking"),
        problem=result.error,
    )
