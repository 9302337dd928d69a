"""Two gateways on one PostgreSQL and one Redis behave as one."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.app import create_app
from gateway.keys import DATABASE
from gateway.settings import Settings
from tests.helpers import Agents, bearer, empty_postgres, go_available, inbound, receive
from timeline.models import Ticket

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
async def two_gateways(
    aiohttp_client: Any, postgres_database: str, redis_url: str
) -> tuple[TestClient, TestClient]:
    await empty_postgres(postgres_database)
    settings = Settings(database_url=postgres_database, redis_url=redis_url)
    first = await aiohttp_client(create_app(settings))
    second = await aiohttp_client(create_app(settings))
    return first, second


async def test_a_pop_decided_on_one_gateway_reaches_the_agent_on_the_other(
    two_gateways: tuple[TestClient, TestClient],
) -> None:
    first, second = two_gateways
    agent = await Agents(first.server.app).add("Anna")

    async with second.ws_connect(f"/ws/agent?token={agent['token']}") as socket:
        await go_available(socket)
        response = await first.post(
            "/api/v1/inbound", json=inbound("m1", name="Bernd"), headers=bearer(agent)
        )
        result = await response.json()
        pop = await receive(socket, "screen_pop")

    assert pop["reason"] == "assigned"
    assert pop["ticket"]["id"] == result["ticket_id"]
    assert pop["contact"]["name"] == "Bernd"


async def test_concurrent_inbounds_on_both_gateways_never_over_assign(
    two_gateways: tuple[TestClient, TestClient],
) -> None:
    first, second = two_gateways
    team = [await Agents(first.server.app).add(f"Agent {i}", capacity="3") for i in range(5)]
    for agent in team:
        await first.patch(
            f"/api/v1/agents/{agent['id']}", json={"presence": "available"}, headers=bearer(agent)
        )

    async def send(i: int) -> None:
        gateway = first if i % 2 else second
        payload = inbound(f"burst-{i}", sender=f"+4917{i:08d}")
        response = await gateway.post("/api/v1/inbound", json=payload, headers=bearer(team[0]))
        assert response.status == 202, await response.text()

    await asyncio.gather(*(send(i) for i in range(200)))

    async with first.server.app[DATABASE].reading() as session:
        tickets = list((await session.execute(select(Ticket))).scalars())
    load = Counter(t.assignee_id for t in tickets if t.assignee_id is not None)
    assert len(tickets) == 200
    assert max(load.values()) == 3
    assert sum(load.values()) == 15
