"""Telegram through the gateway: the webhook with its secret token, polling, edits, files, and
replies through the real `python-telegram-bot` client to a local stub of the Bot API."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.app import create_app
from gateway.keys import DATABASE
from gateway.settings import Settings
from tests.helpers import Agents, bearer, go_available, receive
from tests.stubs.telegram_api import TelegramApiStub
from tests.twilio_sms import FAST, event, events, settled
from timeline.models import Contact, EventEdit, Identity, InboundJournal

TOKEN = "7000000001:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
SECRET = "a-long-random-secret_token-1234"
WEBHOOK = "/webhooks/telegram"
FIXTURES = Path(__file__).parent.parent / "fixtures" / "telegram"


def update(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


@pytest.fixture
async def bot_api(aiohttp_server: Any) -> tuple[TelegramApiStub, str]:
    stub = TelegramApiStub(TOKEN)
    server = await aiohttp_server(stub.app())
    return stub, str(server.make_url("")).rstrip("/")


@pytest.fixture
def stub(bot_api: tuple[TelegramApiStub, str]) -> TelegramApiStub:
    return bot_api[0]


def telegram_settings(base: Settings, api_url: str, **changes: Any) -> Settings:
    return replace(
        base,
        telegram_token=TOKEN,
        telegram_secret=SECRET,
        telegram_api_url=api_url,
        outbox=FAST,
        **changes,
    )


@pytest.fixture
async def gateway(
    aiohttp_client: Any, settings: Settings, bot_api: tuple[TelegramApiStub, str]
) -> TestClient:
    return await aiohttp_client(create_app(telegram_settings(settings, bot_api[1])))


async def deliver(client: TestClient, data: dict[str, Any] | bytes, secret: str = SECRET) -> Any:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return await client.post(
        WEBHOOK,
        data=body,
        headers={"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": secret},
    )


async def journal(client: TestClient) -> list[InboundJournal]:
    async with client.server.app[DATABASE].reading() as session:
        return list((await session.execute(select(InboundJournal))).scalars())


async def test_a_message_lands_on_the_timeline_of_a_contact_named_like_on_telegram(
    gateway: TestClient,
) -> None:
    response = await deliver(gateway, update("text.json"))

    assert response.status == 200
    [stored] = await events(gateway)
    assert (stored.channel, stored.sender, stored.external_id) == (
        "telegram",
        "123456789",
        "123456789:101",
    )
    async with gateway.server.app[DATABASE].reading() as session:
        contact = (await session.execute(select(Contact))).scalar_one()
        identity = (await session.execute(select(Identity))).scalar_one()
    assert contact.name == "Anna Schmidt (@anna_s)"
    assert (identity.kind, identity.value) == ("telegram", "123456789")


@pytest.mark.parametrize("secret", ["wrong-secret", ""])
async def test_a_wrong_or_missing_secret_token_is_403_and_stores_nothing(
    gateway: TestClient, secret: str
) -> None:
    response = await deliver(gateway, update("text.json"), secret=secret)

    assert response.status == 403
    assert await events(gateway) == [] and await journal(gateway) == []


async def test_a_resent_update_id_is_stored_once(gateway: TestClient) -> None:
    await deliver(gateway, update("text.json"))
    await deliver(gateway, update("text.json"))

    assert len(await events(gateway)) == 1


async def test_an_edit_changes_the_same_event_and_keeps_the_earlier_text(
    gateway: TestClient,
) -> None:
    agent = await Agents(gateway.server.app).add("Anna Agent")
    async with gateway.ws_connect(f"/ws/agent?token={agent['token']}") as socket:
        await go_available(socket)
        await deliver(gateway, update("text.json"))
        await deliver(gateway, update("edited.json"))
        await deliver(gateway, update("edited.json"))  # Telegram resends
        notice = await receive(socket, "message_edited")

    [stored] = await events(gateway)
    assert stored.body == "Guten Tag, meine Bestellung 4712 ist nicht angekommen."
    assert notice == {"type": "message_edited", "event_id": stored.id, "body": stored.body}
    async with gateway.server.app[DATABASE].reading() as session:
        edits = list((await session.execute(select(EventEdit))).scalars())
    assert [e.previous_body for e in edits] == [
        "Guten Tag, meine Bestellung 4711 ist nicht angekommen."
    ]
    assert [e.status for e in await journal(gateway)] == ["accepted", "accepted"]


async def test_an_edit_of_a_message_never_seen_is_stored_as_that_message(
    gateway: TestClient,
) -> None:
    await deliver(gateway, update("edited.json"))

    [stored] = await events(gateway)
    assert (stored.external_id, stored.body) == (
        "123456789:101",
        "Guten Tag, meine Bestellung 4712 ist nicht angekommen.",
    )


async def test_files_are_fetched_through_get_file_only_when_an_agent_opens_them(
    gateway: TestClient, stub: TelegramApiStub
) -> None:
    stub.files["BQACAgIAAxkBAAIBZ2Vdoc"] = ("documents/file_3.pdf", b"%PDF-1.7 invoice")
    agent = await Agents(gateway.server.app).add("Anna Agent")
    await deliver(gateway, update("document.json"))
    [stored] = await events(gateway)

    response = await gateway.get(f"/api/v1/events/{stored.id}/media/0", headers=bearer(agent))

    assert response.status == 200
    assert await response.read() == b"%PDF-1.7 invoice"
    assert 'filename="Rechnung-4711.pdf"' in response.headers["Content-Disposition"]


async def test_a_reply_is_sent_to_the_users_chat_by_the_bot(
    gateway: TestClient, stub: TelegramApiStub
) -> None:
    agent = await Agents(gateway.server.app).add("Anna Agent")
    await deliver(gateway, update("text.json"))
    [inbound] = await events(gateway)

    response = await gateway.post(
        f"/api/v1/tickets/{inbound.ticket_id}/messages",
        json={"body": "Wir prüfen das sofort."},
        headers=bearer(agent),
    )

    assert response.status == 202
    body = await response.json()
    sent = await settled(gateway, body["outbox_id"])
    assert sent.status == "sent" and sent.provider_id == "123456789:500"
    assert [(m["chat_id"], m["text"]) for m in stub.sent] == [
        ("123456789", "Wir prüfen das sofort.")
    ]
    assert (await event(gateway, body["event_id"])).delivery_status == "sent"


async def reply_to_first_message(client: TestClient) -> int:
    agent = await Agents(client.server.app).add("Anna Agent")
    await deliver(client, update("text.json"))
    [inbound] = await events(client)
    response = await client.post(
        f"/api/v1/tickets/{inbound.ticket_id}/messages",
        json={"body": "Wir prüfen das sofort."},
        headers=bearer(agent),
    )
    outbox_id: int = (await response.json())["outbox_id"]
    return outbox_id


async def test_a_bot_api_outage_is_retried_and_the_reply_sent_once(
    gateway: TestClient, stub: TelegramApiStub
) -> None:
    stub.failures = [502]

    sent = await settled(gateway, await reply_to_first_message(gateway))

    assert (sent.status, sent.attempts) == ("sent", 2)
    assert stub.send_attempts == 2 and len(stub.sent) == 1


async def test_a_user_who_blocked_the_bot_fails_the_reply_at_once(
    gateway: TestClient, stub: TelegramApiStub
) -> None:
    stub.failures = [403]

    failed = await settled(gateway, await reply_to_first_message(gateway))

    assert (failed.status, failed.attempts) == ("failed", 1)
    assert failed.last_error == "Telegram: Forbidden: bot was blocked by the user"
    assert stub.send_attempts == 1 and stub.sent == []


async def test_polling_takes_updates_without_a_webhook(
    aiohttp_client: Any, settings: Settings, bot_api: tuple[TelegramApiStub, str]
) -> None:
    stub, url = bot_api
    client = await aiohttp_client(
        create_app(telegram_settings(settings, url, telegram_polling=True))
    )

    stub.push(update("text.json"))
    stub.push(update("text.json"))  # delivered again before the bot confirmed it
    stub.push(update("photo.json"))

    async with asyncio.timeout(10):
        while len(await events(client)) < 2:  # noqa: ASYNC110 - the poller's progress
            await asyncio.sleep(0.05)
    assert stub.webhook_deleted
    assert sorted(e.external_id for e in await events(client)) == [
        "123456789:101",
        "123456789:102",
    ]


async def test_a_malformed_update_is_400_and_journaled_as_rejected(gateway: TestClient) -> None:
    response = await deliver(gateway, b'{"update_id": "seven"}')

    assert response.status == 400
    assert (await response.json())["error"] == "invalid_payload"
    [entry] = await journal(gateway)
    assert (entry.channel, entry.status) == ("telegram", "rejected")
    assert entry.reason is not None and "update_id" in entry.reason


async def test_an_oversized_update_is_413(gateway: TestClient) -> None:
    big = update("text.json")
    big["message"]["text"] = "x" * 100_000

    response = await deliver(gateway, big)

    assert response.status == 413
    assert await journal(gateway) == []


async def test_updates_without_a_customer_message_are_acknowledged_and_ignored(
    gateway: TestClient,
) -> None:
    response = await deliver(gateway, update("my_chat_member.json"))

    assert response.status == 200
    assert await events(gateway) == []
