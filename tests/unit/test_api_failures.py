"""The HTTP API when things go wrong, as a client sees it: one error shape for 401, 404, 409,
422 and 503, a fast 503 when the broker is down, Swagger that works offline with a bearer
scheme, and a dashboard that never takes its token from a URL. In-process (TestClient), no
services: a broker on a closed port stands for one that is down."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from fastapi.testclient import TestClient

from sagaq import Saga, SagaQ
from sagaq.api.app import create_app
from sagaq.embedded import embedded_app

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def noop(ctx: object) -> None:
    return None


def line() -> Saga:
    saga = Saga("line")
    first = saga.step(name="first")(noop)
    saga.step(name="second", depends_on=[first])(noop)
    return saga


def client_for(app: Celery, tmp_path: Path) -> Iterator[TestClient]:
    engine = SagaQ(app, store=f"sqlite:///{tmp_path / f'{uuid.uuid4().hex[:6]}.db'}")
    engine.register(line())
    with TestClient(create_app(engine, token=TOKEN)) as client:
        yield client
    engine.store.dispose()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    """Embedded broker, no worker: started sagas stay unfinished."""
    yield from client_for(embedded_app("api-failures"), tmp_path)


@pytest.fixture
def broker_down(tmp_path: Path) -> Iterator[TestClient]:
    app = Celery("shop", broker="redis://127.0.0.1:1/0", backend="redis://127.0.0.1:1/0")
    yield from client_for(app, tmp_path)


def assert_problem(response: object, status: int, error: str) -> dict[str, object]:
    body = response.json()  # type: ignore[attr-defined]
    assert response.status_code == status, body  # type: ignore[attr-defined]
    assert set(body) - {"problems"} == {"error", "detail", "status"}, body
    assert (body["status"], body["error"]) == (status, error)
    assert isinstance(body["detail"], str) and body["detail"]
    return dict(body)


def test_a_broker_that_is_down_is_a_503_within_two_seconds_leaving_nothing(
    broker_down: TestClient,
) -> None:
    began = time.monotonic()
    response = broker_down.post("/sagas/line", json={}, headers=AUTH)
    took = time.monotonic() - began

    body = assert_problem(response, 503, "BrokerUnavailableError")
    assert took < 2.0, f"took {took:.2f}s"
    assert "was not started" in str(body["detail"]) and "restart" not in str(body["detail"])
    assert response.headers["retry-after"] == "5"
    assert broker_down.get("/sagas", headers=AUTH).json()["sagas"] == []
    ready = broker_down.get("/readyz")
    assert ready.status_code == 503 and ready.json()["broker"] == "unavailable"


def test_every_refusal_has_the_same_shape(api: TestClient) -> None:
    assert_problem(api.get("/sagas"), 401, "Unauthorized")
    assert_problem(api.get("/sagas/nope", headers=AUTH), 404, "SagaNotFoundError")
    assert_problem(api.post("/sagas/cruise", json={}, headers=AUTH), 404, "UnknownSagaError")
    api.post("/sagas/line", json={"n": 1}, headers={**AUTH, "Idempotency-Key": "k-1"})
    conflict = api.post("/sagas/line", json={"n": 2}, headers={**AUTH, "Idempotency-Key": "k-1"})
    assert_problem(conflict, 409, "IdempotencyConflictError")
    invalid = api.get("/sagas?limit=0", headers=AUTH)
    assert assert_problem(invalid, 422, "InvalidInputError")["problems"]


def test_an_idempotency_key_over_200_characters_is_a_422_not_a_500(api: TestClient) -> None:
    response = api.post("/sagas/line", json={}, headers={**AUTH, "Idempotency-Key": "k" * 201})

    assert "limit is 200" in str(assert_problem(response, 422, "InvalidInputError")["detail"])
    assert api.get("/sagas", headers=AUTH).json()["sagas"] == []


def test_healthz_is_liveness_and_readyz_checks_broker_and_store(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready", "broker": "ok", "store": "ok"}


def test_openapi_declares_the_bearer_scheme_and_leaves_probes_open(api: TestClient) -> None:
    schema = api.get("/openapi.json", headers=AUTH).json()

    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert schema["security"] == [{"bearerAuth": []}]
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    assert schema["paths"]["/readyz"]["get"]["security"] == []


def test_swagger_assets_are_served_by_the_api_itself(api: TestClient) -> None:
    page = api.get("/docs", headers=AUTH)

    assert page.status_code == 200
    assert "cdn" not in page.text and "/docs/assets/swagger-ui-bundle.js" in page.text
    script = api.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000


def test_the_dashboard_takes_its_token_from_a_form_post_never_from_the_url(
    api: TestClient,
) -> None:
    from_url = api.get(f"/dashboard?token={TOKEN}", follow_redirects=False)
    assert from_url.status_code == 401  # the sign-in page, which posts the token
    assert 'method="post"' in from_url.text and "sagaq_token" not in from_url.headers.get(
        "set-cookie", ""
    )

    wrong = api.post("/dashboard/login", data={"token": "nope", "next": "/dashboard"})
    signed_in = api.post(
        "/dashboard/login",
        data={"token": TOKEN, "next": "/dashboard?status=RUNNING"},
        follow_redirects=False,
    )

    assert wrong.status_code == 401
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/dashboard?status=RUNNING"
    assert TOKEN not in signed_in.headers["location"]
    assert api.get("/dashboard").status_code == 200  # the cookie now opens it
    evil = api.post("/dashboard/login", data={"token": TOKEN, "next": "//evil.example"})
    assert evil.url.path == "/dashboard"


def test_a_store_that_is_down_is_a_503_that_names_no_password(tmp_path: Path) -> None:
    from sagaq.store import SagaStore

    down = SagaStore("postgresql+psycopg://shop:s3cret@127.0.0.1:9/shop", create_tables=False)
    engine = SagaQ(embedded_app("store-down"), store=down)
    engine.register(line())

    with TestClient(create_app(engine, token=TOKEN)) as api:
        began = time.monotonic()
        started = api.post("/sagas/line", json={}, headers=AUTH)
        took = time.monotonic() - began
        read = api.get("/sagas/some-id", headers=AUTH)

    assert took < 2.0, f"took {took:.2f}s"
    for response in (started, read):
        assert_problem(response, 503, "StoreUnavailableError")
        assert "s3cret" not in response.text
    down.dispose()


def test_an_unexpected_error_is_a_500_in_the_same_shape_without_internals(
    tmp_path: Path,
) -> None:
    app = embedded_app("undeclared-queue")
    app.conf.task_create_missing_queues = False
    engine = SagaQ(app, store=f"sqlite:///{tmp_path / 's.db'}")
    saga = Saga("lost", queue="nowhere")
    saga.step(name="only")(noop)
    engine.register(saga)

    with TestClient(create_app(engine), raise_server_exceptions=False) as api:
        response = api.post("/sagas/lost", json={})

    assert_problem(response, 500, "InternalError")
    assert "nowhere" not in response.text and "Traceback" not in response.text
    engine.store.dispose()
