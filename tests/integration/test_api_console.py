"""The operator's API over real HTTP (uvicorn) against a real worker on Redis + PostgreSQL:
find sagas by key and id prefix, page through them, count them, read a saga's history, cancel
and retry with a named token, and the gauges and histograms on /metrics.

The history tests (`every transition appears`, the actor of an operator action, `cause`) read
rows the store's transitions write; they pass once those writes are in (see the report)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sagaq.api import create_app, serve_in_background
from tests.harness import Harness

TOKENS = {"alice": "alice-token-41", "bob": "bob-token-97"}
ALICE = {"Authorization": f"Bearer {TOKENS['alice']}"}
TERMINAL = {"COMPLETED", "COMPENSATED", "FAILED"}
pytestmark = pytest.mark.parametrize("h", ["redis"], indirect=True)


@pytest.fixture
def api(h: Harness) -> Iterator[httpx.Client]:
    """The API for the harness's engine with two named tokens; requests go as alice."""
    with (
        serve_in_background(create_app(h.engine, tokens=TOKENS)) as url,
        httpx.Client(base_url=url, headers=ALICE, timeout=10) as client,
    ):
        yield client


def root(api: httpx.Client) -> str:
    return str(api.base_url).rstrip("/")


def start(api: httpx.Client, saga: str, body: dict[str, Any], key: str | None = None) -> str:
    headers = {"Idempotency-Key": key} if key else {}
    response = api.post(f"/sagas/{saga}", json=body, headers=headers)
    assert response.status_code == 202, response.text
    saga_id: str = response.json()["id"]
    return saga_id


def wait(api: httpx.Client, saga_id: str, until: set[str] = TERMINAL) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, Any] = api.get(f"/sagas/{saga_id}").json()
        if body["status"] in until:
            return body
        assert time.monotonic() < deadline, f"saga {saga_id} is still {body['status']}"
        time.sleep(0.05)


def wait_step(api: httpx.Client, saga_id: str, step: str, status: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        steps = {s["name"]: s["status"] for s in api.get(f"/sagas/{saga_id}").json()["steps"]}
        if steps[step] == status:
            return
        assert time.monotonic() < deadline, f"{step} is still {steps[step]}"
        time.sleep(0.02)


def listed(api: httpx.Client, **params: Any) -> dict[str, Any]:
    response = api.get("/sagas", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def events(api: httpx.Client, saga_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/sagas/{saga_id}/events")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["events"]
    return found


# -- find -----------------------------------------------------------------------------------


def test_a_saga_is_found_by_its_business_key_and_by_the_start_of_its_id(
    api: httpx.Client,
) -> None:
    key = f"order-{uuid.uuid4().hex[:8]}"
    wanted = start(api, "line", {}, key=key)
    start(api, "line", {}, key=f"{key}-other")

    by_key = listed(api, key=key)["sagas"]
    by_prefix = listed(api, id_prefix=wanted[:8])["sagas"]

    assert [(s["id"], s["saga"], s["idempotency_key"]) for s in by_key] == [(wanted, "line", key)]
    assert wanted in [s["id"] for s in by_prefix]
    assert all(s["id"].startswith(wanted[:8]) for s in by_prefix)


def test_pages_follow_the_cursor_to_the_end_without_gaps_or_repeats(api: httpx.Client) -> None:
    since = time.time() - 0.001
    started = [start(api, "diamond", {}) for _ in range(7)]

    seen: list[str] = []
    cursor = None
    while True:
        params = {"saga": "diamond", "since": since, "limit": 3}
        page = listed(api, **params, **({"cursor": cursor} if cursor else {}))
        seen += [s["id"] for s in page["sagas"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == started[::-1]  # newest first, each once
    bad = api.get("/sagas", params={"cursor": "garbage"})
    assert bad.status_code == 422 and "not a cursor" in bad.json()["detail"]


def test_counts_per_status_come_with_the_list_and_follow_its_filters(api: httpx.Client) -> None:
    since = time.time() - 0.001
    done = [start(api, "conditional", {}) for _ in range(2)]
    undone = start(api, "conditional", {"fail_at": "c1"})
    for saga_id in (*done, undone):
        wait(api, saga_id)

    page = listed(api, saga="conditional", since=since, counts="true", status="COMPLETED")

    counts = {c["status"]: c["count"] for c in page["counts"]}
    assert counts == {
        "PENDING": 0,
        "RUNNING": 0,
        "COMPLETED": 2,
        "COMPENSATING": 0,
        "COMPENSATED": 1,
        "FAILED": 0,
    }
    assert {s["id"] for s in page["sagas"]} == set(done)
    assert "counts" not in listed(api, limit=1) or listed(api, limit=1)["counts"] is None


# -- history ----------------------------------------------------------------------------------


def test_every_transition_of_a_failed_saga_appears_in_its_events(api: httpx.Client) -> None:
    """Waits for the store's event writes (integrator)."""
    saga_id = start(api, "line", {"fail_at": "s3"})
    wait(api, saga_id)

    happened = events(api, saga_id)

    forward = [(e["step"], e["status"]) for e in happened if e["kind"] == "step"]
    undo = [(e["step"], e["status"]) for e in happened if e["kind"] == "compensation"]
    saga = [e["status"] for e in happened if e["kind"] == "saga"]
    for step in ("s1", "s2"):
        assert (step, "RUNNING") in forward and (step, "COMPLETED") in forward
    assert ("s3", "FAILED") in forward
    failure = next(e for e in happened if e["step"] == "s3" and e["status"] == "FAILED")
    assert "injected failure at s3" in failure["error"]
    assert failure["worker"] and failure["task_id"] and failure["attempt"] == 1
    assert [s for s, st in undo if st == "COMPENSATED"] == ["s2", "s1"]
    assert saga[-2:] == ["COMPENSATING", "COMPENSATED"]
    assert [e["id"] for e in happened] == sorted(e["id"] for e in happened)
    assert all(e["duration_ms"] is not None for e in happened if e["status"] == "COMPLETED")


def test_events_of_an_unknown_saga_are_404(api: httpx.Client) -> None:
    response = api.get(f"/sagas/{uuid.uuid4()}/events")

    assert response.status_code == 404
    assert response.json()["error"] == "SagaNotFoundError"


# -- act ----------------------------------------------------------------------------------------


def test_cancel_records_who_and_why_and_the_saga_lists_as_cancelled(
    api: httpx.Client, h: Harness
) -> None:
    """The operator event and `cause` wait for the store's writes (integrator)."""
    saga_id = start(api, "gated", {"gate": "g2"})
    wait_step(api, saga_id, "g2", "RUNNING")

    cancelled = api.post(f"/sagas/{saga_id}/cancel", json={"reason": "customer called"})
    h.ledger.gate(saga_id).set()

    assert cancelled.status_code == 202
    assert wait(api, saga_id)["status"] == "COMPENSATED"
    operator = [e for e in events(api, saga_id) if e["kind"] == "operator"]
    assert [(e["status"], e["actor"], e["reason"]) for e in operator] == [
        ("CANCEL", "alice", "customer called")
    ]
    by_cause = listed(api, saga="gated", cause="cancel")["sagas"]
    assert saga_id in [s["id"] for s in by_cause]
    assert next(s for s in by_cause if s["id"] == saga_id)["cause"] == "cancel"
    assert saga_id not in [s["id"] for s in listed(api, saga="gated", cause="failure")["sagas"]]


def test_retry_resumes_a_failed_saga_and_only_a_failed_one(api: httpx.Client, h: Harness) -> None:
    saga_id = start(api, "brittle", {"fail_at": "b3"})
    assert wait(api, saga_id)["status"] == "FAILED"
    h.ledger.gate(f"fixed:{saga_id}").set()

    retried = api.post(f"/sagas/{saga_id}/retry", json={"reason": "refund service is back"})
    again = api.post(f"/sagas/{saga_id}/retry")
    unauthorised = httpx.post(f"{root(api)}/sagas/{saga_id}/retry", json={})

    assert retried.status_code == 202
    assert wait(api, saga_id)["status"] == "COMPENSATED"
    assert h.ledger.of(saga_id, "undo") == ["b2", "b1"]
    assert again.status_code in (202, 409)  # 409 once the retry has left FAILED
    assert api.post(f"/sagas/{saga_id}/retry").status_code == 409
    assert unauthorised.status_code == 401


def test_a_retried_saga_keeps_its_earlier_failure_in_its_history(
    api: httpx.Client, h: Harness
) -> None:
    """Waits for the store's event writes (integrator)."""
    saga_id = start(api, "brittle", {"fail_at": "b3"})
    assert wait(api, saga_id)["status"] == "FAILED"
    h.ledger.gate(f"fixed:{saga_id}").set()
    bob = {"Authorization": f"Bearer {TOKENS['bob']}"}

    api.post(f"/sagas/{saga_id}/retry", json={"reason": "refund service is back"}, headers=bob)
    final = wait(api, saga_id)

    assert final["status"] == "COMPENSATED"
    happened = events(api, saga_id)
    kinds = [(e["kind"], e["status"]) for e in happened]
    failed_at = kinds.index(("saga", "FAILED"))
    retry_at = kinds.index(("operator", "RETRY"))
    assert failed_at < retry_at < kinds.index(("saga", "COMPENSATED"))
    assert "refund service unavailable" in (happened[failed_at]["error"] or "")
    assert (happened[retry_at]["actor"], happened[retry_at]["reason"]) == (
        "bob",
        "refund service is back",
    )


# -- alert ----------------------------------------------------------------------------------


def test_metrics_have_the_gauges_from_the_store_and_the_duration_histograms(
    api: httpx.Client,
) -> None:
    done = start(api, "shared", {}, key=f"m-{uuid.uuid4().hex[:6]}")
    failed = start(api, "brittle", {"fail_at": "b3"})
    wait(api, done)
    wait(api, failed)
    time.sleep(0.2)  # the worker observes a saga's duration just after it is stored

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(httpx.get(f"{root(api)}/metrics").text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), -1.0)

    assert value("sagaq_sagas", saga="brittle", status="FAILED") >= 1
    assert value("sagaq_sagas", saga="shared", status="COMPLETED") >= 1
    assert value("sagaq_sagas", saga="gated", status="COMPENSATING") >= 0  # every status shown
    assert value("sagaq_oldest_unfinished_saga_age_seconds", saga="diamond") >= 0
    assert value("sagaq_saga_duration_seconds_count", saga="shared", outcome="COMPLETED") >= 1
    assert value("sagaq_saga_duration_seconds_count", saga="brittle", outcome="FAILED") >= 1
    assert value("sagaq_compensation_retries_total", saga="brittle", step="b2") >= 2
    assert value("sagaq_step_duration_seconds_count", saga="shared", step="x1") >= 1


def test_with_a_flower_url_each_step_links_to_its_celery_task(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waits for the store to keep each step's task id (the integrator's leases)."""
    monkeypatch.setenv("SAGAQ_FLOWER_URL", "http://flower.internal:5555/")
    saga_id = h.engine.start("diamond", {}).id
    h.engine.wait(saga_id, 30)

    with serve_in_background(create_app(h.engine, tokens=TOKENS)) as url:
        page = httpx.get(f"{url}/dashboard/sagas/{saga_id}", headers=ALICE, timeout=10).text

    links = dict(re.findall(r'<tr data-step="(\w+)">.*?href="([^"]+/task/[^"]+)"', page))
    assert set(links) == {"a", "b", "c", "d"}
    assert all(link.startswith("http://flower.internal:5555/task/") for link in links.values())
    assert len(set(links.values())) == 4  # each step its own task
