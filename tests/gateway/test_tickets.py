"""Tickets by API: reading, listing with filters, changing, assigning, and capacity."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import Agents, bearer, inbound


async def ingest(
    client: TestClient, agent: dict[str, Any], external_id: str, sender: str
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/inbound", json=inbound(external_id, sender=sender), headers=bearer(agent)
    )
    assert response.status == 202
    return await response.json()


async def waiting_tickets(client: TestClient, agent: dict[str, Any], n: int) -> list[int]:
    """`n` tickets from `n` different senders, oldest first (nobody available: all wait)."""
    return [
        (await ingest(client, agent, f"w{i}", f"+49301111{i:04d}"))["ticket_id"] for i in range(n)
    ]


async def get_ticket(client: TestClient, agent: dict[str, Any], ticket_id: int) -> dict[str, Any]:
    response = await client.get(f"/api/v1/tickets/{ticket_id}", headers=bearer(agent))
    assert response.status == 200
    return await response.json()


async def patch_ticket(
    client: TestClient, agent: dict[str, Any], ticket_id: int, changes: Any
) -> tuple[int, Any]:
    response = await client.patch(
        f"/api/v1/tickets/{ticket_id}", json=changes, headers=bearer(agent)
    )
    return response.status, await response.json()


async def list_ids(client: TestClient, agent: dict[str, Any], **query: str) -> list[int]:
    response = await client.get("/api/v1/tickets", params=query, headers=bearer(agent))
    assert response.status == 200, await response.text()
    return [t["id"] for t in (await response.json())["tickets"]]


async def set_presence(client: TestClient, agent: dict[str, Any], presence: str) -> None:
    response = await client.patch(
        f"/api/v1/agents/{agent['id']}", json={"presence": presence}, headers=bearer(agent)
    )
    assert response.status == 200
    assert (await response.json())["presence"] == presence


def assert_error(status: int, body: Any, expected_status: int, code: str) -> None:
    assert status == expected_status
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]


# --- GET /api/v1/tickets/{id} ---------------------------------------------------------------


async def test_a_ticket_is_read_with_its_contract_fields(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    ingested = await ingest(client, agent, "m1", "+4930555716000")

    ticket = await get_ticket(client, agent, ingested["ticket_id"])

    assert {k: ticket[k] for k in ("id", "number", "status", "contact_id", "assignee_id")} == {
        "id": ingested["ticket_id"],
        "number": ingested["ticket_number"],
        "status": "new",
        "contact_id": ingested["contact_id"],
        "assignee_id": None,
    }
    assert ticket["priority"] == "normal"
    assert ticket["channel"] == "sms"
    assert ticket["resolved_at"] is None


@pytest.mark.parametrize("ticket_id", ["999999", "abc"])
async def test_an_unknown_ticket_is_a_json_404(
    client: TestClient, agents: Agents, ticket_id: str
) -> None:
    agent = await agents.add()
    await ingest(client, agent, "m1", "+4930555716000")

    response = await client.get(f"/api/v1/tickets/{ticket_id}", headers=bearer(agent))

    assert_error(response.status, await response.json(), 404, "not_found")


async def test_patching_an_unknown_ticket_is_a_json_404(client: TestClient, agents: Agents) -> None:
    agent = await agents.add()

    status, body = await patch_ticket(client, agent, 999999, {"status": "open"})

    assert_error(status, body, 404, "not_found")


# --- GET /api/v1/tickets?status=&assignee= --------------------------------------------------


async def test_tickets_are_listed_by_one_status_or_a_comma_separated_list(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    new, pending, resolved, also_new = await waiting_tickets(client, agent, 4)
    assert (await patch_ticket(client, agent, pending, {"status": "pending"}))[0] == 200
    assert (await patch_ticket(client, agent, resolved, {"status": "resolved"}))[0] == 200

    assert await list_ids(client, agent) == [also_new, resolved, pending, new]
    assert await list_ids(client, agent, status="new") == [also_new, new]
    assert await list_ids(client, agent, status="resolved") == [resolved]
    assert await list_ids(client, agent, status="new,pending") == [also_new, pending, new]
    assert await list_ids(client, agent, status="pending, resolved") == [resolved, pending]
    assert await list_ids(client, agent, status="closed") == []


@pytest.mark.parametrize("status", ["done", "new,done", "NEW", "new,"])
async def test_listing_by_an_unknown_status_is_400(
    client: TestClient, agents: Agents, status: str
) -> None:
    agent = await agents.add()

    response = await client.get("/api/v1/tickets", params={"status": status}, headers=bearer(agent))

    assert_error(response.status, await response.json(), 400, "invalid_query")


async def test_tickets_are_listed_by_assignee_me_none_or_an_agent_id(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna")
    bernd = await agents.add("Bernd")
    for_anna, for_bernd, unassigned, also_anna = await waiting_tickets(client, anna, 4)
    for ticket_id, agent in ((for_anna, anna), (for_bernd, bernd), (also_anna, anna)):
        status, _ = await patch_ticket(client, anna, ticket_id, {"assignee_id": agent["id"]})
        assert status == 200

    assert await list_ids(client, anna, assignee="me") == [also_anna, for_anna]
    assert await list_ids(client, bernd, assignee="me") == [for_bernd]
    assert await list_ids(client, anna, assignee="none") == [unassigned]
    assert await list_ids(client, anna, assignee=str(bernd["id"])) == [for_bernd]
    assert await list_ids(client, bernd, assignee=str(anna["id"])) == [also_anna, for_anna]
    assert await list_ids(client, anna, assignee="me", status="open") == [also_anna, for_anna]
    assert await list_ids(client, anna, assignee="none", status="open") == []


@pytest.mark.parametrize("assignee", ["someone", "-1", "1.0"])
async def test_listing_by_a_malformed_assignee_is_400(
    client: TestClient, agents: Agents, assignee: str
) -> None:
    agent = await agents.add()

    response = await client.get(
        "/api/v1/tickets", params={"assignee": assignee}, headers=bearer(agent)
    )

    assert_error(response.status, await response.json(), 400, "invalid_query")


# --- PATCH /api/v1/tickets/{id}: status and priority ----------------------------------------


async def test_status_and_priority_are_changed_by_patch(client: TestClient, agents: Agents) -> None:
    agent = await agents.add()
    (ticket_id,) = await waiting_tickets(client, agent, 1)

    status, body = await patch_ticket(
        client, agent, ticket_id, {"status": "pending", "priority": "urgent"}
    )

    assert status == 200
    assert (body["id"], body["status"], body["priority"]) == (ticket_id, "pending", "urgent")
    stored = await get_ticket(client, agent, ticket_id)
    assert (stored["status"], stored["priority"]) == ("pending", "urgent")


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"status": "done"}, "invalid_status"),
        ({"status": None}, "invalid_status"),
        ({"status": "pending", "priority": "critical"}, "invalid_priority"),
        ({"priority": 1}, "invalid_priority"),
        ({"subject": "Renamed"}, "invalid_payload"),
        ({"status": "pending", "contact_id": 1}, "invalid_payload"),
        ({"assignee_id": "1"}, "invalid_assignee"),
        ({"assignee_id": True}, "invalid_assignee"),
    ],
    ids=[
        "unknown-status",
        "null-status",
        "unknown-priority",
        "numeric-priority",
        "unknown-field",
        "unknown-field-beside-a-valid-one",
        "assignee-as-text",
        "assignee-as-bool",
    ],
)
async def test_an_invalid_change_is_400_and_changes_nothing(
    client: TestClient, agents: Agents, changes: dict[str, Any], code: str
) -> None:
    agent = await agents.add()
    (ticket_id,) = await waiting_tickets(client, agent, 1)
    before = await get_ticket(client, agent, ticket_id)

    status, body = await patch_ticket(client, agent, ticket_id, changes)

    assert_error(status, body, 400, code)
    assert await get_ticket(client, agent, ticket_id) == before


async def test_a_patch_body_that_is_not_a_json_object_is_400(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    (ticket_id,) = await waiting_tickets(client, agent, 1)

    status, body = await patch_ticket(client, agent, ticket_id, ["status", "open"])

    assert_error(status, body, 400, "invalid_payload")


# --- PATCH /api/v1/tickets/{id}: assignee ---------------------------------------------------


async def test_assigning_to_an_agent_with_room_assigns_and_opens_the_ticket(
    client: TestClient, agents: Agents
) -> None:
    supervisor = await agents.add("Supervisor")
    agent = await agents.add("Anna", capacity="2")
    (ticket_id,) = await waiting_tickets(client, supervisor, 1)

    status, body = await patch_ticket(client, supervisor, ticket_id, {"assignee_id": agent["id"]})

    assert status == 200
    assert body["assignee_id"] == agent["id"]
    assert body["status"] == "open"
    assert body["assigned_at"] is not None
    assert await list_ids(client, agent, assignee="me") == [ticket_id]


async def test_assigning_to_an_agent_at_capacity_is_409_and_changes_nothing(
    client: TestClient, agents: Agents
) -> None:
    supervisor = await agents.add("Supervisor", capacity="5")
    full = await agents.add("Full", capacity="1")
    holds, ticket_id = await waiting_tickets(client, supervisor, 2)
    for held, owner in ((holds, full), (ticket_id, supervisor)):
        status, _ = await patch_ticket(client, supervisor, held, {"assignee_id": owner["id"]})
        assert status == 200
    before = await get_ticket(client, supervisor, ticket_id)

    status, body = await patch_ticket(
        client, supervisor, ticket_id, {"assignee_id": full["id"], "priority": "high"}
    )

    assert_error(status, body, 409, "agent_at_capacity")
    assert await get_ticket(client, supervisor, ticket_id) == before
    assert before["assignee_id"] == supervisor["id"]
    assert await list_ids(client, full, assignee="me") == [holds]


async def test_assigning_to_an_agent_that_does_not_exist_is_400_and_changes_nothing(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    (ticket_id,) = await waiting_tickets(client, agent, 1)
    before = await get_ticket(client, agent, ticket_id)

    status, body = await patch_ticket(client, agent, ticket_id, {"assignee_id": 424242})

    assert_error(status, body, 400, "invalid_assignee")
    assert await get_ticket(client, agent, ticket_id) == before


# --- Capacity: resolving frees it, waiting tickets are offered oldest first -----------------


async def test_resolving_sets_resolved_at_and_the_waiting_ticket_goes_to_the_freed_agent(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add("Anna", capacity="1")
    await set_presence(client, agent, "available")
    first = await ingest(client, agent, "a1", "+4930555716001")
    second = await ingest(client, agent, "b1", "+4930555716002")
    assert first["assignee_id"] == agent["id"]
    assert second["assignee_id"] is None, "an agent of capacity 1 holding a ticket takes no more"
    assert (await get_ticket(client, agent, second["ticket_id"]))["assignee_id"] is None

    status, resolved = await patch_ticket(client, agent, first["ticket_id"], {"status": "resolved"})

    assert status == 200
    assert resolved["status"] == "resolved"
    assert resolved["resolved_at"] is not None
    waiting = await get_ticket(client, agent, second["ticket_id"])
    assert (waiting["assignee_id"], waiting["status"]) == (agent["id"], "open")
    assert await list_ids(client, agent, assignee="me", status="new,open,pending") == [
        second["ticket_id"]
    ]


async def test_closing_also_frees_capacity_for_the_oldest_waiting_ticket(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add("Anna", capacity="1")
    await set_presence(client, agent, "available")
    held = await ingest(client, agent, "a1", "+4930555716001")
    older = await ingest(client, agent, "b1", "+4930555716002")
    newer = await ingest(client, agent, "c1", "+4930555716003")

    status, _ = await patch_ticket(client, agent, held["ticket_id"], {"status": "closed"})

    assert status == 200
    assert (await get_ticket(client, agent, older["ticket_id"]))["assignee_id"] == agent["id"]
    assert (await get_ticket(client, agent, newer["ticket_id"]))["assignee_id"] is None


async def test_reopening_a_resolved_ticket_clears_resolved_at(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add()
    (ticket_id,) = await waiting_tickets(client, agent, 1)
    await patch_ticket(client, agent, ticket_id, {"status": "resolved"})

    status, body = await patch_ticket(client, agent, ticket_id, {"status": "open"})

    assert status == 200
    assert (body["status"], body["resolved_at"]) == ("open", None)


async def test_reopening_a_resolved_ticket_by_api_never_puts_its_agent_over_capacity(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add("Anna", capacity="1")
    await set_presence(client, agent, "available")
    first = await ingest(client, agent, "a1", "+4930555716001")
    second = await ingest(client, agent, "b1", "+4930555716002")
    await patch_ticket(client, agent, first["ticket_id"], {"status": "resolved"})
    assert (await get_ticket(client, agent, second["ticket_id"]))["assignee_id"] == agent["id"]

    await patch_ticket(client, agent, first["ticket_id"], {"status": "open"})

    held = await list_ids(client, agent, assignee="me", status="new,open,pending")
    assert len(held) <= 1, f"agent of capacity 1 holds open tickets {held}"


async def test_an_agent_going_available_is_offered_the_oldest_waiting_tickets_up_to_capacity(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add("Anna", capacity="2")
    oldest, middle, newest = await waiting_tickets(client, agent, 3)
    assert await list_ids(client, agent, assignee="none") == [newest, middle, oldest]

    await set_presence(client, agent, "available")

    assert await list_ids(client, agent, assignee="me") == [middle, oldest]
    assert await list_ids(client, agent, assignee="none") == [newest]
    for ticket_id in (oldest, middle):
        assert (await get_ticket(client, agent, ticket_id))["status"] == "open"
    assert (await get_ticket(client, agent, newest))["status"] == "new"


async def test_an_agent_going_away_is_offered_nothing(client: TestClient, agents: Agents) -> None:
    agent = await agents.add("Anna", capacity="2")
    await waiting_tickets(client, agent, 2)

    await set_presence(client, agent, "away")

    assert await list_ids(client, agent, assignee="me") == []


async def test_reopening_by_api_keeps_the_agent_who_still_has_room(
    client: TestClient, agents: Agents
) -> None:
    agent = await agents.add("Anna", capacity="2")
    await set_presence(client, agent, "available")
    first = await ingest(client, agent, "a1", "+4930555716001")
    await patch_ticket(client, agent, first["ticket_id"], {"status": "resolved"})

    await patch_ticket(client, agent, first["ticket_id"], {"status": "open"})

    ticket = await get_ticket(client, agent, first["ticket_id"])
    assert (ticket["status"], ticket["assignee_id"]) == ("open", agent["id"])


async def test_a_ticket_handed_back_goes_to_another_agent_with_room(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna", capacity="2")
    bernd = await agents.add("Bernd", capacity="2")
    await set_presence(client, anna, "available")
    first = await ingest(client, anna, "a1", "+4930555716001")
    await set_presence(client, bernd, "available")

    await patch_ticket(client, anna, first["ticket_id"], {"assignee_id": None})

    assert (await get_ticket(client, anna, first["ticket_id"]))["assignee_id"] == bernd["id"]
