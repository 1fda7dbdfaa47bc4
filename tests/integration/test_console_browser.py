"""The operator's dashboard in headless Chromium (Debian's), over real HTTP, with sagas run by
the embedded worker: search by business key, page through the list, read the counts, cancel a
running saga and retry a failed one through the confirm dialog, and watch the page update in
place. Saves docs/screenshots/console-list-search.png and console-timeline-after-retry.png."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sagaq import SagaStatus
from sagaq.api import create_app, serve_in_background
from tests.harness import REQUIRE_SERVICES, Harness

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
TOKEN = "console-token-3b1"
TOKENS = {"ops-alice": TOKEN}
embedded = pytest.mark.parametrize("h", ["embedded"], indirect=True)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if REQUIRE_SERVICES:
            pytest.fail(message + " and SAGAQ_REQUIRE_SERVICES=1")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def site(h: Harness, browser: Browser) -> Iterator[tuple[str, Page]]:
    """The dashboard's URL and a page logged in with the ops-alice token (1280 px wide)."""
    with serve_in_background(create_app(h.engine, tokens=TOKENS)) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/dashboard")
        page.fill("input[name=token]", TOKEN)
        page.click("text=Open")
        page.wait_for_url(f"{url}/dashboard")
        try:
            yield url, page
        finally:
            page.close()


def shown_ids(page: Page) -> list[str]:
    ids: list[str] = page.locator("tr.saga").evaluate_all("rs => rs.map(r => r.dataset.id)")
    return ids


def fits(page: Page) -> bool:
    wide: bool = page.evaluate(
        "() => document.scrollingElement.scrollWidth <= document.scrollingElement.clientWidth"
    )
    return wide


@embedded
def test_search_paging_and_counts_in_the_list(h: Harness, site: tuple[str, Page]) -> None:
    url, page = site
    run = uuid.uuid4().hex[:6]
    keys = [f"order-{run}-{i:02d}" for i in range(55)]
    handles = [h.engine.start("conditional", {}, idempotency_key=k) for k in keys]
    for handle in handles:
        h.engine.wait(handle.id, 30)
    failed = h.engine.start("conditional", {"fail_at": "c1"}, idempotency_key=f"bad-{run}")
    h.engine.wait(failed.id, 30)

    # Search by business key: exactly that saga, with its key shown.
    page.fill("input[name=q]", keys[17])
    page.click("form.search button")
    page.wait_for_url(re.compile(r"q=order-"))
    assert shown_ids(page) == [handles[17].id]
    assert page.locator("tr.saga td.key").inner_text() == keys[17]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "console-list-search.png"), full_page=True)

    # The start of an id finds it too.
    page.fill("input[name=q]", failed.id[:8])
    page.click("form.search button")
    page.wait_for_url(re.compile(f"q={failed.id[:8]}"))
    assert shown_ids(page) == [failed.id]

    # One saga name: 50 a page, newest first; "older" continues where the page ended.
    page.goto(f"{url}/dashboard?saga=conditional")
    first = shown_ids(page)
    assert len(first) == 50 and first[0] == failed.id
    page.click("a.next")
    page.wait_for_url(re.compile("cursor="))
    second = shown_ids(page)
    assert not set(first) & set(second)
    assert handles[0].id in second and len(first) + len(second) >= 56

    # Counts per status on the chips; a chip filters.
    completed_chip = page.locator(".filters.counts a[data-status=COMPLETED] b")
    assert int(completed_chip.inner_text().rstrip("+")) >= 55
    page.click(".filters.counts a[data-status=COMPENSATED]")
    statuses = set(page.locator("tr.saga").evaluate_all("rs => rs.map(r => r.dataset.status)"))
    assert statuses == {"COMPENSATED"} and failed.id in shown_ids(page)

    # 1280 and 1920 px: no horizontal scrolling, times on one line.
    assert fits(page)
    page.set_viewport_size({"width": 1920, "height": 1000})
    assert fits(page)
    white_space = page.locator("tr.saga td.nowrap").first.evaluate(
        "c => getComputedStyle(c).whiteSpace"
    )
    assert white_space == "nowrap"


@embedded
def test_cancel_through_the_dialog_and_the_page_follows_in_place(
    h: Harness, site: tuple[str, Page]
) -> None:
    url, page = site
    handle = h.engine.start("gated", {"gate": "g2"})
    wait_running(h, handle.id, "g2")
    page.goto(f"{url}/dashboard/sagas/{handle.id}")

    page.click("button[data-open=cancel]")
    dialog = page.locator("#dialog-cancel")
    assert dialog.is_visible()
    dialog.locator("input[name=reason]").fill("customer phoned to cancel")
    dialog.locator("button[name=confirm]").click()
    page.wait_for_url(re.compile("done=cancel"))
    assert "Cancel requested" in page.locator(".notice").inner_text()

    page.evaluate("() => { window.stillTheSamePage = true; }")
    h.ledger.gate(handle.id).set()  # the running step finishes and is undone
    page.wait_for_selector(".saga-head .badge.status-compensated", timeout=20_000)

    assert page.evaluate("() => window.stillTheSamePage === true")  # updated in place
    assert h.engine.status(handle.id).status == SagaStatus.COMPENSATED
    assert page.locator("button[data-open=cancel]").count() == 0  # nothing left to cancel


@embedded
def test_a_forged_cross_site_form_cannot_cancel(h: Harness, site: tuple[str, Page]) -> None:
    url, page = site
    handle = h.engine.start("gated", {"gate": "g1"})
    wait_running(h, handle.id, "g1")

    # Another site's page posting the form with the victim's cookie, without the CSRF token.
    forged = page.request.post(
        f"{url}/dashboard/sagas/{handle.id}/cancel",
        form={"reason": "x", "csrf": "guess"},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    h.ledger.gate(handle.id).set()

    assert forged.status == 403
    assert h.engine.wait(handle.id, 30).status == SagaStatus.COMPLETED


@embedded
def test_retry_through_the_dialog_and_the_timeline_keeps_the_earlier_failure(
    h: Harness, site: tuple[str, Page]
) -> None:
    """The timeline's rows wait for the store's event writes (integrator)."""
    url, page = site
    failed = h.run("brittle", {"fail_at": "b3"})
    assert failed.status == SagaStatus.FAILED
    h.ledger.gate(f"fixed:{failed.id}").set()
    page.goto(f"{url}/dashboard/sagas/{failed.id}")

    page.click("button[data-open=retry]")
    page.locator("#dialog-retry input[name=reason]").fill("refund service is back")
    page.locator("#dialog-retry button[name=confirm]").click()
    page.wait_for_url(re.compile("done=retry"))
    page.wait_for_selector(".saga-head .badge.status-compensated", timeout=20_000)
    page.set_viewport_size({"width": 1600, "height": 1000})
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "console-timeline-after-retry.png"), full_page=True)

    assert h.ledger.of(failed.id, "undo") == ["b2", "b1"]
    timeline = page.locator("ol.timeline li")
    kinds = timeline.evaluate_all("ls => ls.map(l => [l.dataset.kind, l.dataset.status])")
    assert ["saga", "FAILED"] in kinds and ["operator", "RETRY"] in kinds
    assert kinds.index(["saga", "FAILED"]) < kinds.index(["operator", "RETRY"])
    retry = page.locator("ol.timeline li[data-kind=operator]").inner_text()
    assert "ops-alice" in retry and "refund service is back" in retry
    earlier = page.locator(".callout.earlier").inner_text()
    assert "refund service unavailable" in earlier


def wait_running(h: Harness, saga_id: str, step: str) -> None:
    import time

    deadline = time.monotonic() + 20
    while h.engine.status(saga_id).step(step).status != "RUNNING":
        assert time.monotonic() < deadline, f"{step} never started"
        time.sleep(0.02)
