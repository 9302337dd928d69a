"""E-mail through the whole ingest path: `POST /api/v1/inbound/email`, `switchboard ingest-email`.

Threading, loop protection, bounces and attachments as a helpdesk sees them: on the timeline,
on tickets, and in what the API serves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from channels.email.inbound import parse
from gateway.app import create_app
from gateway.keys import DATABASE
from gateway.replies import AutoAck
from gateway.settings import Settings
from tests.helpers import Agents, bearer
from tests.smtp_peer import SmtpPeer, account_for
from timeline.models import Identity, OutboxMessage, TimelineEvent, utcnow

FIXTURE_DIR = Path(__file__).parent.parent / "fixtures" / "email"
FIXTURES = sorted(p.stem for p in FIXTURE_DIR.glob("*.eml"))
RFC822 = {"Content-Type": "message/rfc822"}
EXECUTABLE = ("<script", "onerror", "onload", "onclick", "javascript:", "<iframe", "<form")


def fixture(name: str) -> bytes:
    return (FIXTURE_DIR / f"{name}.eml").read_bytes()


def mail(
    sender: str = "Anna Lindqvist <anna@example.org>",
    subject: str = "Printer on floor 3 is jammed",
    body: str = "Hello, the printer is jammed again.",
    message_id: str = "m1@example.org",
    **headers: str,
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "support@switchboard.example"
    message["Subject"] = subject
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = f"<{message_id}>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes()


@pytest.fixture
async def agent(agents: Agents) -> dict[str, Any]:
    return await agents.add()


async def post(client: TestClient, agent: dict[str, Any], raw: bytes) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/inbound/email", data=raw, headers={**bearer(agent), **RFC822}
    )
    assert response.status == 202, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def stored_event(client: TestClient, event_id: int) -> TimelineEvent:
    async with client.server.app[DATABASE].reading() as session:
        return (
            await session.execute(select(TimelineEvent).where(TimelineEvent.id == event_id))
        ).scalar_one()


@pytest.mark.parametrize("name", FIXTURES)
async def test_fixture_lands_on_the_timeline(
    client: TestClient, agent: dict[str, Any], name: str
) -> None:
    raw = fixture(name)
    parsed = parse(raw)

    result = await post(client, agent, raw)
    again = await post(client, agent, raw)

    event = await stored_event(client, result["event_id"])
    assert event.external_id == parsed.message_id
    assert event.channel == "email"
    assert event.body == parsed.text
    assert event.preview == parsed.preview
    assert (result["ticket_id"] is not None) == (parsed.auto_generated is None)
    assert not any(bad in (event.html or "").lower() for bad in EXECUTABLE)
    assert {**again, "duplicate": False} == result and again["duplicate"]


async def test_a_reply_joins_its_ticket_and_another_person_joins_as_their_own_contact(
    client: TestClient, agent: dict[str, Any]
) -> None:
    first = await post(client, agent, mail(message_id="start@example.org"))
    reply = await post(
        client,
        agent,
        mail(
            sender="Bob Brown <bob@example.org>",
            subject="Re: Printer on floor 3 is jammed",
            message_id="bob-reply@example.org",
            In_Reply_To="<start@example.org>",
            References="<start@example.org>",
        ),
    )

    assert reply["ticket_id"] == first["ticket_id"]
    assert reply["contact_id"] != first["contact_id"]
    contacts = await client.get(
        "/api/v1/contacts", params={"identity": "bob@example.org"}, headers=bearer(agent)
    )
    assert [c["id"] for c in (await contacts.json())["contacts"]] == [reply["contact_id"]]


async def test_a_reply_that_lost_its_headers_is_threaded_by_the_ticket_tag(
    client: TestClient, agent: dict[str, Any]
) -> None:
    first = await post(client, agent, mail(message_id="tagged@example.org"))
    reply = await post(
        client,
        agent,
        mail(
            sender="Carla <carla@other.example>",
            subject=f"AW: [#{first['ticket_number']}] Printer on floor 3 is jammed",
            message_id="no-headers@other.example",
        ),
    )

    assert reply["ticket_id"] == first["ticket_id"]


async def resolve(client: TestClient, agent: dict[str, Any], ticket_id: int) -> None:
    response = await client.patch(
        f"/api/v1/tickets/{ticket_id}", json={"status": "resolved"}, headers=bearer(agent)
    )
    assert response.status == 200, await response.text()


async def ticket(client: TestClient, agent: dict[str, Any], ticket_id: int) -> dict[str, Any]:
    response = await client.get(f"/api/v1/tickets/{ticket_id}", headers=bearer(agent))
    found: dict[str, Any] = await response.json()
    return found


async def test_a_reply_to_a_resolved_ticket_reopens_it_within_the_window(
    client: TestClient, agent: dict[str, Any]
) -> None:
    first = await post(client, agent, mail(message_id="before@example.org"))
    await resolve(client, agent, first["ticket_id"])

    reply = await post(
        client, agent, mail(message_id="after@example.org", In_Reply_To="<before@example.org>")
    )

    assert reply["ticket_id"] == first["ticket_id"]
    assert (await ticket(client, agent, first["ticket_id"]))["status"] in ("new", "open")


async def test_a_reply_after_the_window_opens_a_new_ticket_linked_to_the_old(
    aiohttp_client: Any, settings: Settings, agents: Agents
) -> None:
    client = await aiohttp_client(
        create_app(dataclasses.replace(settings, reopen_window=timedelta(0)))
    )
    agent = await Agents(client.server.app).add()
    first = await post(client, agent, mail(message_id="long-ago@example.org"))
    await resolve(client, agent, first["ticket_id"])

    reply = await post(
        client, agent, mail(message_id="late@example.org", In_Reply_To="<long-ago@example.org>")
    )

    assert reply["ticket_id"] != first["ticket_id"]
    assert (await ticket(client, agent, reply["ticket_id"]))["linked_ticket_id"] == first[
        "ticket_id"
    ]


async def test_a_new_ticket_is_acknowledged_but_machine_made_mail_never(
    aiohttp_client: Any, settings: Settings, smtp_peer: SmtpPeer
) -> None:
    acknowledging = dataclasses.replace(
        settings, smtp=account_for(smtp_peer), email_auto_ack=AutoAck(text="Ticket {ticket}.")
    )
    client = await aiohttp_client(create_app(acknowledging))
    agent = await Agents(client.server.app).add()

    first = await post(client, agent, mail(message_id="please-help@example.org"))
    for name in ("out_of_office", "newsletter", "dsn_bounce"):
        await post(client, agent, fixture(name))
    await post(
        client, agent, mail(message_id="more@example.org", In_Reply_To="<please-help@example.org>")
    )

    async with client.server.app[DATABASE].reading() as session:
        queued = (await session.execute(select(OutboxMessage.recipient))).scalars().all()
    assert queued == ["anna@example.org"]
    [acknowledgement] = await smtp_peer.wait_for(1)
    assert acknowledgement["Auto-Submitted"] == "auto-replied"
    assert acknowledgement["In-Reply-To"] == "<please-help@example.org>"
    assert acknowledgement.get_content().strip() == f"Ticket {first['ticket_number']}."


async def test_bulk_mail_stays_on_the_timeline_without_a_ticket(
    client: TestClient, agent: dict[str, Any]
) -> None:
    result = await post(client, agent, fixture("newsletter"))

    assert result["ticket_id"] is None
    timeline = await client.get(
        f"/api/v1/contacts/{result['contact_id']}/timeline", headers=bearer(agent)
    )
    events = (await timeline.json())["events"]
    assert [(e["id"], e["ticket_id"]) for e in events] == [(result["event_id"], None)]
    listed = await client.get("/api/v1/tickets", headers=bearer(agent))
    assert (await listed.json())["tickets"] == []


async def test_an_auto_reply_joins_the_open_ticket_it_answers_but_never_reopens_one(
    client: TestClient, agent: dict[str, Any]
) -> None:
    first = await post(client, agent, mail(message_id="ask@example.org"))
    auto = {"Auto_Submitted": "auto-replied", "In_Reply_To": "<ask@example.org>"}

    joined = await post(client, agent, mail(message_id="ooo-1@example.org", **auto))
    await resolve(client, agent, first["ticket_id"])
    after = await post(client, agent, mail(message_id="ooo-2@example.org", **auto))

    assert joined["ticket_id"] == first["ticket_id"]
    assert after["ticket_id"] is None
    assert (await ticket(client, agent, first["ticket_id"]))["status"] == "resolved"


async def test_a_bounce_marks_our_message_and_the_address_as_bouncing(
    client: TestClient, agent: dict[str, Any]
) -> None:
    customer = await client.post(
        "/api/v1/contacts",
        json={
            "name": "Nobody",
            "identities": [{"kind": "email", "value": "no.such.user@mueller-bau.de"}],
        },
        headers=bearer(agent),
    )
    contact_id = (await customer.json())["id"]
    async with client.server.app[DATABASE].transaction() as session:
        ours = TimelineEvent(
            channel="email", external_id="sb.10003.2.c0ffee@switchboard.example", kind="message",
            direction="out", contact_id=contact_id, sender="support@switchboard.example",
            recipient="no.such.user@mueller-bau.de", body="Your request", occurred_at=utcnow(),
        )  # fmt: skip
        session.add(ours)
        await session.flush()
        ours_id = ours.id

    result = await post(client, agent, fixture("dsn_bounce"))

    assert result["ticket_id"] is None
    bounced = await stored_event(client, ours_id)
    assert bounced.delivery_status == "bounced"
    assert "5.1.1" in (bounced.delivery_detail or "")
    async with client.server.app[DATABASE].reading() as session:
        identity = (
            await session.execute(select(Identity).where(Identity.contact_id == contact_id))
        ).scalar_one()
    assert identity.bouncing_since is not None


async def test_attachments_are_stored_outside_the_row_and_served_as_downloads(
    client: TestClient, agent: dict[str, Any]
) -> None:
    raw = fixture("nested_multipart")
    result = await post(client, agent, raw)
    event = await stored_event(client, result["event_id"])
    parts = parse(raw).attachments

    for stored, part in zip(event.attachments, parts, strict=True):
        response = await client.get(stored["url"], headers=bearer(agent))
        assert response.status == 200
        assert await response.read() == part.data
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert event.html is not None and event.attachments[0]["url"] in event.html
    assert (await client.get(event.attachments[0]["url"])).status == 401
    assert (await client.get("/api/v1/attachments/../../etc", headers=bearer(agent))).status == 404


async def test_attachments_over_the_limit_keep_their_metadata_only(
    aiohttp_client: Any, settings: Settings
) -> None:
    client = await aiohttp_client(
        create_app(dataclasses.replace(settings, attachment_max_bytes=30))
    )
    agent = await Agents(client.server.app).add()

    result = await post(client, agent, fixture("nested_multipart"))

    event = await stored_event(client, result["event_id"])
    assert [(a["filename"], a["size"], a["url"] is not None) for a in event.attachments] == [
        ("part-3.png", 70, False),
        ("Verlängerung 2026.pdf", 78, False),
        ("seats.csv", 25, True),
    ]


async def test_what_the_api_serves_of_customer_html_never_executes(
    client: TestClient, agent: dict[str, Any]
) -> None:
    result = await post(client, agent, fixture("html_only_scripts"))

    served = [
        await client.get(
            f"/api/v1/contacts/{result['contact_id']}/timeline", headers=bearer(agent)
        ),
        await client.get(f"/api/v1/contacts/{result['contact_id']}", headers=bearer(agent)),
        await client.get(f"/api/v1/tickets/{result['ticket_id']}", headers=bearer(agent)),
    ]

    for response in served:
        assert response.status == 200
        text = (await response.text()).lower()
        assert not any(bad in text for bad in EXECUTABLE), text
    events = (await served[0].json())["events"]
    assert "<b>12345</b>" in events[0]["html"]


async def test_an_unreadable_message_is_400_and_journaled_as_rejected(
    client: TestClient, admin: dict[str, Any]
) -> None:
    response = await client.post(
        "/api/v1/inbound/email",
        data=b"Subject: nobody sent this\n\nno From header\n",
        headers={**bearer(admin), **RFC822},
    )

    assert response.status == 400
    assert (await response.json())["error"] == "invalid_email"
    journal = await client.get("/api/v1/journal?status=rejected", headers=bearer(admin))
    [entry] = (await journal.json())["entries"]
    assert (entry["channel"], entry["reason"]) == (
        "email",
        "The message has no usable From address.",
    )


async def test_inbound_email_needs_a_token(client: TestClient) -> None:
    response = await client.post("/api/v1/inbound/email", data=mail(), headers=RFC822)
    assert response.status == 401


def ingest_email(raw: bytes, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "ingest-email"],
        input=raw,
        cwd=cwd,
        env={**os.environ, "SWITCHBOARD_LOG_LEVEL": "WARNING"},
        capture_output=True,
        timeout=60,
    )


def test_ingest_email_takes_the_same_path_from_stdin(tmp_path: Path) -> None:
    raw = fixture("gmail_reply")

    first = ingest_email(raw, tmp_path)
    again = ingest_email(raw, tmp_path)
    unreadable = ingest_email(b"not a message at all", tmp_path)

    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["ticket_id"] is not None and not result["duplicate"]
    assert json.loads(again.stdout) == {**result, "duplicate": True}
    assert unreadable.returncode == 65  # EX_DATAERR: the MTA bounces it; the journal keeps it
    assert b"rejected" in unreadable.stderr
