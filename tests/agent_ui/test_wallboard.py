"""The supervisor wallboard in a real browser: queue tiles that follow the queue, the agent
table, and a supervisor changing an agent's presence."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.keys import DATABASE
from gateway.settings import Settings
from gateway.wallboard import take_sample
from tests.agent_ui.test_console import sign_in
from tests.browser import screenshot
from tests.helpers import Agents, bearer, inbound
from timeline.models import Role, utcnow


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'board.db'}", default_region="DE"
    )


async def test_the_queue_tile_follows_the_queue_and_a_supervisor_sets_presence(
    client: TestClient, agents: Agents, browser: Any
) -> None:
    boss = await agents.add("Sam Supervisor", role=Role.SUPERVISOR)
    anna = await agents.add("Anna Agent")
    await client.post("/api/v1/inbound", json=inbound("q1", sender="+491711111111"),
                      headers=bearer(boss))  # fmt: skip
    for minutes in (40, 30, 20, 10):  # the chart's last hours
        await client.server.app[DATABASE].run(take_sample, utcnow() - timedelta(minutes=minutes))
    page = await (await browser.new_context(viewport={"width": 1280, "height": 720})).new_page()
    await sign_in(page, client, boss["email"])
    await page.wait_for_url("**/console")
    await page.goto(str(client.make_url("/wallboard")))
    waiting = page.locator("#queue-default [data-figure=waiting]")
    await waiting.wait_for()
    assert await waiting.inner_text() == "1"

    for n in range(2, 4):
        await client.post("/api/v1/inbound", json=inbound(f"q{n}", sender=f"+49171111111{n}"),
                          headers=bearer(boss))  # fmt: skip
    await page.locator("#queue-default [data-figure=waiting]", has_text="3").wait_for(timeout=5000)
    row = page.locator(f"tr[data-agent-id='{anna['id']}']")
    await row.locator("select").select_option("away")
    await row.locator("[data-figure=presence]", has_text="away").wait_for(timeout=5000)
    await screenshot(page, "wallboard")

    me = await client.get("/api/v1/agents/me", headers=bearer(anna))
    assert (await me.json())["presence"] == "away"
    tile = await page.locator("#queue-default").inner_text()
    assert "Service level" in tile and "Longest wait" in tile
    assert await page.locator("#queue-default canvas").count() == 1
    # The chart spans the last eight hours, whatever samples there are (not only their own
    # span, and not years around a single one).
    label = await page.locator("#queue-default .chart-box").get_attribute("aria-label")
    period = re.fullmatch(r"Waiting and service level from (\S+) to (\S+)", label or "")
    assert period, label
    start, end = (datetime.strptime(t, "%H:%M") for t in period.groups())
    span = end - start
    assert span % timedelta(days=1) == timedelta(hours=8)


@pytest.mark.parametrize("path", ["/wallboard", "/campaigns"])
async def test_agents_cannot_open_the_supervisor_pages(
    client: TestClient, agents: Agents, browser: Any, path: str
) -> None:
    """Neither the wallboard nor the campaign page, nor a link to them."""
    anna = await agents.add("Anna Agent")
    page = await browser.new_page()
    await sign_in(page, client, anna["email"])
    await page.wait_for_url("**/console")

    response = await page.goto(str(client.make_url(path)))

    assert response is not None and response.status == 403
    assert await page.locator(f"a[href='{path}']").count() == 0
