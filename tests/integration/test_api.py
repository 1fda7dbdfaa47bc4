"""The HTTP API over real HTTP (uvicorn on a local port) against a real worker on Redis +
PostgreSQL, as a client of the API would use it. Input-model validation and the OpenAPI schema
use the example sagas (order, travel) on an engine of their own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sagaq import SagaQ
from sagaq.api import create_app, serve_in_background
from sagaq.embedded import embedded_app
from sagaq.store import SagaStore
from tasks import EXAMPLE_SAGAS, webapp
from tests.harness import Harness

TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
on_redis = pytest.mark.parametrize("h", ["redis"], indirect=True)


@pytest.fixture
def api(h: Harness) -> Iterator[httpx.Client]:
    """The API for the harness's engine (its worker runs the sagas), with a token."""
    with (
        serve_in_background(create_app(h.engine, TOKEN)) as url,
        httpx.Client(base_url=url, headers=AUTH, timeout=10) as client,
    ):
        yield client


@pytest.fixture
def example_engine(tmp_path: Path) -> Iterator[SagaQ]:
    """An engine with the example sagas and no worker: what is tested here needs none (only
    one in-process worker can run at a time, and the session's harness may be running)."""
    engine = SagaQ(embedded_app("api-examples"), store=f"sqlite:///{tmp_path / 'api.db'}")
    engine.register(*EXAMPLE_SAGAS)
    yield engine
    engine.store.dispose()


@pytest.fixture
def examples(example_engine: SagaQ) -> Iterator[httpx.Client]:
    with (
        serve_in_background(create_app(example_engine, token=None)) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        yield client


def root(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


def poll(client: httpx.Client, url: str, until: set[str], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(url)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] in until:
            return body
        assert time.monotonic() < deadline, f"saga still {body['status']}"
        time.sleep(0.05)


@on_redis
def test_started_saga_is_accepted_at_once_and_completes(api: httpx.Client) -> None:
    response = api.post("/sagas/line", json={})

    assert response.status_code == 202
    started = response.json()
    assert started["created"] is True
    assert started["status_url"] == f"{root(api)}/sagas/{started['id']}"
    saga = poll(api, started["status_url"], {"COMPLETED", "COMPENSATED", "FAILED"})
    assert saga["status"] == "COMPLETED"
    assert [(s["name"], s["status"], s["attempts"]) for s in saga["steps"]] == [
        (f"s{i}", "COMPLETED", 1) for i in range(1, 6)
    ]
    assert saga["steps"][1]["result"]["step"] == "s2"
    assert saga["duration_ms"] > 0 and saga["error"] is None


@on_redis
def test_failing_saga_reads_back_compensated_with_its_undone_steps(api: httpx.Client) -> None:
    started = api.post("/sagas/line", json={"fail_at": "s3"}).json()

    saga = poll(api, started["status_url"], {"COMPENSATED", "FAILED"})

    assert saga["status"] == "COMPENSATED"
    assert saga["failed_step"] == "s3"
    assert saga["compensated_steps"] == ["s2", "s1"]
    steps = {s["name"]: s for s in saga["steps"]}
    assert "injected failure at s3" in steps["s3"]["error"]
    assert steps["s3"]["compensation"] is None
    assert steps["s1"]["compensation"] == {"status": "COMPENSATED", "attempts": 1, "error": None}
    assert steps["s4"]["status"] == "SKIPPED"


@on_redis
def test_same_idempotency_key_returns_the_same_saga(api: httpx.Client) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}

    first = api.post("/sagas/line", json={}, headers=key)
    again = api.post("/sagas/line", json={}, headers=key)

    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert (first.json()["created"], again.json()["created"]) == (True, False)


@on_redis
def test_requests_without_the_right_token_are_refused(api: httpx.Client) -> None:
    base = root(api)
    saga_id = api.post("/sagas/line", json={}).json()["id"]

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        assert httpx.post(f"{base}/sagas/line", json={}, headers=headers).status_code == 401
        assert httpx.get(f"{base}/sagas/{saga_id}", headers=headers).status_code == 401
        assert httpx.get(f"{base}/sagas", headers=headers).status_code == 401
        assert httpx.post(f"{base}/sagas/{saga_id}/cancel", headers=headers).status_code == 401
    refused = httpx.get(f"{base}/sagas")
    assert refused.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in refused.json()["detail"]
    assert httpx.get(f"{base}/openapi.json").status_code == 401
    assert httpx.get(f"{base}/openapi.json", headers=AUTH).status_code == 200
    assert httpx.get(f"{base}/healthz").status_code == 200  # open for probes and scrapers
    assert httpx.get(f"{base}/metrics").status_code == 200


@on_redis
def test_unknown_saga_and_unknown_id_are_404_with_a_clear_message(api: httpx.Client) -> None:
    unknown_saga = api.post("/sagas/refund", json={})
    unknown_id = api.get(f"/sagas/{uuid.uuid4()}")

    assert unknown_saga.status_code == 404
    assert unknown_saga.json()["error"] == "UnknownSagaError"
    assert "unknown saga 'refund' (registered sagas: " in unknown_saga.json()["detail"]
    assert "line" in unknown_saga.json()["detail"]
    assert unknown_id.status_code == 404
    assert unknown_id.json()["detail"].startswith("no saga with id")
    assert api.post(f"/sagas/{uuid.uuid4()}/cancel").status_code == 404


@on_redis
def test_list_filters_by_status_saga_and_time(api: httpx.Client) -> None:
    done = api.post("/sagas/line", json={}).json()
    undone = api.post("/sagas/line", json={"fail_at": "s1"}).json()
    poll(api, done["status_url"], {"COMPLETED"})
    poll(api, undone["status_url"], {"COMPENSATED"})

    def ids(**params: Any) -> list[str]:
        response = api.get("/sagas", params=params)
        assert response.status_code == 200, response.text
        return [s["id"] for s in response.json()["sagas"]]

    assert ids(saga="line", limit=2) == [undone["id"], done["id"]]  # newest first
    assert undone["id"] in ids(status="COMPENSATED", saga="line")
    assert done["id"] not in ids(status="COMPENSATED", saga="line")
    assert ids(saga="diamond", since=time.time() - 60) == []
    assert ids(since="2999-01-01T00:00:00") == []
    assert api.get("/sagas", params={"status": "DONE"}).status_code == 422


@on_redis
def test_cancel_compensates_a_running_saga_and_a_finished_one_is_409(
    api: httpx.Client, h: Harness
) -> None:
    started = api.post("/sagas/gated", json={"gate": "g2"}).json()
    poll_step(api, started["status_url"], "g2", "RUNNING")

    cancelled = api.post(f"/sagas/{started['id']}/cancel", json={"reason": "customer called"})
    h.ledger.gate(started["id"]).set()  # let the running step finish; it is then undone

    assert cancelled.status_code == 202
    assert cancelled.json()["status"] in ("COMPENSATING", "COMPENSATED")
    saga = poll(api, started["status_url"], {"COMPENSATED", "FAILED"})
    assert saga["status"] == "COMPENSATED"
    assert saga["error"] == "cancelled: customer called"
    again = api.post(f"/sagas/{started['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["error"] == "InvalidStateError"


def poll_step(client: httpx.Client, url: str, step: str, status: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        steps = {s["name"]: s["status"] for s in client.get(url).json()["steps"]}
        if steps[step] == status:
            return
        assert time.monotonic() < deadline, f"{step} is still {steps[step]}"
        time.sleep(0.02)


@on_redis
def test_metrics_count_the_sagas_that_ran(api: httpx.Client) -> None:
    before = finished(api)
    done = api.post("/sagas/diamond", json={}).json()
    undone = api.post("/sagas/diamond", json={"fail_at": "d"}).json()
    poll(api, done["status_url"], {"COMPLETED"})
    poll(api, undone["status_url"], {"COMPENSATED"})

    deadline = time.monotonic() + 10
    while finished(api)[1] < before[1] + 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # the worker counts COMPENSATED just after it is stored

    after = finished(api)
    assert after == (before[0] + 1, before[1] + 1)
    text = httpx.get(f"{root(api)}/metrics").text
    assert 'sagaq_step_duration_seconds_count{saga="diamond",step="d"}' in text
    assert 'sagaq_compensations_total{outcome="completed",saga="diamond",step="b"}' in text


def finished(client: httpx.Client) -> tuple[float, float]:
    """How many diamond sagas the API's /metrics counts as COMPLETED and COMPENSATED."""
    counts = {"COMPLETED": 0.0, "COMPENSATED": 0.0}
    text = httpx.get(f"{root(client)}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sagaq_sagas_finished_total" and sample.labels["saga"] == "diamond":
                counts[sample.labels["status"]] = sample.value
    return counts["COMPLETED"], counts["COMPENSATED"]


def test_bad_input_is_422_naming_the_field_and_starts_nothing(examples: httpx.Client) -> None:
    response = examples.post("/sagas/order", json={"order_id": "o-1", "quantity": 0})
    missing = examples.post("/sagas/travel", json={"nights": 2})

    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["problems"]] == [["body", "quantity"]]
    assert missing.status_code == 422
    assert [e["loc"] for e in missing.json()["problems"]] == [["body", "trip_id"]]
    assert examples.get("/sagas").json()["sagas"] == []


def test_openapi_lists_one_start_route_per_saga_with_its_input_model(
    examples: httpx.Client,
) -> None:
    schema = examples.get("/openapi.json").json()

    paths = schema["paths"]
    assert {"/sagas/order", "/sagas/travel", "/sagas", "/sagas/{saga_id}"} <= set(paths)
    assert {"/sagas/{saga_id}/cancel", "/healthz", "/metrics"} <= set(paths)
    body = paths["/sagas/order"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/OrderIn"}
    order_in = schema["components"]["schemas"]["OrderIn"]
    assert order_in["required"] == ["order_id"]
    assert order_in["properties"]["quantity"]["minimum"] == 1
    assert "202" in paths["/sagas/order"]["post"]["responses"]
    assert examples.get("/docs").status_code == 200


def test_readyz_is_503_when_the_store_does_not_answer_and_healthz_stays_live() -> None:
    down = SagaStore(
        "postgresql+psycopg://postgres:s3cret@127.0.0.1:9/nowhere", create_tables=False
    )
    engine = SagaQ(embedded_app("api-down"), store=down)

    with serve_in_background(create_app(engine)) as url:
        ready = httpx.get(f"{url}/readyz", timeout=20)
        live = httpx.get(f"{url}/healthz", timeout=20)

    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "broker": "ok", "store": "unavailable"}
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    assert "s3cret" not in ready.text + live.text and "127.0.0.1" not in ready.text + live.text
    down.dispose()


def test_example_shop_enqueues_one_order_saga_per_order_id(example_engine: SagaQ) -> None:
    webapp.app.dependency_overrides[webapp.get_engine] = lambda: example_engine
    try:
        with serve_in_background(webapp.app) as url:
            first = httpx.post(f"{url}/orders", json={"order_id": "o-77", "quantity": 2})
            retried = httpx.post(f"{url}/orders", json={"order_id": "o-77", "quantity": 2})
            state = httpx.get(f"{url}/orders/{first.json()['saga_id']}")
            invalid = httpx.post(f"{url}/orders", json={"order_id": ""})
    finally:
        webapp.app.dependency_overrides.clear()

    assert first.status_code == retried.status_code == 202
    assert retried.json() == {**first.json(), "duplicate": True}
    assert state.json()["status"] == "RUNNING"  # published; no worker runs in this test
    saga = example_engine.status(first.json()["saga_id"])
    assert (saga.saga, saga.input["order_id"], saga.input["quantity"]) == ("order", "o-77", 2)
    assert invalid.status_code == 422
