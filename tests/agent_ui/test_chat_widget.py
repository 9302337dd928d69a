"""The web-chat widget in a real browser (headless Chromium): a visitor writes on a page that
carries the widget, an agent answers through the API, the visitor sees the answer, and a
reload brings the conversation back."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.settings import Settings
from tests.browser import screenshot
from tests.helpers import Agents, bearer
from tests.twilio_sms import FAST, events

CUSTOMER_TEXT = '<img src=x onerror="window.hacked=1">Where is my parcel?'


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    base = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}")
    return replace(base, outbox=FAST)


async def first_message(client: TestClient) -> Any:
    async with asyncio.timeout(10):
        while not (stored := await events(client)):  # noqa: ASYNC110 - the page's progress
            await asyncio.sleep(0.05)
    return stored[0]


async def test_a_visitor_chats_with_an_agent_and_a_reload_keeps_the_conversation(
    client: TestClient, agents: Agents, browser: Any
) -> None:
    anna = await agents.add("Anna Agent")
    await client.patch(
        f"/api/v1/agents/{anna['id']}", json={"presence": "available"}, headers=bearer(anna)
    )
    page = await (await browser.new_context()).new_page()
    await page.goto(str(client.make_url("/chat/demo")))

    await page.locator(".sb-chat-name").fill("Erika Musterfrau")
    await page.locator(".sb-chat-prechat button[type=submit]").click()
    await page.locator(".sb-chat-input").fill(CUSTOMER_TEXT)
    await page.locator(".sb-chat-send").click()
    inbound = await first_message(client)
    await client.post(
        f"/api/v1/tickets/{inbound.ticket_id}/messages",
        json={"body": "It arrives tomorrow <b>before noon</b>."},
        headers=bearer(anna),
    )
    answer = page.locator(".sb-chat-log li[data-direction=out]")
    await answer.wait_for(timeout=10_000)
    await screenshot(page, "chat-widget")

    assert inbound.body == CUSTOMER_TEXT
    assert await answer.inner_text() == "It arrives tomorrow <b>before noon</b>."
    mine = page.locator(".sb-chat-log li[data-direction=in]")
    assert await mine.inner_text() == CUSTOMER_TEXT  # shown as text, never run as markup
    assert await page.evaluate("window.hacked") is None

    await page.reload()
    lines = page.locator(".sb-chat-log li")
    await lines.nth(1).wait_for(timeout=10_000)
    assert await lines.all_inner_texts() == [
        CUSTOMER_TEXT,
        "It arrives tomorrow <b>before noon</b>.",
    ]
    assert await page.locator(".sb-chat-compose").is_visible()
