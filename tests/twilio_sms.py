"""Shared by the messaging tests: a gateway aimed at the Twilio stub, and the outbox polled."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from gateway.keys import DATABASE
from gateway.outbox import OutboxPolicy
from gateway.settings import Settings
from tests.stubs.twilio_api import TwilioApiStub
from timeline.models import OutboxMessage, TimelineEvent

ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
AUTH_TOKEN = "12345678901234567890123456789012"
PUBLIC_URL = "https://switchboard.example.com"
OUR_NUMBER = "+4930555716000"
CUSTOMER = "+4915123456789"
FIXTURES = Path(__file__).parent / "fixtures" / "twilio_sms"
FAST = OutboxPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.05, poll_interval=0.1)


def sms_settings(base: Settings, api_url: str, **changes: Any) -> Settings:
    return replace(
        base,
        public_url=PUBLIC_URL,
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_api_url=api_url,
        twilio_sms_from=OUR_NUMBER,
        sms_help_text="Support: call 030 5557 1600, Mon-Fri 9-17. Reply STOP to opt out.",
        outbox=FAST,
        **changes,
    )


def form(name: str, api_url: str = "https://api.twilio.com", **changes: str) -> dict[str, str]:
    data = json.loads((FIXTURES / name).read_text())
    return {k: str(v).replace("{api}", api_url) for k, v in {**data, **changes}.items()}


async def post_signed(
    client: TestClient, path: str, params: dict[str, str], *, signed_url: str | None = None
) -> Any:
    url = signed_url or PUBLIC_URL + path
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, params)
    return await client.post(path, data=params, headers={"X-Twilio-Signature": signature})


async def outbox_row(client: TestClient, outbox_id: int) -> OutboxMessage:
    async with client.server.app[DATABASE].reading() as session:
        row = await session.get(OutboxMessage, outbox_id)
    assert row is not None
    return row


async def settled(client: TestClient, outbox_id: int, within: float = 15.0) -> OutboxMessage:
    """The outbox row once it left queued/sending."""
    async with asyncio.timeout(within):
        while (row := await outbox_row(client, outbox_id)).status in ("queued", "sending"):  # noqa: ASYNC110 - the worker's progress, polled
            await asyncio.sleep(0.02)
    return row


async def event(client: TestClient, event_id: int) -> TimelineEvent:
    async with client.server.app[DATABASE].reading() as session:
        found = await session.get(TimelineEvent, event_id)
    assert found is not None
    return found


async def events(client: TestClient) -> list[TimelineEvent]:
    async with client.server.app[DATABASE].reading() as session:
        return list((await session.execute(select(TimelineEvent))).scalars())


def stub() -> TwilioApiStub:
    return TwilioApiStub(ACCOUNT_SID, AUTH_TOKEN)
