"""A campaign survives its gateway being killed mid-batch: every recipient exactly once.

A real `switchboard serve` sends a 1,500-contact SMS campaign to the Twilio stub (in this
process, so the test sees every request the provider would). While it sends, the process is
killed with SIGKILL, then started again on the same database. Afterwards the stub received no
number twice, and every contact it did not receive is accounted for: only a message that was
in the provider's hands at the kill (the outbox's crash rule, `timeline.outbox`) may be left
`failed` as "interrupted", for a person to check; the test plays that person, retries the ones
the stub never got, and then every contact has exactly one message.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from gateway.agents import NewAgent, create_agent
from gateway.outbox import CLAIM_WINDOW, OutboxPolicy
from routing.capacity import Capacity
from tests.processes import GatewayProcess, free_port
from tests.stubs.twilio_api import TwilioApiStub
from tests.twilio_sms import ACCOUNT_SID, AUTH_TOKEN, OUR_NUMBER
from timeline import store
from timeline.db import Database
from timeline.models import CampaignRecipient, OutboxMessage, Role
from timeline.outbox import INTERRUPTED

pytestmark = pytest.mark.timeout(240)

CONTACTS = 1500
REPO = Path(__file__).resolve().parents[2]


def phone(n: int) -> str:
    return f"+4915113{n:06d}"


async def _prepare(database_url: str) -> str:
    """The schema, the audience and a supervisor; the supervisor's token."""
    database = Database(database_url)
    try:
        await database.upgrade()
        async with database.transaction() as session:
            await session.run_sync(
                lambda s: store.create_contacts(
                    s, [(f"C{n}", [("phone", phone(n))]) for n in range(CONTACTS)], tags=["crash"]
                )
            )
            _agent, token = await session.run_sync(
                create_agent,
                NewAgent(
                    name="Sue",
                    email="sue@example.com",
                    password="correct horse battery",
                    role=Role.SUPERVISOR,
                    capacity=Capacity.parse("3"),
                ),
            )
    finally:
        await database.dispose()
    return str(token)


async def _rows(database_url: str) -> list[tuple[CampaignRecipient, OutboxMessage | None]]:
    database = Database(database_url)
    try:
        async with database.reading() as session:
            result = await session.execute(
                select(CampaignRecipient, OutboxMessage).outerjoin(
                    OutboxMessage, OutboxMessage.id == CampaignRecipient.outbox_id
                )
            )
            return [(r, o) for r, o in result.all()]
    finally:
        await database.dispose()


async def test_a_killed_gateway_resumes_the_campaign_without_a_duplicate_or_a_gap(
    database_url: str, tmp_path: Path, twilio: tuple[TwilioApiStub, str]
) -> None:
    stub, stub_url = twilio
    token = await _prepare(database_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")},
        "PYTHONPATH": str(REPO),
        "PORT": str(free_port()),
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_LOG_LEVEL": "WARNING",
        "SWITCHBOARD_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "SWITCHBOARD_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "SWITCHBOARD_TWILIO_API_URL": stub_url,
        "SWITCHBOARD_TWILIO_SMS_FROM": OUR_NUMBER,
        "SWITCHBOARD_OUTBOX_POLL_SECONDS": "0.1",
        # A send cut off by the kill is decided on soon after the restart.
        "SWITCHBOARD_OUTBOX_LEASE_SECONDS": "1",
    }
    auth = {"Authorization": f"Bearer {token}"}
    log = tmp_path / "gateway.log"
    async with aiohttp.ClientSession(headers=auth) as http:
        first = GatewayProcess(env, log, port=int(env["PORT"]), cwd=tmp_path)
        try:
            await first.ready(http)
            body = {
                "name": "Crash",
                "channel": "sms",
                "filter": {"tags_any": ["crash"]},
                "template": {"body": "Hello {{ name }}"},
                "pacing": {"per_second": 300},
            }
            async with http.post(f"{first.url}/api/v1/campaigns", json=body) as response:
                assert response.status == 201, await response.text()
                campaign_id = (await response.json())["id"]
            async with http.post(f"{first.url}/api/v1/campaigns/{campaign_id}/start") as response:
                assert response.status == 200
            async with asyncio.timeout(60):
                while len(stub.messages) < CONTACTS // 4:  # noqa: ASYNC110 - the stub's intake, polled
                    await asyncio.sleep(0.01)
        finally:
            first.kill()
        at_kill = len(stub.messages)
        assert at_kill < CONTACTS, "killed too late to test anything"

        second = GatewayProcess(env, log, port=int(env["PORT"]), cwd=tmp_path)
        try:
            await second.ready(http)
            status = await _wait_completed(http, second.url, campaign_id)
            rows = await _rows(database_url)
            received = Counter(m["To"] for m in stub.messages)
            interrupted = [o for _, o in rows if o is not None and o.last_error == INTERRUPTED]
            # The person's part: retry what the provider never got.
            for row in interrupted:
                if received[row.recipient] == 0:
                    url = f"{second.url}/api/v1/outbox/{row.id}/retry"
                    async with http.post(url) as response:
                        assert response.status == 202
            delivered_anyway = sum(1 for o in interrupted if received[o.recipient])
            await _wait_sent(database_url, len(rows) - delivered_anyway)
        finally:
            second.stop()

    everyone = {phone(n) for n in range(CONTACTS)}
    assert status["counts"]["targeted"] == CONTACTS
    assert len(rows) == CONTACTS
    assert len({r.contact_id for r, _ in rows}) == CONTACTS
    assert max(received.values()) == 1, "a recipient got the campaign twice"
    never_sent = [o for o in interrupted if not received[o.recipient]]
    # The outbox's window: sends in flight and claimed ahead (gateway.outbox).
    window = CLAIM_WINDOW * OutboxPolicy().concurrency
    assert len(never_sent) <= window, "only sends claimed at the kill may be interrupted"
    final = Counter(m["To"] for m in stub.messages)
    assert set(final) == everyone
    assert set(final.values()) == {1}


async def _wait_completed(http: aiohttp.ClientSession, url: str, campaign_id: int) -> Any:
    async with asyncio.timeout(120):
        while True:
            async with http.get(f"{url}/api/v1/campaigns/{campaign_id}") as response:
                body = await response.json()
            if body["status"] == "completed":
                return body
            await asyncio.sleep(0.1)


async def _wait_sent(database_url: str, total: int) -> None:
    async with asyncio.timeout(60):
        while True:
            rows = await _rows(database_url)
            if sum(1 for _, o in rows if o is not None and o.status == "sent") == total:
                return
            await asyncio.sleep(0.1)
