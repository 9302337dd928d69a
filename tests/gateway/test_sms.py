"""SMS/MMS through the gateway: signed webhooks in, replies out through the real `twilio`
client to a local stub of Twilio's REST API, opt-outs, receipts and the outbox's guarantees."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from channels.sending import Reply, Thread
from channels.twilio_sms import SmsAccount, TwilioSmsSender
from gateway.app import create_app
from gateway.keys import DATABASE, OUTBOX
from gateway.settings import Settings
from tests.helpers import Agents, bearer, go_available, receive
from tests.stubs.twilio_api import TwilioApiStub
from tests.twilio_sms import (
    CUSTOMER,
    FAST,
    OUR_NUMBER,
    PUBLIC_URL,
    event,
    events,
    form,
    outbox_row,
    post_signed,
    settled,
    sms_settings,
)
from timeline import outbox
from timeline.db import Database
from timeline.models import InboundJournal, OptOut
from timeline.outbox import NewOutbound

SMS = "/webhooks/twilio/sms"
STATUS = "/webhooks/twilio/sms/status"


@pytest.fixture
async def gateway(
    aiohttp_client: Any, settings: Settings, twilio: tuple[TwilioApiStub, str]
) -> TestClient:
    return await aiohttp_client(create_app(sms_settings(settings, twilio[1])))


@pytest.fixture
def api(twilio: tuple[TwilioApiStub, str]) -> TwilioApiStub:
    return twilio[0]


async def journal(client: TestClient) -> list[InboundJournal]:
    async with client.server.app[DATABASE].reading() as session:
        return list((await session.execute(select(InboundJournal))).scalars())


async def customer_writes(client: TestClient, name: str = "text.json", **changes: str) -> Any:
    response = await post_signed(client, SMS, form(name, **changes))
    assert response.status == 200, await response.text()
    return response


async def ticket_of_first_message(client: TestClient) -> int:
    await customer_writes(client)
    [first] = await events(client)
    assert first.ticket_id is not None
    return first.ticket_id


async def reply(client: TestClient, agent: dict[str, Any], ticket_id: int, text: str) -> Any:
    return await client.post(
        f"/api/v1/tickets/{ticket_id}/messages", json={"body": text}, headers=bearer(agent)
    )


async def test_a_signed_message_is_on_the_timeline_and_answered_with_empty_twiml(
    gateway: TestClient,
) -> None:
    response = await customer_writes(gateway)

    assert response.content_type == "text/xml"
    assert await response.text() == '<?xml version="1.0" encoding="UTF-8"?><Response />'
    [stored] = await events(gateway)
    assert (stored.channel, stored.direction, stored.sender) == ("sms", "in", CUSTOMER)
    assert stored.external_id == form("text.json")["MessageSid"]
    assert stored.body == "Hallo, mein Router blinkt rot. Können Sie helfen?"
    assert stored.ticket_id is not None


async def test_a_forged_or_missing_signature_is_403_and_stores_nothing(
    gateway: TestClient,
) -> None:
    forged = await gateway.post(SMS, data=form("text.json"), headers={"X-Twilio-Signature": "AAAA"})
    unsigned = await gateway.post(SMS, data=form("text.json"))

    assert (forged.status, unsigned.status) == (403, 403)
    assert (await forged.json())["error"] == "invalid_signature"
    assert await events(gateway) == [] and await journal(gateway) == []


async def test_a_signature_for_another_url_is_403_and_stores_nothing(gateway: TestClient) -> None:
    seen_by_us = str(gateway.make_url(SMS))
    response = await post_signed(gateway, SMS, form("text.json"), signed_url=seen_by_us)

    assert response.status == 403
    assert await events(gateway) == [] and await journal(gateway) == []


async def test_a_resent_message_sid_is_stored_once(gateway: TestClient) -> None:
    await customer_writes(gateway)
    await customer_writes(gateway)

    assert len(await events(gateway)) == 1


async def test_mms_media_are_fetched_only_when_an_agent_opens_them(
    gateway: TestClient, twilio: tuple[TwilioApiStub, str]
) -> None:
    api, url = twilio
    params = form("mms_two_images.json", api_url=url)
    prefix = f"{url}/2010-04-01/Accounts/{api.account_sid}/"
    api.media[params["MediaUrl0"].removeprefix(prefix)] = ("image/jpeg", b"\xff\xd8\xff\xe0photo")
    agent = await Agents(gateway.server.app).add("Anna")

    response = await post_signed(gateway, SMS, params)

    assert response.status == 200
    [stored] = await events(gateway)
    assert [(a["filename"], a["content_type"]) for a in stored.attachments] == [
        ("media-1.jpg", "image/jpeg"),
        ("media-2.png", "image/png"),
    ]
    media = await gateway.get(f"/api/v1/events/{stored.id}/media/0", headers=bearer(agent))
    assert media.status == 200
    assert await media.read() == b"\xff\xd8\xff\xe0photo"
    assert media.headers["Content-Type"] == "application/octet-stream"
    assert media.headers["X-Content-Type-Options"] == "nosniff"
    gone = await gateway.get(f"/api/v1/events/{stored.id}/media/1", headers=bearer(agent))
    assert gone.status == 404
    anonymous = await gateway.get(f"/api/v1/events/{stored.id}/media/0")
    assert anonymous.status == 401


async def test_media_urls_off_the_twilio_api_are_never_fetched_with_our_credentials(
    gateway: TestClient,
) -> None:
    params = form("mms_two_images.json", api_url="https://attacker.example")
    await post_signed(gateway, SMS, params)
    agent = await Agents(gateway.server.app).add("Anna")
    [stored] = await events(gateway)

    media = await gateway.get(f"/api/v1/events/{stored.id}/media/0", headers=bearer(agent))

    assert media.status == 404


async def test_stop_blocks_replies_until_start(gateway: TestClient, api: TwilioApiStub) -> None:
    agent = await Agents(gateway.server.app).add("Anna")
    ticket_id = await ticket_of_first_message(gateway)

    stop = await customer_writes(gateway, "stop.json")
    blocked = await reply(gateway, agent, ticket_id, "Did the restart help?")

    assert await stop.text() == '<?xml version="1.0" encoding="UTF-8"?><Response />'
    assert blocked.status == 422
    assert (await blocked.json())["error"] == "recipient_opted_out"
    async with gateway.server.app[DATABASE].reading() as session:
        opt_out = (await session.execute(select(OptOut))).scalar_one()
    assert opt_out.source.startswith("sms keyword STOP (event ")
    assert opt_out.opted_out_at is not None

    await customer_writes(gateway, "start.json")
    allowed = await reply(gateway, agent, ticket_id, "Did the restart help?")

    assert allowed.status == 202
    sent = await settled(gateway, (await allowed.json())["outbox_id"])
    assert sent.status == "sent"
    assert [(m["To"], m["From"], m["Body"]) for m in api.messages] == [
        (CUSTOMER, OUR_NUMBER, "Did the restart help?")
    ]


async def test_stop_never_opens_a_ticket_of_its_own(gateway: TestClient) -> None:
    await customer_writes(gateway, "stop.json")

    [stored] = await events(gateway)
    assert (stored.body, stored.ticket_id) == ("Stop ", None)


async def test_help_is_answered_at_once_from_the_setting(gateway: TestClient) -> None:
    response = await customer_writes(gateway, "help.json")

    assert "<Message>Support: call 030 5557 1600, Mon-Fri 9-17." in await response.text()


async def test_receipts_map_onto_the_outbound_event_and_reach_the_agent(
    gateway: TestClient, api: TwilioApiStub
) -> None:
    agent = await Agents(gateway.server.app).add("Anna")
    async with gateway.ws_connect(f"/ws/agent?token={agent['token']}") as socket:
        await go_available(socket)
        ticket_id = await ticket_of_first_message(gateway)
        accepted = await reply(gateway, agent, ticket_id, "A technician comes tomorrow.")
        body = await accepted.json()
        sent = await settled(gateway, body["outbox_id"])
        assert (await receive(socket, "message_status"))["status"] == "sent"
        assert api.messages[0]["StatusCallback"] == f"{PUBLIC_URL}{STATUS}"

        sid = {"MessageSid": str(sent.provider_id), "SmsSid": str(sent.provider_id)}
        await post_signed(gateway, STATUS, form("status_delivered.json", **sid))
        late = await post_signed(gateway, STATUS, form("status_sent.json", **sid))
        update = await receive(socket, "message_status")

    assert late.status == 200
    assert update == {
        "type": "message_status",
        "event_id": body["event_id"],
        "ticket_id": ticket_id,
        "channel": "sms",
        "status": "delivered",
        "detail": None,
    }
    stored = await event(gateway, body["event_id"])
    assert (stored.delivery_status, stored.delivery_detail) == ("delivered", None)
    assert (await outbox_row(gateway, body["outbox_id"])).status == "delivered"


async def test_an_undelivered_receipt_keeps_twilios_reason(gateway: TestClient) -> None:
    agent = await Agents(gateway.server.app).add("Anna")
    ticket_id = await ticket_of_first_message(gateway)
    body = await (await reply(gateway, agent, ticket_id, "Hello?")).json()
    sent = await settled(gateway, body["outbox_id"])

    sid = {"MessageSid": str(sent.provider_id), "SmsSid": str(sent.provider_id)}
    await post_signed(gateway, STATUS, form("status_undelivered_30003.json", **sid))

    stored = await event(gateway, body["event_id"])
    assert stored.delivery_status == "undelivered"
    assert stored.delivery_detail == "Twilio error 30003: unreachable destination handset"


async def test_a_provider_outage_is_retried_and_the_message_delivered_once(
    gateway: TestClient, api: TwilioApiStub
) -> None:
    api.failures = [500]
    agent = await Agents(gateway.server.app).add("Anna")
    ticket_id = await ticket_of_first_message(gateway)

    body = await (await reply(gateway, agent, ticket_id, "We are on it.")).json()

    sent = await settled(gateway, body["outbox_id"])
    assert (sent.status, sent.attempts) == ("sent", 2)
    assert api.message_attempts == 2
    assert [m["Body"] for m in api.messages] == ["We are on it."]


async def test_a_permanent_refusal_fails_at_once_with_twilios_reason(
    gateway: TestClient, api: TwilioApiStub
) -> None:
    api.failures = [400]
    agent = await Agents(gateway.server.app).add("Anna")
    supervisor = await Agents(gateway.server.app).add("Sam", role="supervisor")  # type: ignore[arg-type]
    ticket_id = await ticket_of_first_message(gateway)

    body = await (await reply(gateway, agent, ticket_id, "We are on it.")).json()

    failed = await settled(gateway, body["outbox_id"])
    assert (failed.status, failed.attempts) == ("failed", 1)
    assert failed.last_error == "Twilio 400 error 21211: Unable to create record: Stubbed failure"
    assert api.message_attempts == 1 and api.messages == []
    stored = await event(gateway, body["event_id"])
    assert (stored.delivery_status, stored.delivery_detail) == ("failed", failed.last_error)
    listed = await (await gateway.get("/api/v1/outbox", headers=bearer(supervisor))).json()
    assert [m["id"] for m in listed["messages"]] == [body["outbox_id"]]


async def test_a_malformed_message_is_400_and_journaled_as_rejected(gateway: TestClient) -> None:
    response = await post_signed(gateway, SMS, form("text.json", NumMedia="lots"))

    assert response.status == 400
    assert (await response.json())["error"] == "invalid_payload"
    [entry] = await journal(gateway)
    assert (entry.channel, entry.status) == ("sms", "rejected")
    assert entry.reason is not None and "NumMedia" in entry.reason
    assert await events(gateway) == []


async def test_a_malformed_receipt_is_400_and_journaled_as_rejected(gateway: TestClient) -> None:
    response = await post_signed(gateway, STATUS, form("status_sent.json", MessageStatus="lost"))

    assert response.status == 400
    [entry] = await journal(gateway)
    assert entry.status == "rejected"


async def test_an_oversized_message_is_413(gateway: TestClient) -> None:
    response = await gateway.post(SMS, data=form("text.json", Body="x" * 100_000))

    assert response.status == 413
    assert (await response.json())["error"] == "payload_too_large"
    assert await journal(gateway) == []


async def test_messages_queued_across_a_restart_are_each_sent_exactly_once(
    aiohttp_client: Any, settings: Settings, twilio: tuple[TwilioApiStub, str]
) -> None:
    api, url = twilio
    configured = sms_settings(settings, url)
    database = Database(configured.database_url)
    await database.upgrade()
    sender = TwilioSmsSender(SmsAccount("AC1", "token", from_number=OUR_NUMBER))
    # A process claimed one and died mid-send: Twilio may have it, so it is never resent.
    await database.run(outbox.enqueue, sms(sender, "cut-off"))
    [cut_off] = await database.run(
        outbox.claim, "sms", limit=1, lease=timedelta(0), resendable=False
    )
    queued = [await database.run(outbox.enqueue, sms(sender, f"m{i}")) for i in range(5)]
    await database.dispose()

    first = await aiohttp_client(create_app(configured))
    for enqueued in queued:
        assert (await settled(first, enqueued.message.id)).status == "sent"
    assert (await outbox_row(first, cut_off.id)).status == "failed"
    await first.close()
    second = await aiohttp_client(create_app(configured))
    second.server.app[OUTBOX].wake()
    await asyncio.sleep(FAST.poll_interval * 3)  # the restarted worker has looked and found nothing

    assert sorted(m["Body"] for m in api.messages) == [f"m{i}" for i in range(5)]
    assert (await outbox_row(second, cut_off.id)).last_error == outbox.INTERRUPTED


def sms(sender: TwilioSmsSender, text: str) -> NewOutbound:
    draft = sender.draft(Reply(CUSTOMER, text), Thread(None))
    return NewOutbound(
        channel="sms",
        idempotency_key=text,
        recipient=CUSTOMER,
        sender=draft.sender,
        payload=draft.payload,
        external_id=draft.external_id,
        ticket_id=None,
        contact_id=None,
        text=draft.text,
    )


async def test_a_customer_who_writes_again_after_stop_may_be_answered(
    gateway: TestClient, api: TwilioApiStub
) -> None:
    agent = await Agents(gateway.server.app).add("Anna")
    ticket_id = await ticket_of_first_message(gateway)
    await customer_writes(gateway, "stop.json")

    await customer_writes(
        gateway,
        "text.json",
        MessageSid="SM9f708192a3b4c5d6e7f80112233445aa",
        SmsSid="SM9f708192a3b4c5d6e7f80112233445aa",
        Body="Sorry, one more question: when do you open?",
    )
    answer = await reply(gateway, agent, ticket_id, "We open at 9.")

    assert answer.status == 202
    assert (await settled(gateway, (await answer.json())["outbox_id"])).status == "sent"


async def test_replies_can_go_through_a_messaging_service(
    aiohttp_client: Any, settings: Settings, twilio: tuple[TwilioApiStub, str]
) -> None:
    api, url = twilio
    service = sms_settings(settings, url, twilio_messaging_service_sid="MG" + "a" * 32)
    client = await aiohttp_client(create_app(service))
    agent = await Agents(client.server.app).add("Anna")
    ticket_id = await ticket_of_first_message(client)

    answer = await reply(client, agent, ticket_id, "Hello from the service")

    assert (await settled(client, (await answer.json())["outbox_id"])).status == "sent"
    [sent] = api.messages
    assert sent["MessagingServiceSid"] == "MG" + "a" * 32 and "From" not in sent
