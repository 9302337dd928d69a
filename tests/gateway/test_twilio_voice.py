"""Twilio Voice webhooks through the gateway: signed requests in, TwiML out, calls on record."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from gateway.app import create_app
from gateway.keys import DATABASE
from gateway.settings import Settings
from tests.helpers import Agents, go_available, receive
from timeline.models import Call, InboundJournal, Ticket

AUTH_TOKEN = "12345678901234567890123456789012"
PUBLIC_URL = "https://switchboard.example.com"


@pytest.fixture
async def twilio(aiohttp_client: Any, database_url: str) -> TestClient:
    settings = Settings(
        database_url=database_url,
        twilio_auth_token=AUTH_TOKEN,
        public_url=PUBLIC_URL,
        twilio_voice_greeting="Thanks for calling.",
    )
    return await aiohttp_client(create_app(settings))


def ringing(call_sid: str = "CA100", **changes: str) -> dict[str, str]:
    return {
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+4915123456789",
        "To": "+4930555716000",
        "ApiVersion": "2010-04-01",
        **changes,
    }


async def post_signed(
    client: TestClient, path: str, form: dict[str, str], *, signed_url: str | None = None
) -> Any:
    url = signed_url or PUBLIC_URL + path
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, form)
    return await client.post(path, data=form, headers={"X-Twilio-Signature": signature})


async def calls(client: TestClient) -> list[Call]:
    async with client.server.app[DATABASE].reading() as session:
        return list((await session.execute(select(Call))).scalars())


async def test_a_ringing_call_pops_to_available_agents_and_dials_their_clients(
    twilio: TestClient,
) -> None:
    anna = await Agents(twilio.server.app).add("Anna")
    async with twilio.ws_connect(f"/ws/agent?token={anna['token']}") as socket:
        await go_available(socket)
        response = await post_signed(twilio, "/webhooks/twilio/voice", ringing())
        pop = await receive(socket, "screen_pop")

    assert response.status == 200
    assert response.content_type == "text/xml"
    twiml = ET.fromstring(await response.text())
    assert twiml.findtext("Say") == "Thanks for calling."
    dial = twiml.find("Dial")
    assert dial is not None
    assert dial.get("action") == f"{PUBLIC_URL}/webhooks/twilio/voice/status"
    assert [c.text for c in dial.findall("Client")] == [f"agent-{anna['id']}"]
    assert pop["reason"] == "incoming_call"
    assert pop["call"]["id"] == "CA100"
    assert pop["contact"]["identities"] == [{"kind": "phone", "value": "+4915123456789"}]


async def test_with_nobody_available_the_caller_is_queued(twilio: TestClient) -> None:
    response = await post_signed(twilio, "/webhooks/twilio/voice", ringing())

    twiml = ET.fromstring(await response.text())
    assert twiml.find("Dial") is None
    assert twiml.findtext("Enqueue") == "support"


async def test_a_retried_voice_webhook_dials_the_same_agents_and_pops_once(
    twilio: TestClient,
) -> None:
    anna = await Agents(twilio.server.app).add("Anna")
    async with twilio.ws_connect(f"/ws/agent?token={anna['token']}") as socket:
        await go_available(socket)
        first = await post_signed(twilio, "/webhooks/twilio/voice", ringing())
        await receive(socket, "screen_pop")
        again = await post_signed(twilio, "/webhooks/twilio/voice", ringing())

    assert await again.text() == await first.text()
    (call,) = await calls(twilio)
    assert list(call.pops) == [str(anna["id"])]


@pytest.mark.parametrize(
    "signed_url",
    [
        "http://switchboard.example.com/webhooks/twilio/voice",
        "https://other.example.com/webhooks/twilio/voice",
        "https://switchboard.example.com/webhooks/twilio/voice?extra=1",
    ],
    ids=["http-not-https", "other-host", "other-query"],
)
async def test_a_signature_for_another_url_is_403_and_stores_nothing(
    twilio: TestClient, signed_url: str
) -> None:
    response = await post_signed(twilio, "/webhooks/twilio/voice", ringing(), signed_url=signed_url)

    assert response.status == 403
    assert (await response.json())["error"] == "invalid_signature"
    assert await calls(twilio) == []


async def test_a_forged_or_missing_signature_is_403_and_stores_nothing(twilio: TestClient) -> None:
    forged = await twilio.post(
        "/webhooks/twilio/voice", data=ringing(), headers={"X-Twilio-Signature": "Zm9yZ2Vk"}
    )
    unsigned = await twilio.post("/webhooks/twilio/voice", data=ringing())

    assert (forged.status, unsigned.status) == (403, 403)
    async with twilio.server.app[DATABASE].reading() as session:
        assert list((await session.execute(select(InboundJournal))).scalars()) == []


async def test_an_answered_dial_completes_the_call_with_its_duration(twilio: TestClient) -> None:
    await post_signed(twilio, "/webhooks/twilio/voice", ringing())
    report = ringing(CallStatus="in-progress", DialCallStatus="completed", DialCallDuration="95")

    response = await post_signed(twilio, "/webhooks/twilio/voice/status", report)

    assert response.status == 200
    (call,) = await calls(twilio)
    assert (call.state, call.duration_seconds, call.ticket_id) == ("completed", 95, None)


async def test_an_unanswered_dial_is_a_missed_call_with_one_callback_ticket(
    twilio: TestClient,
) -> None:
    await post_signed(twilio, "/webhooks/twilio/voice", ringing())
    report = ringing(CallStatus="in-progress", DialCallStatus="no-answer", DialCallDuration="0")
    await post_signed(twilio, "/webhooks/twilio/voice/status", report)
    finished = ringing(CallStatus="completed", CallDuration="25")

    await post_signed(twilio, "/webhooks/twilio/voice/status", finished)

    (call,) = await calls(twilio)
    assert (call.state, call.cause) == ("missed", "noAnswer")
    async with twilio.server.app[DATABASE].reading() as session:
        tickets = list((await session.execute(select(Ticket))).scalars())
    assert [t.id for t in tickets] == [call.ticket_id]
    assert tickets[0].channel == "voice"


async def test_twilio_answering_the_caller_is_not_an_agent_answering(twilio: TestClient) -> None:
    await post_signed(twilio, "/webhooks/twilio/voice", ringing())

    await post_signed(twilio, "/webhooks/twilio/voice/status", ringing(CallStatus="in-progress"))

    (call,) = await calls(twilio)
    assert call.state == "ringing"


async def test_a_malformed_status_is_400_and_journaled_as_rejected(twilio: TestClient) -> None:
    response = await post_signed(
        twilio, "/webhooks/twilio/voice/status", ringing(CallStatus="exploded")
    )

    assert response.status == 400
    async with twilio.server.app[DATABASE].reading() as session:
        (entry,) = (await session.execute(select(InboundJournal))).scalars()
    assert entry.status == "rejected"


async def test_twilio_webhooks_are_refused_while_twilio_is_not_configured(
    client: TestClient,
) -> None:
    response = await client.post("/webhooks/twilio/voice", data=ringing())

    assert response.status == 403
    assert (await response.json())["error"] == "twilio_disabled"
