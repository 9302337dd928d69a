"""Group commit: inbounds that arrive together are stored together, yet each stands alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.keys import BUS, DATABASE
from tests.helpers import Agents, bearer, inbound, receive
from timeline import store
from timeline.models import InboundJournal, TimelineEvent


async def post_all(
    client: TestClient, agent: dict[str, Any], payloads: list[dict[str, Any]]
) -> list[tuple[int, dict[str, Any]]]:
    async def post(payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = await client.post("/api/v1/inbound", json=payload, headers=bearer(agent))
        return response.status, await response.json()

    return await asyncio.gather(*(post(p) for p in payloads))


async def test_copies_of_one_event_arriving_together_store_it_once(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()

    answers = await post_all(client, agent, [inbound("same-id") for _ in range(10)])

    assert {status for status, _ in answers} == {202}
    assert len({body["event_id"] for _, body in answers}) == 1
    assert sorted(body["duplicate"] for _, body in answers) == [False] + [True] * 9
    async with client.server.app[DATABASE].reading() as session:
        assert await session.run_sync(store.count, TimelineEvent) == 1
        assert await session.run_sync(store.count, InboundJournal) == 1


async def test_messages_of_one_new_sender_arriving_together_share_contact_and_ticket(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()

    answers = await post_all(
        client, agent, [inbound(f"m{i}", sender="+49 30 5557 1600") for i in range(10)]
    )

    assert len({body["contact_id"] for _, body in answers}) == 1
    assert len({body["ticket_id"] for _, body in answers}) == 1
    assert len({body["event_id"] for _, body in answers}) == 10


async def test_one_event_that_cannot_be_stored_fails_alone(
    client: TestClient, agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await agents.add()
    add_events = store.add_events

    def refuse_poison(session: Any, rows: list[dict[str, Any]]) -> list[int]:
        if any(row["external_id"] == "poison" for row in rows):
            raise RuntimeError("this event cannot be stored")
        return add_events(session, rows)

    monkeypatch.setattr(store, "add_events", refuse_poison)
    payloads = [inbound(f"good-{i}", sender=f"+4917{i:08d}") for i in range(8)]
    payloads.insert(4, inbound("poison"))

    answers = await post_all(client, agent, payloads)

    statuses = {
        payload["external_id"]: status
        for payload, (status, _) in zip(payloads, answers, strict=True)
    }
    assert statuses.pop("poison") == 500
    assert set(statuses.values()) == {202}
    async with client.server.app[DATABASE].reading() as session:
        journal = list((await session.execute(select(InboundJournal))).scalars())
        stored = await session.run_sync(store.count, TimelineEvent)
    assert stored == 8
    assert sorted(e.status for e in journal) == ["accepted"] * 8 + ["failed"]


async def test_a_bus_failure_after_the_commit_still_answers_202_and_the_pop_waits_for_replay(
    client: TestClient, agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    anna = await agents.add("Anna")
    await client.patch(
        f"/api/v1/agents/{anna['id']}", json={"presence": "available"}, headers=bearer(anna)
    )

    async def bus_down(*_args: Any, **_kwargs: Any) -> None:
        raise ConnectionError("redis went away")

    monkeypatch.setattr(client.server.app[BUS], "publish", bus_down)
    response = await client.post("/api/v1/inbound", json=inbound("m1"), headers=bearer(anna))
    monkeypatch.undo()

    assert response.status == 202
    async with client.ws_connect(f"/ws/agent?token={anna['token']}") as socket:
        pop = await receive(socket, "screen_pop")
    assert pop["ticket"]["id"] == (await response.json())["ticket_id"]
    assert pop["replayed"] is True
