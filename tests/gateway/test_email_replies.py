"""`POST /api/v1/tickets/{id}/messages` on e-mail tickets, and the outbox's API, end to end:
the gateway app, a real database and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.keys import REPLIES
from gateway.outbox import OutboxPolicy
from gateway.replies import AutoAck
from gateway.settings import Settings
from tests.helpers import Agents, bearer, inbound
from tests.smtp_peer import SmtpPeer, account_for
from timeline.models import Role

POLICY = OutboxPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.05, poll_interval=0.1)
# The first message of the customer, as Gmail names it.
FIRST_MAIL = "CAJx7vQ3=Printer+floor3@mail.gmail.com"


@pytest.fixture
def settings(database_url: str, smtp_peer: SmtpPeer) -> Settings:
    return Settings(
        database_url=database_url,
        max_body_bytes=64 * 1024,
        smtp=account_for(smtp_peer),
        outbox=POLICY,
    )


@pytest.fixture
async def agent(agents: Agents) -> dict[str, Any]:
    return await agents.add("Anna Agent")


async def customer_mail(
    client: TestClient, agent: dict[str, Any], external_id: str = FIRST_MAIL, **fields: Any
) -> dict[str, Any]:
    payload = inbound(
        external_id,
        channel="email",
        sender="Carla Customer <carla@example.de>",
        to="support@example.com",
        subject="Printer on floor 3",
        body="The printer on floor 3 is jammed again.",
    )
    response = await client.post(
        "/api/v1/inbound", json={**payload, **fields}, headers=bearer(agent)
    )
    assert response.status == 202, await response.text()
    return await response.json()


async def reply(
    client: TestClient, agent: dict[str, Any], ticket_id: int, **body: Any
) -> tuple[int, dict[str, Any]]:
    response = await client.post(
        f"/api/v1/tickets/{ticket_id}/messages",
        json={"body": "We have sent a technician.", **body},
        headers=bearer(agent),
    )
    return response.status, await response.json()


async def timeline_event(
    client: TestClient, agent: dict[str, Any], contact_id: int, event_id: int
) -> dict[str, Any]:
    response = await client.get(f"/api/v1/contacts/{contact_id}/timeline", headers=bearer(agent))
    events = (await response.json())["events"]
    return next(e for e in events if e["id"] == event_id)


async def until(check: Callable[[], Any], within: float = 15.0) -> Any:
    async with asyncio.timeout(within):
        while not (result := await check()):  # noqa: ASYNC110 - state behind an HTTP API
            await asyncio.sleep(0.02)
    return result


async def test_a_reply_goes_out_threaded_and_its_status_shows_on_the_timeline(
    client: TestClient, agent: dict[str, Any], smtp_peer: SmtpPeer
) -> None:
    mail = await customer_mail(client, agent)

    status, body = await reply(client, agent, mail["ticket_id"])

    assert status == 202
    event = body["event"]
    assert body["event_id"] == event["id"] and body["outbox_id"] > 0
    assert (event["channel"], event["direction"], event["status"]) == ("email", "out", "queued")
    assert event["ticket_id"] == mail["ticket_id"]
    [sent] = await smtp_peer.wait_for(1)
    assert sent["Message-ID"] == f"<{event['external_id']}>"
    assert sent["In-Reply-To"] == f"<{FIRST_MAIL}>"
    assert sent["References"] == f"<{FIRST_MAIL}>"
    assert sent["Subject"] == f"Re: Printer on floor 3 [#{mail['ticket_number']}]"
    assert sent["To"] == "carla@example.de"
    shown = await until(
        lambda: _with_status(client, agent, mail["contact_id"], event["id"], "sent")
    )
    assert shown["body"] == "We have sent a technician."


async def _with_status(
    client: TestClient, agent: dict[str, Any], contact_id: int, event_id: int, status: str
) -> dict[str, Any] | None:
    event = await timeline_event(client, agent, contact_id, event_id)
    return event if event["status"] == status else None


async def test_the_customers_answer_to_our_reply_threads_into_the_same_ticket(
    client: TestClient, agent: dict[str, Any], smtp_peer: SmtpPeer
) -> None:
    mail = await customer_mail(client, agent)
    _, body = await reply(client, agent, mail["ticket_id"])
    ours = body["event"]["external_id"]

    answer = await customer_mail(
        client, agent, "answer-1@mail.gmail.com", subject="Thanks", references=[FIRST_MAIL, ours]
    )

    assert answer["ticket_id"] == mail["ticket_id"]
    _, second = await reply(client, agent, mail["ticket_id"], body="You're welcome.")
    sent = await smtp_peer.wait_for(2)
    last = next(m for m in sent if m["Message-ID"] == f"<{second['event']['external_id']}>")
    assert last["In-Reply-To"] == "<answer-1@mail.gmail.com>"
    assert last["References"].split() == [
        f"<{FIRST_MAIL}>",
        f"<{ours}>",
        "<answer-1@mail.gmail.com>",
    ]


async def test_html_and_attachments_of_a_reply_arrive(
    client: TestClient, agent: dict[str, Any], smtp_peer: SmtpPeer
) -> None:
    mail = await customer_mail(client, agent)
    manual = b"%PDF-1.7 printer manual"

    status, body = await reply(
        client,
        agent,
        mail["ticket_id"],
        html="<p>We have sent a <em>technician</em>.<img src=x onerror=alert(1)></p>",
        attachments=[
            {
                "filename": "manual.pdf",
                "content_type": "application/pdf",
                "content": base64.b64encode(manual).decode(),
            }
        ],
    )

    assert status == 202
    assert "onerror" not in body["event"]["html"]
    assert body["event"]["attachments"] == [
        {"filename": "manual.pdf", "content_type": "application/pdf", "size": len(manual)}
    ]
    [sent] = await smtp_peer.wait_for(1)
    html = sent.get_body(("html",))
    assert html is not None and "<em>technician</em>" in html.get_content()
    assert "onerror" not in html.get_content()
    [attached] = sent.iter_attachments()
    assert (attached.get_filename(), attached.get_payload(decode=True)) == ("manual.pdf", manual)


async def test_an_idempotency_key_sent_again_answers_the_same_message_and_sends_once(
    client: TestClient, agent: dict[str, Any], smtp_peer: SmtpPeer
) -> None:
    mail = await customer_mail(client, agent)

    _, first = await reply(client, agent, mail["ticket_id"], idempotency_key="draft-77")
    status, again = await reply(client, agent, mail["ticket_id"], idempotency_key="draft-77")

    assert status == 202
    assert (again["event_id"], again["outbox_id"]) == (first["event_id"], first["outbox_id"])
    assert (first["duplicate"], again["duplicate"]) == (False, True)
    await smtp_peer.wait_for(1)
    _, other = await reply(client, agent, mail["ticket_id"], idempotency_key="draft-78")
    await smtp_peer.wait_for(2)
    assert len(smtp_peer.messages) == 2
    assert other["event_id"] != first["event_id"]


async def test_a_reply_to_another_address_of_the_contact(
    client: TestClient, agent: dict[str, Any], smtp_peer: SmtpPeer
) -> None:
    created = await client.post(
        "/api/v1/contacts",
        json={
            "name": "Carla Customer",
            "identities": [
                {"kind": "email", "value": "carla@example.de"},
                {"kind": "email", "value": "carla.private@example.org"},
            ],
        },
        headers=bearer(agent),
    )
    assert created.status == 201
    mail = await customer_mail(client, agent)

    status, _ = await reply(client, agent, mail["ticket_id"], to="Carla.Private@Example.org")
    refused, error = await reply(client, agent, mail["ticket_id"], to="mallory@example.net")

    assert status == 202
    [sent] = await smtp_peer.wait_for(1)
    assert sent["To"] == "carla.private@example.org"
    assert (refused, error["error"]) == (422, "not_an_identity")


async def test_a_channel_without_a_sender_cannot_reply_yet(
    client: TestClient, agent: dict[str, Any]
) -> None:
    response = await client.post("/api/v1/inbound", json=inbound("sms-1"), headers=bearer(agent))
    sms = await response.json()

    status, body = await reply(client, agent, sms["ticket_id"])

    assert (status, body["error"]) == (422, "channel_cannot_send")


@pytest.mark.parametrize(
    "body",
    [
        {"body": ""},
        {"body": 42},
        {"body": "hi", "bcc": "x@example.org"},
        {"body": "hi", "attachments": [{"filename": "a", "content_type": "text/plain"}]},
        {"body": "hi", "attachments": [{"filename": "a", "content_type": "x", "content": "QQ=="}]},
        {"body": "hi", "attachments": [{"filename": "a", "content_type": "a/b", "content": "!"}]},
        {"body": "hi", "idempotency_key": ""},
    ],
)
async def test_a_malformed_reply_is_400(
    client: TestClient, agent: dict[str, Any], body: dict[str, Any]
) -> None:
    mail = await customer_mail(client, agent)

    response = await client.post(
        f"/api/v1/tickets/{mail['ticket_id']}/messages", json=body, headers=bearer(agent)
    )

    assert response.status == 400
    assert set(await response.json()) == {"error", "detail"}


async def test_a_reply_to_a_missing_ticket_is_404(
    client: TestClient, agent: dict[str, Any]
) -> None:
    status, body = await reply(client, agent, 999)

    assert (status, body["error"]) == (404, "not_found")


async def test_supervisors_see_what_failed_and_can_send_it_again(
    client: TestClient, agent: dict[str, Any], agents: Agents, smtp_peer: SmtpPeer
) -> None:
    supervisor = await agents.add("Sam Supervisor", role=Role.SUPERVISOR)
    smtp_peer.refuse_next("550 5.7.1 Message rejected as spam")
    mail = await customer_mail(client, agent)
    _, sent = await reply(client, agent, mail["ticket_id"])

    failed = await until(lambda: _listed(client, supervisor, "failed"))
    forbidden = await client.get("/api/v1/outbox", headers=bearer(agent))
    retried = await client.post(
        f"/api/v1/outbox/{sent['outbox_id']}/retry", headers=bearer(supervisor)
    )
    again = await client.post(
        f"/api/v1/outbox/{sent['outbox_id']}/retry", headers=bearer(supervisor)
    )

    assert [m["id"] for m in failed] == [sent["outbox_id"]]
    assert failed[0]["last_error"] == "550 5.7.1 Message rejected as spam"
    assert "payload" not in failed[0]
    assert forbidden.status == 403
    assert retried.status == 202
    assert (await retried.json())["status"] == "queued"
    assert again.status == 409
    [delivered] = await smtp_peer.wait_for(1)
    assert delivered["Message-ID"] == f"<{sent['event']['external_id']}>"


async def _listed(client: TestClient, who: dict[str, Any], status: str) -> list[Any]:
    response = await client.get(f"/api/v1/outbox?status={status}", headers=bearer(who))
    return (await response.json())["messages"]


async def test_an_unknown_outbox_status_is_400(client: TestClient, agents: Agents) -> None:
    admin = await agents.add(role=Role.ADMIN)

    response = await client.get("/api/v1/outbox?status=lost", headers=bearer(admin))

    assert response.status == 400


async def test_a_restart_mid_way_sends_every_reply_exactly_once(
    settings: Settings, smtp_peer: SmtpPeer
) -> None:
    one_at_a_time = Settings(**{**settings.__dict__, "outbox": OutboxPolicy(concurrency=1)})
    first = TestClient(TestServer(create_app(one_at_a_time)))
    await first.start_server()
    agent = await Agents(first.server.app).add()
    mail = await customer_mail(first, agent)
    smtp_peer.hold()  # the first message waits at the server while the gateway stops

    replies = [
        (await reply(first, agent, mail["ticket_id"], body=f"Part {n}"))[1] for n in range(6)
    ]
    await asyncio.get_running_loop().run_in_executor(None, smtp_peer.held.wait, 10)
    stopping = asyncio.create_task(first.close())
    await asyncio.sleep(0.1)
    smtp_peer.release()
    await stopping
    sent_before_restart = len(smtp_peer.messages)

    second = TestClient(TestServer(create_app(one_at_a_time)))
    await second.start_server()
    try:
        await smtp_peer.wait_for(6)
        await asyncio.sleep(0.3)  # time for a duplicate to show up, if there were one
    finally:
        await second.close()

    assert 1 <= sent_before_restart < 6
    assert sorted(smtp_peer.message_ids()) == sorted(
        f"<{r['event']['external_id']}>" for r in replies
    )


async def test_a_new_email_ticket_is_acknowledged_once_when_configured(
    settings: Settings, smtp_peer: SmtpPeer, aiohttp_client: Any
) -> None:
    acknowledging = Settings(
        **{**settings.__dict__, "email_auto_ack": AutoAck(text="Ticket #{ticket} is open.")}
    )
    client = await aiohttp_client(create_app(acknowledging))
    agent = await Agents(client.server.app).add()
    replies = client.server.app[REPLIES]
    mail = await customer_mail(client, agent)
    follow_up = await customer_mail(client, agent, "second@mail.gmail.com")

    ack = await replies.acknowledge(mail["event_id"])
    again = await replies.acknowledge(mail["event_id"])
    not_new = await replies.acknowledge(follow_up["event_id"])

    assert ack is not None and again is not None and again.duplicate
    assert not_new is None
    [sent] = await smtp_peer.wait_for(1)
    assert sent["Auto-Submitted"] == "auto-replied"
    assert sent.get_content().strip() == f"Ticket #{mail['ticket_number']} is open."
    assert sent["In-Reply-To"] == f"<{FIRST_MAIL}>"


async def test_acknowledgements_to_one_sender_are_limited(
    settings: Settings, smtp_peer: SmtpPeer, aiohttp_client: Any
) -> None:
    limited = Settings(
        **{
            **settings.__dict__,
            "email_auto_ack": AutoAck(per_sender=1),
            "reopen_window": timedelta(0),
        }
    )
    client = await aiohttp_client(create_app(limited))
    agent = await Agents(client.server.app).add()
    replies = client.server.app[REPLIES]
    first = await customer_mail(client, agent)
    await client.patch(
        f"/api/v1/tickets/{first['ticket_id']}", json={"status": "closed"}, headers=bearer(agent)
    )
    second = await customer_mail(client, agent, "new-topic@mail.gmail.com")

    assert second["ticket_id"] != first["ticket_id"]
    assert await replies.acknowledge(first["event_id"]) is not None
    assert await replies.acknowledge(second["event_id"]) is None


async def test_without_auto_acknowledgement_configured_nothing_is_sent(
    client: TestClient, agent: dict[str, Any]
) -> None:
    mail = await customer_mail(client, agent)

    assert await client.server.app[REPLIES].acknowledge(mail["event_id"]) is None
