"""The dashboard in a real headless browser (Debian's chromium), over real HTTP, with sagas run
by the embedded worker: open the list with the token, filter, click through to a compensated
saga, check its graph and compensations. Saves tests/artifacts/dashboard.png."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sagaq import SagaResult, SagaStatus
from sagaq.api import create_app, serve_in_background
from tests.harness import REQUIRE_SERVICES, Harness

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TOKEN = "dashboard-token"
COMPENSATED_FILL = "rgb(233, 213, 255)"  # --compensated in dashboard.css
FAILED_FILL = "rgb(254, 202, 202)"  # --failed

if TYPE_CHECKING:
    from playwright.sync_api import Page


@pytest.fixture
def page() -> Iterator[Page]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if REQUIRE_SERVICES:
            pytest.fail(message + " and SAGAQ_REQUIRE_SERVICES=1")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


@pytest.mark.parametrize("h", ["embedded"], indirect=True)
def test_dashboard_shows_a_compensated_saga_graph_and_its_compensations(
    h: Harness, page: Page
) -> None:
    completed: SagaResult = h.run("line", {})
    compensated: SagaResult = h.run("diamond", {"fail_at": "d"})
    assert (completed.status, compensated.status) == (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)

    with serve_in_background(create_app(h.engine, TOKEN)) as url:
        # Without the token: asked for it.
        assert page.goto(f"{url}/dashboard").status == 401  # type: ignore[union-attr]
        page.fill("input[name=token]", TOKEN)
        page.click("text=Open")
        page.wait_for_url(f"{url}/dashboard")  # the token went into a cookie, off the URL

        rows = page.locator("tr.saga")
        assert rows.locator(f"[href$='{completed.id}']").count() == 1
        assert page.locator(f"tr[data-id='{completed.id}']").get_attribute("data-status") == (
            "COMPLETED"
        )

        page.click(".filters >> text=COMPENSATED")
        statuses = set(page.locator("tr.saga").evaluate_all("rs => rs.map(r => r.dataset.status)"))
        assert statuses == {"COMPENSATED"}
        page.locator(f"tr[data-id='{compensated.id}'] a").first.click()
        page.wait_for_url(re.compile(f"/dashboard/sagas/{compensated.id}$"))

        nodes = page.locator("svg.step-graph g.node")
        shown = dict(
            zip(
                nodes.evaluate_all("ns => ns.map(n => n.dataset.step)"),
                nodes.evaluate_all("ns => ns.map(n => n.dataset.status)"),
                strict=True,
            )
        )
        assert shown == {"a": "COMPENSATED", "b": "COMPENSATED", "c": "COMPENSATED", "d": "FAILED"}
        assert fill(page, "a") == COMPENSATED_FILL and fill(page, "d") == FAILED_FILL
        cause = page.locator(".callout").inner_text()
        assert "Compensation triggered by" in cause and "injected failure at d" in cause
        outcomes = page.locator("tr.compensation")
        assert outcomes.evaluate_all("rs => rs.map(r => r.dataset.step)") == list(
            compensated.compensated_steps
        )
        assert set(outcomes.evaluate_all("rs => rs.map(r => r.dataset.status)")) == {"COMPENSATED"}
        assert page.locator("meta[http-equiv=refresh]").count() == 0  # finished: no refresh

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        page.goto(f"{url}/dashboard")
        page.screenshot(path=str(ARTIFACTS / "dashboard-list.png"), full_page=True)


def fill(page: Page, step: str) -> str:
    rect = page.locator(f"svg.step-graph g.node[data-step='{step}'] rect")
    colour: str = rect.evaluate("r => getComputedStyle(r).fill")
    return colour
