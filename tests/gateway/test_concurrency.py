"""Concurrent inbounds never push an agent over capacity nor assign a ticket twice."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.keys import DATABASE
from tests.helpers import Agents, bearer, inbound
from timeline.models import ScreenPop, Ticket

SENDERS = 200
AGENTS = 5
CAPACITY = 3


async def test_200_concurrent_new_senders_and_5_agents_of_capacity_3(
    client: TestClient, agents: Agents
) -> None:
    team = [await agents.add(f"Agent {i}", capacity=str(CAPACITY)) for i in range(AGENTS)]
    for agent in team:
        response = await client.patch(
            f"/api/v1/agents/{agent['id']}", json={"presence": "available"}, headers=bearer(agent)
        )
        assert response.status == 200

    async def send(i: int) -> dict[str, object]:
        payload = inbound(f"burst-{i}", sender=f"+4917{i:08d}")
        response = await client.post("/api/v1/inbound", json=payload, headers=bearer(team[0]))
        assert response.status == 202, await response.text()
        return await response.json()

    results = await asyncio.gather(*(send(i) for i in range(SENDERS)))

    assert len({r["ticket_id"] for r in results}) == SENDERS, "one new ticket per new sender"
    async with client.server.app[DATABASE].reading() as session:
        tickets = list((await session.execute(select(Ticket))).scalars())
        pops = list((await session.execute(select(ScreenPop))).scalars())
    load = Counter(t.assignee_id for t in tickets if t.assignee_id is not None)
    assert set(load) == {a["id"] for a in team}
    assert max(load.values()) <= CAPACITY
    assert sum(load.values()) == AGENTS * CAPACITY, "all capacity used, none exceeded"
    waiting = [t for t in tickets if t.assignee_id is None]
    assert len(waiting) == SENDERS - AGENTS * CAPACITY
    assert all(t.status == "new" for t in waiting)
    popped = Counter(p.payload["ticket"]["id"] for p in pops)
    assert set(popped) == {t.id for t in tickets if t.assignee_id is not None}
    assert set(popped.values()) == {1}, "each assigned ticket popped exactly once"
    assert {p.agent_id for p in pops if p.payload["ticket"]["id"] in popped} <= set(load)
