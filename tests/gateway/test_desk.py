"""The agent's desk: internal notes, contact edits and merging two contacts into one."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.helpers import Agents, bearer, inbound


async def contact(
    client: TestClient, agent: dict[str, Any], name: str, phone: str
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/contacts",
        json={"name": name, "identities": [{"kind": "phone", "value": phone}], "tags": ["b2c"]},
        headers=bearer(agent),
    )
    assert response.status == 201
    body: dict[str, Any] = await response.json()
    return body


async def timeline(
    client: TestClient, agent: dict[str, Any], contact_id: int
) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/contacts/{contact_id}/timeline", headers=bearer(agent))
    events: list[dict[str, Any]] = (await response.json())["events"]
    return events


async def test_an_internal_note_lands_on_the_ticket_timeline_as_a_note(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna")
    sms = await (
        await client.post("/api/v1/inbound", json=inbound("n1"), headers=bearer(anna))
    ).json()

    response = await client.post(
        f"/api/v1/tickets/{sms['ticket_id']}/notes",
        json={"body": "Customer prefers calls after 5 pm"},
        headers=bearer(anna),
    )

    assert response.status == 201
    note = await response.json()
    assert (note["kind"], note["direction"], note["sender"]) == ("note", "out", "Anna")
    events = await timeline(client, anna, sms["contact_id"])
    assert [e["kind"] for e in events] == ["note", "message"]
    assert events[0]["ticket_id"] == sms["ticket_id"]


async def test_a_note_needs_a_body_and_a_ticket(client: TestClient, agents: Agents) -> None:
    anna = await agents.add("Anna")

    empty = await client.post("/api/v1/tickets/1/notes", json={"body": " "}, headers=bearer(anna))
    missing = await client.post(
        "/api/v1/tickets/999/notes", json={"body": "x"}, headers=bearer(anna)
    )

    assert (empty.status, (await empty.json())["error"]) == (400, "invalid_payload")
    assert (missing.status, (await missing.json())["error"]) == (404, "not_found")


async def test_merging_moves_identities_tickets_and_timeline_to_the_winner(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna")
    old = await contact(client, anna, "Erika Mustermann", "+493055571600")
    new = await contact(client, anna, "E. Mustermann", "+4915112345678")
    sms = await (
        await client.post(
            "/api/v1/inbound", json=inbound("m1", sender="+4915112345678"), headers=bearer(anna)
        )
    ).json()
    assert sms["contact_id"] == new["id"]

    response = await client.post(
        f"/api/v1/contacts/{new['id']}/merge", json={"into": old["id"]}, headers=bearer(anna)
    )

    assert response.status == 200
    winner = await response.json()
    assert {i["value"] for i in winner["identities"]} == {"+493055571600", "+4915112345678"}
    assert [e["external_id"] for e in await timeline(client, anna, old["id"])] == ["m1"]
    ticket = await (
        await client.get(f"/api/v1/tickets/{sms['ticket_id']}", headers=bearer(anna))
    ).json()
    assert ticket["contact_id"] == old["id"]
    loser = await (await client.get(f"/api/v1/contacts/{new['id']}", headers=bearer(anna))).json()
    assert (loser["merged_into_id"], loser["identities"]) == (old["id"], [])
    again = await client.post(
        "/api/v1/inbound", json=inbound("m2", sender="+4915112345678"), headers=bearer(anna)
    )
    assert (await again.json())["contact_id"] == old["id"]


async def test_merging_a_contact_into_itself_or_twice_is_refused(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna")
    one = await contact(client, anna, "One", "+493055571601")
    two = await contact(client, anna, "Two", "+493055571602")
    path = f"/api/v1/contacts/{one['id']}/merge"

    itself = await client.post(path, json={"into": one["id"]}, headers=bearer(anna))
    first = await client.post(path, json={"into": two["id"]}, headers=bearer(anna))
    twice = await client.post(path, json={"into": two["id"]}, headers=bearer(anna))
    bad = await client.post(path, json={"into": "two"}, headers=bearer(anna))

    assert [itself.status, first.status, twice.status, bad.status] == [409, 200, 409, 400]


async def test_an_agent_corrects_a_contacts_name_and_tags(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna")
    erika = await contact(client, anna, "erika", "+493055571600")

    response = await client.patch(
        f"/api/v1/contacts/{erika['id']}",
        json={
            "name": "Erika Mustermann",
            "tags": ["VIP", "b2c", "VIP"],
            "attributes": {"abc": "A"},
        },
        headers=bearer(anna),
    )
    unknown = await client.patch(
        f"/api/v1/contacts/{erika['id']}", json={"identities": []}, headers=bearer(anna)
    )

    edited = await response.json()
    assert (edited["name"], edited["tags"], edited["attributes"]) == (
        "Erika Mustermann", ["VIP", "b2c"], {"abc": "A"},
    )  # fmt: skip
    assert unknown.status == 400
