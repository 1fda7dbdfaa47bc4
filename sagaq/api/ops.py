"""Routes for operators and their tools, open without a token: /healthz (liveness),
/readyz (readiness: broker and store answer) and /metrics. None of them names a URL, a host
or a credential; what failed is logged on the server."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from sagaq.api.schemas import Health, Readiness
from sagaq.client import SagaQ

log = logging.getLogger("sagaq.api")


def ops_router(engine: SagaQ) -> APIRouter:
    router = APIRouter(tags=["operations"])
    # Probes run here so a broker or database that hangs cannot hold a request thread past
    # the timeout (the stuck probe finishes on its own; later probes get the other threads).
    probes = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sagaq-readyz")

    @router.get("/healthz", response_model=Health)
    def healthz() -> Health:
        """Liveness: 200 while the process serves requests (restart it when this fails)."""
        return Health(status="ok")

    @router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    def readyz() -> JSONResponse:
        """Readiness: 200 when the broker and the saga store both answer within
        SAGAQ_PUBLISH_TIMEOUT, else 503 (send no traffic here until they do)."""
        timeout = engine.settings.publish_timeout
        checks = {
            "broker": probes.submit(_broker_answers, engine, timeout),
            "store": probes.submit(_store_answers, engine),
        }
        outcome = {name: _outcome(name, future.result, timeout) for name, future in checks.items()}
        ready = all(v == "ok" for v in outcome.values())
        body = Readiness(status="ready" if ready else "unavailable", **outcome)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @router.get("/metrics", response_class=Response)
    def metrics() -> Response:
        """Prometheus exposition: sagas started here (workers serve the rest, see README)."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router


def _outcome(name: str, result: Callable[[float], object], timeout: float) -> str:
    try:
        result(timeout)
    except FutureTimeout:
        log.warning("readiness: the %s did not answer within %gs", name, timeout)
        return "unavailable"
    except Exception as exc:
        log.warning("readiness: the %s does not answer: %s", name, exc)
        return "unavailable"
    return "ok"


def _broker_answers(engine: SagaQ, timeout: float) -> None:
    with engine.app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=math.ceil(timeout))


def _store_answers(engine: SagaQ) -> None:
    engine.store.get("readyz-probe")
