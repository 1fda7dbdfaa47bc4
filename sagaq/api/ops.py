"""Routes for operators and their tools, open without a token: /healthz and /metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from sagaq.api.schemas import Health
from sagaq.client import SagaQ

log = logging.getLogger("sagaq.api")


def ops_router(engine: SagaQ) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    def healthz() -> Response:
        """200 when the saga store answers a query, 503 when it does not."""
        try:
            engine.store.get("healthz-probe")
        except Exception as exc:
            log.warning("health check: the store does not answer: %s", exc)
            return JSONResponse({"status": "unavailable", "store": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "store": "ok"})

    @router.get("/metrics", response_class=Response)
    def metrics() -> Response:
        """Prometheus exposition: sagas started here (workers serve the rest, see README)."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router
