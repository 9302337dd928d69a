"""An agent's journey through the console, end to end in a real browser, with the supervisor
watching: a customer texts, the agent goes available and takes the ticket (the queue tile on
the wallboard drops), the customer then calls and the card pops within a second, the agent
opens the ticket and replies by SMS, the Twilio stub receives the reply through the real
`twilio` client, and the timeline shows its delivery status as receipts come in."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.app import create_app
from gateway.keys import DATABASE
from gateway.settings import Settings
from tests.agent_ui.test_console import sign_in
from tests.browser import screenshot
from tests.helpers import Agents
from tests.stubs.twilio_api import TwilioApiStub
from tests.twilio_sms import CUSTOMER, form, post_signed, sms_settings
from timeline.models import OutboxMessage, Role

CTI_TOKEN = "cti-journey"


@pytest.fixture
async def client(
    aiohttp_client: Any, tmp_path: Any, twilio: tuple[TwilioApiStub, str]
) -> TestClient:
    base = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'journey.db'}",
        default_region="DE",
        cti_token=CTI_TOKEN,
    )
    return await aiohttp_client(create_app(sms_settings(base, twilio[1])))


async def test_text_call_pop_reply_by_sms_and_delivery_while_the_supervisor_watches(
    client: TestClient, agents: Agents, browser: Any, twilio: tuple[TwilioApiStub, str]
) -> None:
    api = twilio[0]
    anna = await agents.add("Anna Agent", extension="201")
    sam = await agents.add("Sam Supervisor", role=Role.SUPERVISOR)
    texted = await post_signed(client, "/webhooks/twilio/sms", form("text.json"))
    assert texted.status == 200

    board = await (await browser.new_context(viewport={"width": 1280, "height": 720})).new_page()
    await sign_in(board, client, sam["email"])
    await board.wait_for_url("**/console")
    await board.goto(str(client.make_url("/wallboard")))
    await board.locator("#queue-default [data-figure=waiting]", has_text="1").wait_for()

    console = await (await browser.new_context(viewport={"width": 1280, "height": 720})).new_page()
    await sign_in(console, client, anna["email"])
    await console.wait_for_selector("#connection:has-text('Connected')")
    await console.select_option("#presence", "available")
    await console.locator(".pop-assigned").wait_for()
    await board.locator("#queue-default [data-figure=waiting]", has_text="0").wait_for(timeout=5000)

    rung = time.monotonic()
    call = await client.post(
        f"/webhooks/cti?token={CTI_TOKEN}",
        data={"event": "newCall", "direction": "in", "from": CUSTOMER, "to": "4930609854180",
              "callId": "journey-1", "user[]": "201"},
    )  # fmt: skip
    assert call.status == 200
    card = console.locator(".pop-incoming_call")
    await card.wait_for(timeout=1000)
    popped_after = time.monotonic() - rung
    assert popped_after < 1.0
    assert CUSTOMER in await card.inner_text()

    await card.get_by_role("button", name="Open ticket").click()
    await console.wait_for_selector("#timeline .event-in")
    await console.fill("#reply-body", "We will call you back within the hour.")
    await console.click("#reply-form button[type=submit]")
    outbound = console.locator("#timeline .event-out", has_text="within the hour")
    await outbound.wait_for()
    for _ in range(100):
        if api.messages:
            break
        await console.wait_for_timeout(100)
    assert [(m["To"], m["Body"]) for m in api.messages] == [
        (CUSTOMER, "We will call you back within the hour.")
    ]
    await outbound.locator(".delivery", has_text="sent").wait_for(timeout=5000)
    async with client.server.app[DATABASE].reading() as session:
        (sent,) = (await session.execute(select(OutboxMessage))).scalars().all()
    sid = str(sent.provider_id)
    receipt = await post_signed(
        client, "/webhooks/twilio/sms/status",
        form("status_delivered.json", MessageSid=sid, SmsSid=sid),
    )  # fmt: skip
    assert receipt.status == 200
    await outbound.locator(".delivery", has_text="delivered").wait_for(timeout=5000)
    await screenshot(console, "journey-console")
    await screenshot(board, "journey-wallboard")
