"""The agent console in a real browser (headless Chromium through Playwright).

An agent signs in, goes available, a call rings and the caller's card is on screen within a
second; the ticket opens with its timeline; customer markup stays text; requests without the
page's CSRF token are refused; five wrong passwords lock the account for a while.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.settings import Settings
from tests.browser import screenshot
from tests.helpers import Agents, bearer, inbound
from timeline.models import Role

PASSWORD = "correct horse battery"
CTI_TOKEN = "cti-console-test"
CALLER = "+493055571600"
XSS = (
    '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
    '<a href="javascript:window.__xss=3">click</a><style>body{display:none}</style>'
)


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    """SQLite only: the pages are the same on either database; the API tests cover both."""
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'console.db'}",
        default_region="DE",
        cti_token=CTI_TOKEN,
    )


async def sign_in(page: Any, client: TestClient, email: str, password: str = PASSWORD) -> None:
    await page.goto(str(client.make_url("/login")))
    await page.fill("#email", email)
    await page.fill("#password", password)
    await page.click("button[type=submit]")


async def seed_customer(client: TestClient, agent: dict[str, Any]) -> dict[str, Any]:
    """Erika wrote an SMS before: she has a contact, an open ticket and a timeline."""
    contact = await client.post(
        "/api/v1/contacts",
        json={"name": "Erika Mustermann", "identities": [{"kind": "phone", "value": CALLER}]},
        headers=bearer(agent),
    )
    assert contact.status == 201
    sms = await client.post(
        "/api/v1/inbound", json=inbound("sms-1", sender=CALLER, body=XSS), headers=bearer(agent)
    )
    assert sms.status == 202
    body: dict[str, Any] = await sms.json()
    return body


async def test_a_ringing_call_pops_the_callers_card_within_a_second(
    client: TestClient, agents: Agents, browser: Any
) -> None:
    anna = await agents.add("Anna Agent", extension="201")
    await seed_customer(client, anna)
    page = await (await browser.new_context(viewport={"width": 1280, "height": 720})).new_page()
    await sign_in(page, client, anna["email"])
    await page.wait_for_url("**/console")
    await page.wait_for_selector("#connection:has-text('Connected')")
    await page.select_option("#presence", "available")

    rung = time.monotonic()
    response = await client.post(
        f"/webhooks/cti?token={CTI_TOKEN}",
        data={"event": "newCall", "direction": "in", "from": "030 5557 1600", "to": "4930609854180",
              "callId": "console-call-1", "user[]": "Anna Agent"},
    )  # fmt: skip
    assert response.status == 200
    card = page.locator(".pop-incoming_call", has_text="Erika Mustermann")
    await card.wait_for(timeout=1000)
    popped_after = time.monotonic() - rung

    assert popped_after < 1.0
    assert "Incoming call from 030 5557 1600" in await card.inner_text()
    await screenshot(page, "console-pop")
    await card.get_by_role("button", name="Open ticket").click()
    await page.wait_for_selector("#timeline .event")
    timeline = await page.inner_text("#timeline")
    assert "onerror" in timeline  # shown as the text the customer sent ...
    assert await page.evaluate("window.__xss") is None  # ... and nothing of it ran
    assert await page.is_visible("body")
    await screenshot(page, "console-ticket")


async def test_state_changes_without_the_csrf_token_are_refused(
    client: TestClient, agents: Agents, browser: Any
) -> None:
    anna = await agents.add("Anna Agent")
    page = await browser.new_page()
    await sign_in(page, client, anna["email"])
    await page.wait_for_url("**/console")

    without = await page.evaluate(
        """async () => (await fetch('/api/v1/agents/me', {method: 'GET'})).status"""
    )
    forged = await page.evaluate(
        """async (id) => {
            const r = await fetch('/api/v1/agents/' + id, {method: 'PATCH',
                headers: {'Content-Type': 'application/json'}, body: '{"presence": "away"}'});
            return [r.status, (await r.json()).error];
        }""",
        anna["id"],
    )
    signed = await page.evaluate(
        """async (id) => {
            const token = document.querySelector('meta[name=csrf-token]').content;
            const r = await fetch('/api/v1/agents/' + id, {method: 'PATCH', headers: {
                'Content-Type': 'application/json', 'X-CSRF-Token': token},
                body: '{"presence": "away"}'});
            return r.status;
        }""",
        anna["id"],
    )

    assert without == 200  # reading needs no token
    assert forged == [403, "csrf_failed"]
    assert signed == 200


async def test_a_form_post_without_the_csrf_token_does_not_sign_out(
    client: TestClient, agents: Agents, browser: Any
) -> None:
    anna = await agents.add("Anna Agent")
    context = await browser.new_context()
    page = await context.new_page()
    await sign_in(page, client, anna["email"])
    await page.wait_for_url("**/console")
    cookies = {c["name"]: c["value"] for c in await context.cookies()}

    refused = await client.post(
        "/logout", data={}, cookies={"switchboard_session": cookies["switchboard_session"]}
    )
    still_in = await page.goto(str(client.make_url("/console")))

    assert refused.status == 403
    assert still_in is not None and still_in.url.endswith("/console")
    await page.click(".logout button")
    await page.wait_for_url("**/login")
    after = await client.get(
        "/api/v1/agents/me", cookies={"switchboard_session": cookies["switchboard_session"]}
    )
    assert after.status == 401


async def test_five_wrong_passwords_lock_the_account_for_a_while(
    client: TestClient, agents: Agents, browser: Any
) -> None:
    anna = await agents.add("Anna Agent")
    page = await browser.new_page()

    statuses = []
    for _ in range(6):
        await page.goto(str(client.make_url("/login")))
        await page.fill("#email", anna["email"])
        await page.fill("#password", "wrong password")
        async with page.expect_response("**/login**") as answer:
            await page.click("button[type=submit]")
        statuses.append((await answer.value).status)
    await sign_in(page, client, anna["email"])  # even the right password waits now

    assert statuses == [401] * 5 + [429]
    assert "Too many failed sign-ins" in await page.inner_text(".alert")
    assert page.url.split("?")[0].endswith("/login")


async def test_the_pages_send_a_strict_content_security_policy(client: TestClient) -> None:
    response = await client.get("/login")

    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert "HttpOnly" in response.headers["Set-Cookie"]


async def test_the_console_needs_a_session(client: TestClient) -> None:
    response = await client.get("/console", allow_redirects=False)

    assert response.status == 303
    assert response.headers["Location"] == "/login?next=/console"


async def test_the_console_fits_a_tablet_and_works_from_the_keyboard(
    client: TestClient, agents: Agents, browser: Any
) -> None:
    anna = await agents.add("Anna Agent")
    page = await (await browser.new_context(viewport={"width": 768, "height": 1024})).new_page()
    await sign_in(page, client, anna["email"])
    await page.wait_for_url("**/console")
    await page.wait_for_selector("#connection:has-text('Connected')")

    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    await page.keyboard.press("Tab")
    first_stop = await page.evaluate("document.activeElement.textContent")
    await page.keyboard.press("Escape")
    await page.locator("body").click(position={"x": 5, "y": 300})
    await page.keyboard.press("/")
    searching = await page.evaluate("document.activeElement.id")
    unlabelled = await page.evaluate(
        """[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
            .filter((e) => !e.labels.length && !e.getAttribute('aria-label')).length"""
    )
    await screenshot(page, "console-tablet")

    assert overflow <= 0
    assert first_stop == "Skip to content"
    assert searching == "search"
    assert unlabelled == 0


async def test_an_offer_shows_the_customer_and_accepting_it_opens_the_ticket(
    client: TestClient, agents: Agents, browser: Any
) -> None:
    sam = await agents.add("Sam Supervisor", role=Role.SUPERVISOR)
    anna = await agents.add("Anna Agent")
    queue = await client.post(
        "/api/v1/queues", json={"name": "default", "offer_timeout_seconds": 60}, headers=bearer(sam)
    )
    assert queue.status == 201
    page = await (await browser.new_context(viewport={"width": 1280, "height": 720})).new_page()
    await sign_in(page, client, anna["email"])
    await page.wait_for_selector("#connection:has-text('Connected')")
    await page.select_option("#presence", "available")
    await page.wait_for_timeout(300)  # the presence is applied before the customer writes

    await client.post(
        "/api/v1/inbound", json=inbound("o1", sender=CALLER, body="Is my order on its way?"),
        headers=bearer(sam),
    )  # fmt: skip
    offer = page.locator(".pop-offer")
    await offer.wait_for()
    text = await offer.inner_text()
    await offer.get_by_role("button", name="Accept").click()
    await page.wait_for_selector("#ticket:not([hidden]) #timeline .event")

    assert CALLER in text and "Is my order on its way?" in text
    assert await page.locator(".pop-offer").count() == 0
    mine = await client.get("/api/v1/tickets?assignee=me", headers=bearer(anna))
    assert [t["status"] for t in (await mine.json())["tickets"]] == ["open"]
