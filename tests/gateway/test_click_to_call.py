"""`POST /api/v1/calls`: click-to-call through Twilio's REST API (a local stub), or a PBX."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.settings import Settings
from tests.helpers import Agents, bearer
from tests.stubs.twilio_api import TwilioApiStub

ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
AUTH_TOKEN = "12345678901234567890123456789012"
CALLER_ID = "+4930555716000"
PUBLIC_URL = "https://switchboard.example.com"


@pytest.fixture
async def twilio_api(aiohttp_server: Any) -> tuple[TwilioApiStub, TestServer]:
    stub = TwilioApiStub(ACCOUNT_SID, AUTH_TOKEN)
    return stub, await aiohttp_server(stub.app())


@pytest.fixture
async def gateway(
    aiohttp_client: Any, database_url: str, twilio_api: tuple[TwilioApiStub, TestServer]
) -> TestClient:
    _, server = twilio_api
    settings = Settings(
        database_url=database_url,
        public_url=PUBLIC_URL,
        twilio_auth_token=AUTH_TOKEN,
        twilio_account_sid=ACCOUNT_SID,
        twilio_caller_id=CALLER_ID,
        twilio_api_url=str(server.make_url("")).rstrip("/"),
    )
    return await aiohttp_client(create_app(settings))


async def test_twilio_calls_the_customer_and_connects_the_agent(
    gateway: TestClient, twilio_api: tuple[TwilioApiStub, TestServer]
) -> None:
    stub, _ = twilio_api
    anna = await Agents(gateway.server.app).add("Anna")

    response = await gateway.post(
        "/api/v1/calls", json={"to": "030 5557 1600"}, headers=bearer(anna)
    )

    assert response.status == 201
    call = (await response.json())["call"]
    (sent,) = stub.calls
    assert (sent["To"], sent["From"]) == ("+493055571600", CALLER_ID)
    assert sent["StatusCallback"] == f"{PUBLIC_URL}/webhooks/twilio/voice/status"
    client = ET.fromstring(sent["Twiml"]).find("Dial/Client")
    assert client is not None and client.text == f"agent-{anna['id']}"
    assert (call["direction"], call["state"], call["provider"]) == ("out", "ringing", "twilio")
    assert call["call_id"].startswith("CA")
    timeline = await gateway.get(
        f"/api/v1/contacts/{call['contact_id']}/timeline", headers=bearer(anna)
    )
    (event,) = (await timeline.json())["events"]
    assert (event["kind"], event["direction"]) == ("call", "out")


async def test_calling_a_contact_uses_its_phone_and_files_the_call_on_the_ticket(
    gateway: TestClient, twilio_api: tuple[TwilioApiStub, TestServer]
) -> None:
    stub, _ = twilio_api
    anna = await Agents(gateway.server.app).add("Anna")
    made = await gateway.post(
        "/api/v1/inbound",
        json={"channel": "sms", "from": "+4915123456789", "to": CALLER_ID,
              "external_id": "m1", "body": "please call me"},
        headers=bearer(anna),
    )  # fmt: skip
    inbound = await made.json()

    response = await gateway.post(
        "/api/v1/calls",
        json={"contact_id": inbound["contact_id"], "ticket_id": inbound["ticket_id"]},
        headers=bearer(anna),
    )

    call = (await response.json())["call"]
    assert stub.calls[0]["To"] == "+4915123456789"
    assert (call["contact_id"], call["ticket_id"]) == (inbound["contact_id"], inbound["ticket_id"])


async def test_a_twilio_failure_is_a_502_and_no_call_is_recorded(
    gateway: TestClient, twilio_api: tuple[TwilioApiStub, TestServer]
) -> None:
    stub, _ = twilio_api
    stub.failures.append(400)
    anna = await Agents(gateway.server.app).add("Anna")

    response = await gateway.post(
        "/api/v1/calls", json={"to": "+4915123456789"}, headers=bearer(anna)
    )

    assert response.status == 502
    assert (await response.json())["error"] == "provider_error"
    listed = await gateway.get("/api/v1/calls", headers=bearer(anna))
    assert (await listed.json())["calls"] == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"to": "call me maybe"}, "invalid_number"),
        ({}, "invalid_payload"),
        ({"contact_id": 999}, "no_phone"),
        ({"to": "+4915123456789", "ticket_id": 999}, "invalid_ticket"),
    ],
    ids=["not-a-number", "nobody", "unknown-contact", "unknown-ticket"],
)
async def test_a_call_to_nobody_is_400(
    gateway: TestClient,
    twilio_api: tuple[TwilioApiStub, TestServer],
    body: dict[str, Any],
    code: str,
) -> None:
    stub, _ = twilio_api
    anna = await Agents(gateway.server.app).add("Anna")

    response = await gateway.post("/api/v1/calls", json=body, headers=bearer(anna))

    assert response.status == 400
    assert (await response.json())["error"] == code
    assert stub.calls == []


async def test_without_twilio_the_agent_gets_the_dial_instruction_for_the_pbx(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna", extension="201")

    response = await client.post(
        "/api/v1/calls", json={"to": "+4915123456789"}, headers=bearer(anna)
    )

    assert response.status == 200
    assert await response.json() == {
        "dial": {"to": "+4915123456789", "extension": "201"},
        "call": None,
    }
