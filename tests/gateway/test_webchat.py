"""Web chat through the gateway: the customer's socket, agent replies pushed live through the
outbox, history, pre-chat and offline forms, origins, pace, and several processes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.app import create_app
from gateway.keys import DATABASE
from gateway.settings import Settings
from tests.helpers import Agents, bearer, go_available, receive
from tests.twilio_sms import FAST, event, events, settled
from timeline.models import Contact, Identity, Ticket

VISITOR = "v_3f9c2a7d41b84e0c9a"


@pytest.fixture
def chat_settings(settings: Settings) -> Settings:
    return replace(settings, outbox=FAST, webchat_origins=("https://shop.example.com",))


@pytest.fixture
async def gateway(aiohttp_client: Any, chat_settings: Settings) -> TestClient:
    return await aiohttp_client(create_app(chat_settings))


def open_chat(client: TestClient, visitor: str = VISITOR, origin: str | None = None) -> Any:
    own = f"http://{client.host}:{client.port}"
    return client.ws_connect(f"/ws/chat?visitor={visitor}", origin=origin or own)


async def write(socket: Any, text: str, client_id: str) -> dict[str, Any]:
    await socket.send_json({"type": "message", "text": text, "client_id": client_id})
    return await receive(socket, "sent")


async def identities(client: TestClient) -> set[tuple[int, str, str]]:
    async with client.server.app[DATABASE].reading() as session:
        rows = (await session.execute(select(Identity))).scalars()
        return {(i.contact_id, i.kind, i.value) for i in rows}


async def test_a_visitor_is_welcomed_with_an_id_and_whether_anyone_is_there(
    gateway: TestClient,
) -> None:
    async with gateway.ws_connect("/ws/chat") as socket:
        welcome = await receive(socket, "welcome")

    assert len(welcome["visitor"]) >= 16
    assert (welcome["agents_available"], welcome["history"]) == (False, [])


async def test_a_visitors_message_is_on_the_timeline_and_the_agents_reply_arrives_live(
    gateway: TestClient,
) -> None:
    agent = await Agents(gateway.server.app).add("Anna")
    async with gateway.ws_connect(f"/ws/agent?token={agent['token']}") as console:
        await go_available(console)
        async with open_chat(gateway) as chat:
            assert (await receive(chat, "welcome"))["agents_available"] is True
            sent = await write(chat, "Is my order <b>4711</b> on its way?", "c1")
            [inbound] = await events(gateway)
            response = await gateway.post(
                f"/api/v1/tickets/{inbound.ticket_id}/messages",
                json={"body": "Yes, it ships today."},
                headers=bearer(agent),
            )
            reply = await receive(chat, "message")
            reply = reply if reply["direction"] == "out" else await receive(chat, "message")
            status = await receive(console, "message_status")
            status = (
                status
                if status["status"] == "delivered"
                else await receive(console, "message_status")
            )

    assert sent["id"] == f"{VISITOR}:c1"
    assert (inbound.channel, inbound.sender, inbound.body) == (
        "webchat",
        VISITOR,
        "Is my order <b>4711</b> on its way?",
    )
    assert (reply["direction"], reply["body"]) == ("out", "Yes, it ships today.")
    body = await response.json()
    assert reply["id"] == (await event(gateway, body["event_id"])).external_id
    assert (await settled(gateway, body["outbox_id"])).status == "delivered"
    assert status["event_id"] == body["event_id"]
    assert VISITOR in {v for _, k, v in await identities(gateway) if k == "webchat"}


async def test_the_conversation_comes_back_on_reconnect(gateway: TestClient) -> None:
    agent = await Agents(gateway.server.app).add("Anna")
    async with open_chat(gateway) as chat:
        await write(chat, "Hello?", "c1")
    [inbound] = await events(gateway)
    response = await gateway.post(
        f"/api/v1/tickets/{inbound.ticket_id}/messages",
        json={"body": "Hi, how can I help?"},
        headers=bearer(agent),
    )
    await settled(gateway, (await response.json())["outbox_id"])

    async with open_chat(gateway) as chat:
        welcome = await receive(chat, "welcome")

    assert [(m["direction"], m["body"]) for m in welcome["history"]] == [
        ("in", "Hello?"),
        ("out", "Hi, how can I help?"),
    ]


async def test_a_message_resent_after_a_reconnect_is_stored_once(gateway: TestClient) -> None:
    async with open_chat(gateway) as chat:
        await write(chat, "Hello?", "c1")
        await write(chat, "Hello?", "c1")

    assert len(await events(gateway)) == 1


async def test_pages_of_other_origins_may_not_open_the_chat(gateway: TestClient) -> None:
    with pytest.raises(WSServerHandshakeError) as refused:
        async with open_chat(gateway, origin="https://evil.example.net"):
            pass
    assert refused.value.status == 403

    async with open_chat(gateway, origin="https://shop.example.com") as chat:
        assert (await receive(chat, "welcome"))["visitor"] == VISITOR


async def test_a_visitor_who_writes_too_fast_is_slowed_down(
    aiohttp_client: Any, chat_settings: Settings
) -> None:
    client = await aiohttp_client(create_app(replace(chat_settings, webchat_messages_per_minute=2)))
    async with open_chat(client) as chat:
        await write(chat, "one", "c1")
        await write(chat, "two", "c2")
        await chat.send_json({"type": "message", "text": "three", "client_id": "c3"})
        error = await receive(chat, "error")

    assert error["error"] == "rate_limited"
    assert [e.body for e in await events(client)] == ["one", "two"]


async def test_the_pre_chat_email_joins_the_visitors_contact(gateway: TestClient) -> None:
    async with open_chat(gateway) as chat:
        await chat.send_json(
            {"type": "prechat", "name": "Anna Schmidt", "email": "Anna@Example.de"}
        )
        await receive(chat, "prechat_ok")
        await write(chat, "Hello", "c1")

    rows = await identities(gateway)
    assert {(k, v) for _, k, v in rows} == {("webchat", VISITOR), ("email", "anna@example.de")}
    assert len({c for c, _, _ in rows}) == 1
    async with gateway.server.app[DATABASE].reading() as session:
        contact = (await session.execute(select(Contact))).scalar_one()
    assert contact.name == "Anna Schmidt"


async def test_with_nobody_there_the_offline_form_becomes_an_email_ticket(
    gateway: TestClient,
) -> None:
    async with open_chat(gateway) as chat:
        await chat.send_json(
            {
                "type": "offline",
                "name": "Anna Schmidt",
                "email": "anna@example.de",
                "text": "Please call me back about my invoice.",
                "client_id": "f1",
            }
        )
        done = await receive(chat, "offline_ok")

    [stored] = await events(gateway)
    assert (stored.channel, stored.sender, stored.subject) == (
        "email",
        "anna@example.de",
        "Web chat message from Anna Schmidt",
    )
    async with gateway.server.app[DATABASE].reading() as session:
        ticket = await session.get(Ticket, stored.ticket_id)
    assert ticket is not None and (ticket.channel, ticket.number) == (
        "email",
        done["ticket_number"],
    )
    rows = await identities(gateway)
    assert {(k, v) for _, k, v in rows} == {("webchat", VISITOR), ("email", "anna@example.de")}
    assert len({c for c, _, _ in rows}) == 1


async def test_typing_shows_on_both_sides(gateway: TestClient) -> None:
    agent = await Agents(gateway.server.app).add("Anna")
    async with gateway.ws_connect(f"/ws/agent?token={agent['token']}") as console:
        await go_available(console)
        async with open_chat(gateway) as chat:
            await write(chat, "Hello", "c1")
            [inbound] = await events(gateway)
            await chat.send_json({"type": "typing"})
            seen_by_agent = await receive(console, "typing")
            response = await gateway.post(
                f"/api/v1/tickets/{inbound.ticket_id}/typing", headers=bearer(agent)
            )
            seen_by_visitor = await receive(chat, "typing")

    assert seen_by_agent == {"type": "typing", "channel": "webchat", "ticket_id": inbound.ticket_id}
    assert response.status == 202 and seen_by_visitor == {"type": "typing"}


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("not json", "invalid_json"),
        ('{"type": "message", "text": "", "client_id": "c1"}', "invalid_payload"),
        ('{"type": "message", "text": "hi", "client_id": "no spaces"}', "invalid_payload"),
        ('{"type": "message", "text": "' + "x" * 4001 + '", "client_id": "c1"}', "too_long"),
        ('{"type": "prechat", "name": "Anna", "email": "not-an-address"}', "invalid_email"),
        ('{"type": "dance"}', "unknown_type"),
    ],
)
async def test_bad_frames_are_answered_with_an_error_and_store_nothing(
    gateway: TestClient, frame: str, error: str
) -> None:
    async with open_chat(gateway) as chat:
        await chat.send_str(frame)
        answer = await receive(chat, "error")

    assert answer["error"] == error
    assert await events(gateway) == []


async def test_the_widget_and_its_demo_page_are_served(gateway: TestClient) -> None:
    script = await gateway.get("/chat/widget.js")
    page = await gateway.get("/chat/demo")

    assert script.status == 200 and script.content_type == "text/javascript"
    assert "textContent" in await script.text() and "innerHTML" not in await script.text()
    assert page.status == 200 and '<script src="/chat/widget.js"' in await page.text()
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]


@pytest.mark.redis
async def test_a_reply_sent_by_another_process_reaches_the_visitor(
    aiohttp_client: Any, chat_settings: Settings, redis_url: str
) -> None:
    shared = replace(chat_settings, redis_url=redis_url)
    holding_the_chat = await aiohttp_client(create_app(shared))
    sending = await aiohttp_client(create_app(shared))
    agent = await Agents(sending.server.app).add("Anna")

    async with open_chat(holding_the_chat, visitor="v_other_process_0001") as chat:
        await receive(chat, "welcome")
        await write(chat, "Anyone there?", "c1")
        [inbound] = await events(sending)
        await sending.post(
            f"/api/v1/tickets/{inbound.ticket_id}/messages",
            json={"body": "Yes, from the other process."},
            headers=bearer(agent),
        )
        async with asyncio.timeout(10):
            while (message := await receive(chat, "message"))["direction"] != "out":
                pass

    assert message["body"] == "Yes, from the other process."
