"""The console with a busy queue and a long history: 500 waiting tickets and a contact with
5,000 timeline events. Pages come in pages of 50, so the first render does not grow with the
history; the time it took is written to tests/artifacts/console-timings.json for the record
(tests never assert timings)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.orm import Session

from gateway.keys import DATABASE
from gateway.settings import Settings
from tests.agent_ui.test_console import sign_in
from tests.browser import ARTIFACTS, screenshot
from tests.helpers import Agents
from timeline import store
from timeline.models import Ticket, utcnow

TICKETS = 500
EVENTS = 5_000
PAGE = 50


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'scale.db'}", default_region="DE"
    )


def seed(session: Session) -> int:
    """One long-standing customer with 5,000 messages, and 500 other customers waiting."""
    now = utcnow()
    (regular,) = store.create_contacts(
        session, [("Erika Mustermann", [("phone", "+493055571600")])]
    )
    history = Ticket(
        contact_id=regular, channel="sms", subject="Long story", created_at=now, updated_at=now
    )
    store.insert(session, [history])
    store.add_events(session, [
        {"channel": "sms", "external_id": f"old-{n}", "kind": "message",
         "direction": "in" if n % 2 else "out", "contact_id": regular, "ticket_id": history.id,
         "sender": "+493055571600", "recipient": "+493012345678", "body": f"message number {n}",
         "occurred_at": now - timedelta(minutes=EVENTS - n)}
        for n in range(EVENTS)
    ])  # fmt: skip
    waiting = store.create_contacts(
        session, [(f"Customer {n}", [("phone", f"+4915{n:09d}")]) for n in range(TICKETS)]
    )
    store.insert(session, [
        Ticket(contact_id=c, channel="sms", subject=f"Question {n}", created_at=now, updated_at=now)
        for n, c in enumerate(waiting)
    ])  # fmt: skip
    return history.id


async def test_the_console_renders_a_page_of_a_long_history_and_loads_more_on_demand(
    client: TestClient, agents: Agents, browser: Any
) -> None:
    history_ticket = await client.server.app[DATABASE].run(seed)
    anna = await agents.add("Anna Agent")
    page = await (await browser.new_context(viewport={"width": 1280, "height": 720})).new_page()
    await sign_in(page, client, anna["email"])

    started = time.monotonic()
    await page.wait_for_selector("#waiting-tickets li")
    console_ready = time.monotonic() - started
    waiting_shown = await page.locator("#waiting-tickets li").count()
    await page.fill("#search", "Long story")
    await page.click("#search-form button")
    started = time.monotonic()
    await page.get_by_role("button", name="Long story").click()
    await page.wait_for_selector("#timeline .event")
    timeline_ready = time.monotonic() - started
    first_page = await page.locator("#timeline .event").count()
    await page.click("#older")
    await page.locator("#timeline .event").nth(PAGE).wait_for()
    second_page = await page.locator("#timeline .event").count()
    await screenshot(page, "console-long-history")

    assert waiting_shown == PAGE
    assert first_page == PAGE
    assert second_page == 2 * PAGE
    assert await page.locator("#timeline .event").first.inner_text() != ""
    assert "message number 4999" in await page.locator("#timeline .event").first.inner_text()
    assert history_ticket > 0
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "console-timings.json").write_text(
        json.dumps(
            {"tickets_waiting": TICKETS, "timeline_events": EVENTS,
             "console_first_render_s": round(console_ready, 3),
             "ticket_timeline_first_page_s": round(timeline_ready, 3)}, indent=2,
        )
    )  # fmt: skip
