"""Contacts: creation, lookup by a raw sender id, the contact card and its timeline."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.keys import DATABASE
from tests.helpers import Agents, bearer, inbound
from timeline import store
from timeline.models import Contact, Identity

ANNA = {
    "name": "Anna Schmidt",
    "identities": [
        {"kind": "phone", "value": "030 5557-1600"},
        {"kind": "email", "value": '"Anna Schmidt" <Anna.Schmidt@Example.COM>'},
    ],
    "tags": ["vip", "wholesale"],
}


async def create(client: TestClient, agent: dict[str, Any], payload: Any) -> tuple[int, Any]:
    response = await client.post("/api/v1/contacts", json=payload, headers=bearer(agent))
    return response.status, await response.json()


async def lookup(client: TestClient, agent: dict[str, Any], raw: str) -> tuple[int, Any]:
    response = await client.get("/api/v1/contacts", params={"identity": raw}, headers=bearer(agent))
    return response.status, await response.json()


async def timeline(
    client: TestClient, agent: dict[str, Any], contact_id: int, **query: str
) -> tuple[int, Any]:
    response = await client.get(
        f"/api/v1/contacts/{contact_id}/timeline", params=query, headers=bearer(agent)
    )
    return response.status, await response.json()


async def stored(client: TestClient) -> dict[str, int]:
    async with client.server.app[DATABASE].reading() as session:
        return {m.__name__: await session.run_sync(store.count, m) for m in (Contact, Identity)}


def assert_error(status: int, body: Any, expected_status: int, code: str) -> None:
    assert status == expected_status
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]


# --- POST /api/v1/contacts ------------------------------------------------------------------


async def test_creating_a_contact_answers_201_with_normalised_identities_and_tags(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()

    status, body = await create(client, agent, ANNA)

    assert status == 201
    assert isinstance(body["id"], int)
    assert body["name"] == "Anna Schmidt"
    assert body["identities"] == [
        {"kind": "phone", "value": "+493055571600"},
        {"kind": "email", "value": "anna.schmidt@example.com"},
    ]
    assert body["tags"] == ["vip", "wholesale"]
    assert body["merged_into_id"] is None


async def test_a_created_contact_can_be_read_back_by_its_id(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    _, created = await create(client, agent, ANNA)

    response = await client.get(f"/api/v1/contacts/{created['id']}", headers=bearer(agent))

    assert response.status == 200
    body = await response.json()
    assert body["id"] == created["id"]
    assert body["name"] == "Anna Schmidt"
    assert body["identities"] == created["identities"]
    assert body["tags"] == ["vip", "wholesale"]
    assert body["open_tickets"] == []


async def test_identity_kinds_are_case_insensitive_and_one_identity_given_twice_is_kept_once(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    payload = {
        "name": "Bernd",
        "identities": [
            {"kind": "PHONE", "value": "+49 30 5557 1600"},
            {"kind": "phone", "value": "0049 30 55571600"},
        ],
    }

    status, body = await create(client, agent, payload)

    assert status == 201
    assert body["identities"] == [{"kind": "phone", "value": "+493055571600"}]
    assert body["tags"] == []
    assert await stored(client) == {"Contact": 1, "Identity": 1}


async def test_an_identity_owned_by_another_contact_is_409_identity_taken_and_stores_nothing(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    _, first = await create(client, agent, ANNA)
    before = await stored(client)

    status, body = await create(
        client,
        agent,
        {
            "name": "Someone Else",
            "identities": [
                {"kind": "email", "value": "someone@example.org"},
                {"kind": "phone", "value": "+49 (0)30 5557 1600"},
            ],
        },
    )

    assert_error(status, body, 409, "identity_taken")
    assert await stored(client) == before
    _, found = await lookup(client, agent, "someone@example.org")
    assert found == {"contacts": []}, "the new contact's other identity was not kept either"
    _, owner = await lookup(client, agent, "+493055571600")
    assert [c["id"] for c in owner["contacts"]] == [first["id"]]


async def test_an_identity_a_sender_already_has_from_an_inbound_is_taken(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    await client.post(
        "/api/v1/inbound", json=inbound("m1", sender="+4930555716000"), headers=bearer(agent)
    )

    status, body = await create(
        client, agent, {"name": "Late", "identities": [{"kind": "phone", "value": "030555716000"}]}
    )

    assert_error(status, body, 409, "identity_taken")


@pytest.mark.parametrize(
    "identity",
    [
        {"kind": "phone", "value": "not a number"},
        {"kind": "phone", "value": "anonymous"},
        {"kind": "email", "value": "nobody-at-example.com"},
        {"kind": "email", "value": ""},
        {"kind": "phone"},
        {"kind": 7, "value": "+493055571600"},
        "+493055571600",
    ],
    ids=[
        "phone-words",
        "anonymous",
        "email-without-at",
        "empty",
        "no-value",
        "kind-not-text",
        "bare",
    ],
)
async def test_an_invalid_identity_is_400_invalid_identity_and_stores_nothing(
    client: TestClient, agents: Agents, identity: Any
) -> None:
    agent = await agents.add()

    status, body = await create(client, agent, {"name": "X", "identities": [identity]})

    assert_error(status, body, 400, "invalid_identity")
    assert await stored(client) == {"Contact": 0, "Identity": 0}


@pytest.mark.parametrize(
    "identity",
    [{"kind": "k" * 33, "value": "abc"}, {"kind": "line", "value": "v" * 321}],
    ids=["kind-too-long", "value-too-long"],
)
async def test_an_over_long_identity_is_400_invalid_identity(
    client: TestClient, agents: Agents, identity: dict[str, str]
) -> None:
    agent = await agents.add()

    status, body = await create(client, agent, {"name": "X", "identities": [identity]})

    assert_error(status, body, 400, "invalid_identity")
    assert await stored(client) == {"Contact": 0, "Identity": 0}


@pytest.mark.parametrize(
    "payload",
    [
        {"identities": [{"kind": "phone", "value": "+493055571600"}]},
        {"name": "   ", "identities": []},
        {"name": 42, "identities": []},
    ],
    ids=["missing", "blank", "not-text"],
)
async def test_a_contact_without_a_name_is_400(
    client: TestClient, agents: Agents, payload: dict[str, Any]
) -> None:
    agent = await agents.add()

    status, body = await create(client, agent, payload)

    assert_error(status, body, 400, "invalid_payload")
    assert await stored(client) == {"Contact": 0, "Identity": 0}


async def test_tags_that_are_not_a_list_of_strings_are_400(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()

    status, body = await create(client, agent, {"name": "X", "tags": ["ok", 3]})

    assert_error(status, body, 400, "invalid_payload")
    assert await stored(client) == {"Contact": 0, "Identity": 0}


# --- GET /api/v1/contacts?identity= ---------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "030 5557-1600",
        "+49 30 5557 1600",
        "0049 (0)30 55571600",
        "tel:+49-30-5557-1600",
        "Anna.Schmidt@example.com",
        "ANNA.SCHMIDT@EXAMPLE.COM",
        '"Schmidt, Anna" <Anna.Schmidt@Example.Com>',
    ],
)
async def test_a_contact_is_found_by_its_identity_written_in_another_format(
    client: TestClient, agents: Agents, raw: str
) -> None:
    agent = await agents.add()
    _, created = await create(client, agent, ANNA)

    status, body = await lookup(client, agent, raw)

    assert status == 200
    (contact,) = body["contacts"]
    assert contact["id"] == created["id"]
    assert contact["name"] == "Anna Schmidt"
    assert contact["identities"] == created["identities"]


async def test_a_sender_that_wrote_in_is_found_by_its_number_in_national_format(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    response = await client.post(
        "/api/v1/inbound", json=inbound("m1", sender="+49 30 5557 1600"), headers=bearer(agent)
    )
    contact_id = (await response.json())["contact_id"]

    _, body = await lookup(client, agent, "030 55571600")

    assert [c["id"] for c in body["contacts"]] == [contact_id]


@pytest.mark.parametrize(
    "raw", ["+49 30 9999 9999", "nobody@example.com", "anonymous", "gibberish"]
)
async def test_an_unknown_identity_finds_an_empty_list(
    client: TestClient, agents: Agents, raw: str
) -> None:
    agent = await agents.add()
    await create(client, agent, ANNA)

    status, body = await lookup(client, agent, raw)

    assert status == 200
    assert body == {"contacts": []}


async def test_a_lookup_without_an_identity_query_is_400(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()

    response = await client.get("/api/v1/contacts", headers=bearer(agent))

    assert_error(response.status, await response.json(), 400, "missing_query")


async def test_a_lookup_needs_a_token(client: TestClient) -> None:
    response = await client.get("/api/v1/contacts", params={"identity": "030 55571600"})

    assert_error(response.status, await response.json(), 401, "unauthorized")


# --- GET /api/v1/contacts/{id} --------------------------------------------------------------


@pytest.mark.parametrize("contact_id", ["999999", "abc", "1.5"])
async def test_an_unknown_or_non_numeric_contact_id_is_a_json_404(
    client: TestClient, agents: Agents, contact_id: str
) -> None:
    agent = await agents.add()
    await create(client, agent, ANNA)

    response = await client.get(f"/api/v1/contacts/{contact_id}", headers=bearer(agent))

    assert_error(response.status, await response.json(), 404, "not_found")


async def test_the_contact_card_lists_its_open_tickets(client: TestClient, agents: Agents) -> None:
    agent = await agents.add()
    response = await client.post("/api/v1/inbound", json=inbound("m1"), headers=bearer(agent))
    ingested = await response.json()

    card = await client.get(f"/api/v1/contacts/{ingested['contact_id']}", headers=bearer(agent))

    (ticket,) = (await card.json())["open_tickets"]
    assert ticket["id"] == ingested["ticket_id"]
    assert ticket["number"] == ingested["ticket_number"]
    assert ticket["status"] == "new"


# --- GET /api/v1/contacts/{id}/timeline -----------------------------------------------------

# Sent in this order; `occurred_at` says otherwise (and one is written with an offset).
OUT_OF_ORDER = [
    ("t-b", "2024-03-01T09:00:00+00:00"),
    ("t-d", "2024-03-01T11:00:00Z"),
    ("t-a", "2024-03-01T08:00:00+00:00"),
    ("t-e", "2024-03-01T14:00:00+02:00"),  # 12:00 UTC
    ("t-c", "2024-03-01T10:00:00+00:00"),
]
NEWEST_FIRST = ["t-e", "t-d", "t-c", "t-b", "t-a"]


async def send_out_of_order(
    client: TestClient, agent: dict[str, Any], events: list[tuple[str, str]] = OUT_OF_ORDER
) -> tuple[int, dict[str, int]]:
    """Ingest `events` from one sender; the contact id and each external id's event id."""
    ids: dict[str, int] = {}
    contact_id = None
    for external_id, occurred_at in events:
        response = await client.post(
            "/api/v1/inbound",
            json=inbound(external_id, body=f"body {external_id}", occurred_at=occurred_at),
            headers=bearer(agent),
        )
        assert response.status == 202
        body = await response.json()
        ids[external_id] = body["event_id"]
        contact_id = body["contact_id"]
    assert contact_id is not None
    return contact_id, ids


async def test_the_timeline_lists_events_newest_first_by_when_they_happened(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    contact_id, ids = await send_out_of_order(client, agent)

    status, body = await timeline(client, agent, contact_id)

    assert status == 200
    assert [e["id"] for e in body["events"]] == [ids[x] for x in NEWEST_FIRST]
    assert [e["body"] for e in body["events"]] == [f"body {x}" for x in NEWEST_FIRST]
    assert [e["occurred_at"] for e in body["events"]] == [
        "2024-03-01T12:00:00+00:00",
        "2024-03-01T11:00:00+00:00",
        "2024-03-01T10:00:00+00:00",
        "2024-03-01T09:00:00+00:00",
        "2024-03-01T08:00:00+00:00",
    ]
    assert body["next_before"] is None


async def test_timeline_events_carry_channel_direction_kind_and_ticket(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    response = await client.post(
        "/api/v1/inbound",
        json=inbound("m1", body="Hello", occurred_at="2024-03-01T09:30:00+00:00"),
        headers=bearer(agent),
    )
    ingested = await response.json()

    _, body = await timeline(client, agent, ingested["contact_id"])

    (event,) = body["events"]
    assert {k: event[k] for k in ("channel", "direction", "kind", "body", "ticket_id")} == {
        "channel": "sms",
        "direction": "in",
        "kind": "message",
        "body": "Hello",
        "ticket_id": ingested["ticket_id"],
    }
    assert event["occurred_at"] == "2024-03-01T09:30:00+00:00"


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
async def test_paging_with_limit_and_before_walks_every_event_exactly_once(
    client: TestClient, agents: Agents, limit: int
) -> None:
    agent = await agents.add()
    contact_id, ids = await send_out_of_order(client, agent)
    expected = [ids[x] for x in NEWEST_FIRST]

    seen: list[int] = []
    pages: list[int] = []
    query: dict[str, str] = {"limit": str(limit)}
    while True:
        status, body = await timeline(client, agent, contact_id, **query)
        assert status == 200
        page = [e["id"] for e in body["events"]]
        seen += page
        pages.append(len(page))
        if body["next_before"] is None:
            break
        assert body["next_before"] == page[-1]
        query = {"limit": str(limit), "before": str(body["next_before"])}
        assert len(pages) <= len(expected), "paging does not end"

    assert seen == expected
    full, rest = divmod(len(expected), limit)
    assert pages == [limit] * full + ([rest] if rest else [])


async def test_paging_through_events_that_happened_at_the_same_moment_misses_none(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    same = "2024-03-01T09:00:00+00:00"
    events = [("s1", same), ("s2", "2024-03-01T10:00:00+00:00"), ("s3", same), ("s4", same)]
    contact_id, ids = await send_out_of_order(client, agent, events)

    seen: list[int] = []
    query = {"limit": "1"}
    for _ in range(len(events) + 1):
        _, body = await timeline(client, agent, contact_id, **query)
        seen += [e["id"] for e in body["events"]]
        if body["next_before"] is None:
            break
        query = {"limit": "1", "before": str(body["next_before"])}

    # Same moment: the later-stored event first.
    assert seen == [ids["s2"], ids["s4"], ids["s3"], ids["s1"]]


async def test_the_timeline_shows_only_that_contacts_events(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    contact_id, ids = await send_out_of_order(client, agent)
    await client.post(
        "/api/v1/inbound", json=inbound("other", sender="+4989123456"), headers=bearer(agent)
    )

    _, body = await timeline(client, agent, contact_id)

    assert sorted(e["id"] for e in body["events"]) == sorted(ids.values())


@pytest.mark.parametrize(
    "query",
    [{"limit": "0"}, {"limit": "-3"}, {"limit": "ten"}, {"limit": "2.5"}, {"before": "x"}],
    ids=["limit-zero", "limit-negative", "limit-word", "limit-fraction", "before-word"],
)
async def test_a_bad_limit_or_before_is_400(
    client: TestClient, agents: Agents, query: dict[str, str]
) -> None:
    agent = await agents.add()
    contact_id, _ = await send_out_of_order(client, agent, OUT_OF_ORDER[:1])

    status, body = await timeline(client, agent, contact_id, **query)

    assert_error(status, body, 400, "invalid_query")


@pytest.mark.parametrize("contact_id", ["999999", "abc"])
async def test_the_timeline_of_an_unknown_contact_is_404(
    client: TestClient, agents: Agents, contact_id: str
) -> None:
    agent = await agents.add()

    response = await client.get(f"/api/v1/contacts/{contact_id}/timeline", headers=bearer(agent))

    assert_error(response.status, await response.json(), 404, "not_found")
