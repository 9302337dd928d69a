"""`POST /api/v1/inbound`: the generic ingest path, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.keys import DATABASE
from tests.helpers import Agents, bearer, inbound
from timeline import store
from timeline.models import Contact, InboundJournal, Ticket, TimelineEvent


async def post(client: TestClient, agent: dict[str, Any], payload: Any) -> tuple[int, Any]:
    response = await client.post("/api/v1/inbound", json=payload, headers=bearer(agent))
    return response.status, await response.json()


async def counts(client: TestClient) -> dict[str, int]:
    async with client.server.app[DATABASE].reading() as session:
        return {
            model.__name__: await session.run_sync(store.count, model)
            for model in (Contact, Ticket, TimelineEvent, InboundJournal)
        }


async def test_an_inbound_message_is_stored_and_answered_with_its_ids(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    status, body = await post(client, agent, inbound("sms-1", body="Where is my parcel?"))

    assert status == 202
    assert body["duplicate"] is False
    timeline = await client.get(
        f"/api/v1/contacts/{body['contact_id']}/timeline", headers=bearer(agent)
    )
    (event,) = (await timeline.json())["events"]
    assert event["id"] == body["event_id"]
    assert event["ticket_id"] == body["ticket_id"]
    assert (event["channel"], event["direction"], event["kind"]) == ("sms", "in", "message")
    assert event["body"] == "Where is my parcel?"


async def test_a_retry_with_the_same_external_id_answers_as_the_first_and_stores_nothing(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    _, first = await post(client, agent, inbound("sms-1"))
    before = await counts(client)

    status, again = await post(client, agent, inbound("sms-1", body="a retried copy"))

    assert status == 202
    assert {k: again[k] for k in ("event_id", "contact_id", "ticket_id")} == {
        k: first[k] for k in ("event_id", "contact_id", "ticket_id")
    }
    assert again["duplicate"] is True
    assert await counts(client) == before


async def test_the_same_external_id_on_another_channel_is_another_event(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    _, sms = await post(client, agent, inbound("42"))
    _, chat = await post(client, agent, inbound("42", channel="webchat", sender="webchat:v1"))

    assert sms["event_id"] != chat["event_id"]


async def test_every_format_of_one_number_finds_the_same_contact(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    formats = ["+49 30 5557 1600", "00493055571600", "030 5557-1600", "tel:+493055571600"]
    results = [
        (await post(client, agent, inbound(f"m{i}", sender=f)))[1] for i, f in enumerate(formats)
    ]

    assert len({r["contact_id"] for r in results}) == 1
    assert len({r["ticket_id"] for r in results}) == 1, "messages append to the open ticket"


async def test_a_new_sender_becomes_a_contact_named_from_what_the_channel_knows(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    _, body = await post(
        client,
        agent,
        inbound(
            "e1", channel="email", sender='"Anna Schmidt" <Anna@Example.COM>', name="Anna Schmidt"
        ),
    )
    contact = await (
        await client.get(f"/api/v1/contacts/{body['contact_id']}", headers=bearer(agent))
    ).json()

    assert contact["name"] == "Anna Schmidt"
    assert contact["identities"] == [{"kind": "email", "value": "anna@example.com"}]


async def test_an_anonymous_sender_creates_no_contact_but_keeps_the_message(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    status, body = await post(client, agent, inbound("anon-1", sender="anonymous"))

    assert status == 202
    assert body["contact_id"] is None
    assert (await counts(client))["Contact"] == 0
    ticket = await (
        await client.get(f"/api/v1/tickets/{body['ticket_id']}", headers=bearer(agent))
    ).json()
    assert ticket["contact_id"] is None


async def test_a_message_after_resolution_reopens_the_ticket_within_the_window(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    _, first = await post(client, agent, inbound("m1"))
    await client.patch(
        f"/api/v1/tickets/{first['ticket_id']}", json={"status": "resolved"}, headers=bearer(agent)
    )

    _, second = await post(client, agent, inbound("m2"))

    assert second["ticket_id"] == first["ticket_id"]
    ticket = await (
        await client.get(f"/api/v1/tickets/{first['ticket_id']}", headers=bearer(agent))
    ).json()
    assert ticket["status"] in ("new", "open")
    assert ticket["resolved_at"] is None


async def test_the_ticket_tag_in_the_subject_threads_into_that_ticket(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    _, first = await post(client, agent, inbound("m1", channel="email", sender="a@example.com"))

    _, reply = await post(
        client,
        agent,
        inbound(
            "m2",
            channel="email",
            sender="colleague@example.org",
            subject=f"Re: your order [#{first['ticket_number']}]",
        ),
    )

    assert reply["ticket_id"] == first["ticket_id"]
    assert reply["contact_id"] != first["contact_id"], "another person joins as their own contact"


async def test_the_journal_keeps_the_raw_payload_linked_to_its_event(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    _, body = await post(client, agent, inbound("m1", body="journal me"))

    async with client.server.app[DATABASE].reading() as session:
        (entry,) = (await session.execute(select(InboundJournal))).scalars()
    assert entry.status == "accepted"
    assert entry.event_id == body["event_id"]
    assert b"journal me" in entry.payload
