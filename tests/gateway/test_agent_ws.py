"""`/ws/agent`: presence in, screen-pops out, replay after reconnect."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.bus import agent_topic
from gateway.keys import BUS
from tests.helpers import Agents, bearer, go_available, inbound, nothing_more, receive


def ws_path(agent: dict[str, Any]) -> str:
    return f"/ws/agent?token={agent['token']}"


async def send_inbound(client: TestClient, agent: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/inbound", json=inbound(**kwargs), headers=bearer(agent))
    assert response.status == 202
    return await response.json()


async def test_the_socket_needs_a_token(client: TestClient) -> None:
    response = await client.get("/ws/agent")

    assert response.status == 401
    assert (await response.json())["error"] == "unauthorized"


async def test_a_bearer_header_authenticates_the_socket_too(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add("Anna")
    async with client.ws_connect("/ws/agent", headers=bearer(agent)) as socket:
        hello = await receive(socket, "hello")

    assert hello["agent_id"] == agent["id"]


async def test_an_available_agent_gets_the_new_customer_s_card(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add("Anna")
    async with client.ws_connect(ws_path(agent)) as socket:
        await go_available(socket)
        result = await send_inbound(
            client, agent, external_id="m1", sender="+49 30 5557 1600", name="Bernd Kunde"
        )
        pop = await receive(socket, "screen_pop")

    assert pop["reason"] == "assigned"
    assert pop["channel"] == "sms"
    assert pop["call"] is None
    assert pop["ticket"]["id"] == result["ticket_id"]
    assert pop["ticket"]["number"] == result["ticket_number"]
    contact = pop["contact"]
    assert contact["id"] == result["contact_id"]
    assert contact["name"] == "Bernd Kunde"
    assert contact["identities"] == [{"kind": "phone", "value": "+493055571600"}]
    assert [t["id"] for t in contact["open_tickets"]] == [result["ticket_id"]]
    assert [e["body"] for e in contact["recent"]] == ["message m1"]
    assert isinstance(pop["id"], int)


async def test_a_burst_reaches_the_console_in_order_though_its_socket_backs_up(
    client: TestClient, agents: Agents
) -> None:
    """Published messages go straight to the socket while it takes them, and to the queue
    once its buffer backs up; none overtakes another."""
    agent = await agents.add("Anna")
    bus = client.server.app[BUS]
    filler = "x" * 50_000
    async with client.ws_connect(ws_path(agent)) as socket:
        await receive(socket, "hello")
        for n in range(120):  # 6 MB: more than the kernel and the transport take at once
            await bus.publish(
                agent_topic(agent["id"]), {"type": "pop_withdrawn", "id": n, "f": filler}
            )
            if n % 40 == 39:  # and the console reads some of it in between
                for _ in range(5):
                    await asyncio.sleep(0)
        ids = [(await receive(socket, "pop_withdrawn"))["id"] for _ in range(120)]

    assert ids == list(range(120))


async def test_a_further_message_pops_to_the_agent_holding_the_ticket(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add("Anna")
    async with client.ws_connect(ws_path(agent)) as socket:
        await go_available(socket)
        await send_inbound(client, agent, external_id="m1")
        await receive(socket, "screen_pop")
        await send_inbound(client, agent, external_id="m2")
        pop = await receive(socket, "screen_pop")

    assert pop["reason"] == "new_message"
    assert [e["body"] for e in pop["contact"]["recent"]] == ["message m2", "message m1"]


async def test_a_waiting_ticket_is_offered_when_an_agent_comes_available(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add("Anna")
    waiting = await send_inbound(client, agent, external_id="m1")
    assert waiting["assignee_id"] is None

    async with client.ws_connect(ws_path(agent)) as socket:
        await go_available(socket)
        pop = await receive(socket, "screen_pop")

    assert pop["reason"] == "assigned"
    assert pop["ticket"]["id"] == waiting["ticket_id"]


async def test_an_agent_away_gets_nothing_new(client: TestClient, agents: Agents) -> None:
    agent = await agents.add("Anna")
    async with client.ws_connect(ws_path(agent)) as socket:
        await socket.send_json({"type": "presence", "state": "away"})
        assert (await receive(socket, "presence"))["state"] == "away"
        result = await send_inbound(client, agent, external_id="m1")
        await nothing_more(socket, "screen_pop")

    assert result["assignee_id"] is None


async def test_a_reconnecting_agent_receives_the_pops_it_missed_since_its_last_ack(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add("Anna")
    async with client.ws_connect(ws_path(agent)) as socket:
        await go_available(socket)
        await send_inbound(client, agent, external_id="m1")
        first = await receive(socket, "screen_pop")
        await socket.send_json({"type": "ack", "id": first["id"]})
        await socket.send_json({"type": "ping"})
        await receive(socket, "pong")

    await send_inbound(client, agent, external_id="m2")  # the agent still holds the ticket

    async with client.ws_connect(ws_path(agent)) as socket:
        missed = await receive(socket, "screen_pop")
        await nothing_more(socket, "screen_pop")

    assert missed["reason"] == "new_message"
    assert missed["replayed"] is True
    assert missed["id"] > first["id"]


async def test_unacknowledged_pops_are_replayed_again(client: TestClient, agents: Agents) -> None:
    agent = await agents.add("Anna")
    async with client.ws_connect(ws_path(agent)) as socket:
        await go_available(socket)
        await send_inbound(client, agent, external_id="m1")
        live = await receive(socket, "screen_pop")

    async with client.ws_connect(ws_path(agent)) as socket:
        replayed = await receive(socket, "screen_pop")

    assert replayed["id"] == live["id"]
    assert replayed["ticket"] == live["ticket"]


async def test_closing_the_last_console_takes_the_agent_offline(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add("Anna")
    async with client.ws_connect(ws_path(agent)) as socket:
        await go_available(socket)
    me = await (await client.get("/api/v1/agents/me", headers=bearer(agent))).json()

    assert me["presence"] == "offline"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", "invalid_json"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "presence", "state": "asleep"}', "invalid_presence"),
        ('{"type": "ack", "id": "seven"}', "invalid_ack"),
    ],
    ids=["not-json", "unknown-type", "bad-presence", "bad-ack"],
)
async def test_bad_messages_get_an_error_and_the_socket_stays_open(
    client: TestClient, agents: Agents, message: str, code: str
) -> None:
    agent = await agents.add("Anna")
    async with client.ws_connect(ws_path(agent)) as socket:
        await socket.send_str(message)
        error = await receive(socket, "error")
        await socket.send_json({"type": "ping"})
        await receive(socket, "pong")

    assert error["error"] == code
    assert error["detail"]
