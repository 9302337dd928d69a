"""Campaigns on e-mail (a real SMTP peer, aiosmtpd) and Telegram (the Bot API stub, through
python-telegram-bot): the same dispatch, each channel's own sender."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.campaigns import CAMPAIGN_POLICY, CampaignPolicy
from gateway.keys import DATABASE
from gateway.settings import Settings
from tests.helpers import Agents, bearer
from tests.smtp_peer import SmtpPeer, account_for
from tests.stubs.telegram_api import TelegramApiStub
from tests.twilio_sms import FAST
from timeline import store
from timeline.models import Role

TOKEN = "7000000001:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


async def _run(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    boss = bearer(await Agents(client.server.app).add("Sue", role=Role.ADMIN))
    async with client.server.app[DATABASE].transaction() as session:
        await session.run_sync(
            lambda s: store.create_contacts(
                s,
                [
                    ("Anna Adler", [("email", "anna@example.com"), ("telegram", "1001")]),
                    ("Bert Brandt", [("email", "bert@example.com"), ("telegram", "1002")]),
                    ("Carla", [("phone", "+4930555716001")]),  # neither mail nor Telegram
                ],
                attributes={"abc_class": "A"},
            )
        )
    created = await client.post("/api/v1/campaigns", json=body, headers=boss)
    assert created.status == 201, await created.text()
    campaign_id = (await created.json())["id"]
    started = await client.post(f"/api/v1/campaigns/{campaign_id}/start", headers=boss)
    assert started.status == 200
    async with asyncio.timeout(20):
        while True:
            response = await client.get(f"/api/v1/campaigns/{campaign_id}", headers=boss)
            found: dict[str, Any] = await response.json()
            if found["status"] == "completed":
                return found
            await asyncio.sleep(0.05)


@pytest.fixture
async def mail_gateway(aiohttp_client: Any, settings: Settings, smtp_peer: SmtpPeer) -> TestClient:
    app = create_app(replace(settings, smtp=account_for(smtp_peer), outbox=FAST))
    app[CAMPAIGN_POLICY] = CampaignPolicy(poll_interval=0.05)
    return await aiohttp_client(app)


async def test_an_email_campaign_to_the_a_customers(
    mail_gateway: TestClient, smtp_peer: SmtpPeer
) -> None:
    done = await _run(
        mail_gateway,
        {
            "name": "Newsletter",
            "channel": "email",
            "filter": {"abc_class": ["A"]},
            "template": {
                "subject": "News for {{ first_name }}",
                "text": "Dear {{ name }},\nour news.",
                "html": "<p>Dear {{ name }}</p>",
            },
        },
    )

    sent = await smtp_peer.wait_for(2)
    assert sorted(m["To"] for m in sent) == ["anna@example.com", "bert@example.com"]
    anna = next(m for m in sent if m["To"] == "anna@example.com")
    assert anna["Subject"] == "News for Anna"
    assert "Dear Anna Adler" in anna.get_body(("plain",)).get_content()
    assert done["counts"]["sent"] == 2
    assert done["counts"]["skipped"] == {"no_address": 1}


@pytest.fixture
async def bot_gateway(aiohttp_client: Any, aiohttp_server: Any, settings: Settings) -> Any:
    stub = TelegramApiStub(TOKEN)
    server = await aiohttp_server(stub.app())
    url = str(server.make_url("")).rstrip("/")
    app = create_app(replace(settings, telegram_token=TOKEN, telegram_api_url=url, outbox=FAST))
    app[CAMPAIGN_POLICY] = CampaignPolicy(poll_interval=0.05)
    return await aiohttp_client(app), stub


async def test_a_telegram_campaign(bot_gateway: tuple[TestClient, TelegramApiStub]) -> None:
    client, stub = bot_gateway

    done = await _run(
        client,
        {
            "name": "Notice",
            "channel": "telegram",
            "filter": {"channel": "telegram"},
            "template": {"body": "Hello {{ first_name }}, we moved."},
        },
    )

    assert sorted((str(m["chat_id"]), m["text"]) for m in stub.sent) == [
        ("1001", "Hello Anna, we moved."),
        ("1002", "Hello Bert, we moved."),
    ]
    assert done["counts"]["targeted"] == 2
    assert done["counts"]["sent"] == 2
