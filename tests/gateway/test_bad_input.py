"""Bad input gets a JSON error with an honest status, and nothing is half-stored."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.keys import DATABASE, SETTINGS
from tests.helpers import Agents, bearer, inbound
from timeline import store
from timeline.models import Contact, InboundJournal, Role, Ticket, TimelineEvent


async def stored(client: TestClient) -> dict[str, int]:
    async with client.server.app[DATABASE].reading() as session:
        return {
            m.__name__: await session.run_sync(store.count, m)
            for m in (Contact, Ticket, TimelineEvent)
        }


async def journal(client: TestClient) -> list[InboundJournal]:
    async with client.server.app[DATABASE].reading() as session:
        return list((await session.execute(select(InboundJournal))).scalars())


def assert_error_body(body: Any, code: str) -> None:
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]


NOTHING = {"Contact": 0, "Ticket": 0, "TimelineEvent": 0}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sb_not-a-token"}, {"Authorization": "Basic Zm9vOmJhcg=="}],
    ids=["no-token", "unknown-token", "wrong-scheme"],
)
async def test_unauthenticated_inbound_is_401_and_stores_nothing(
    client: TestClient, headers: dict[str, str]
) -> None:
    response = await client.post("/api/v1/inbound", json=inbound("m1"), headers=headers)

    assert response.status == 401
    assert_error_body(await response.json(), "unauthorized")
    assert await stored(client) == NOTHING
    assert await journal(client) == [], "an unauthenticated payload is not journaled"


async def test_an_agent_creating_agents_is_403(client: TestClient, agents: Agents) -> None:
    agent = await agents.add(role=Role.AGENT)
    response = await client.post(
        "/api/v1/agents",
        json={"name": "X", "email": "x@example.com", "password": "long enough"},
        headers=bearer(agent),
    )

    assert response.status == 403
    assert_error_body(await response.json(), "forbidden")


async def test_an_admin_may_create_agents(client: TestClient, agents: Agents) -> None:
    admin = await agents.add(role=Role.ADMIN)
    response = await client.post(
        "/api/v1/agents",
        json={
            "name": "Bo",
            "email": "Bo@Example.com",
            "password": "long enough",
            "capacity": "sms=2",
        },
        headers=bearer(admin),
    )

    assert response.status == 201
    body = await response.json()
    assert body["email"] == "bo@example.com"
    assert body["token"].startswith("sb_")
    assert body["capacity"] == {"total": None, "channels": {"sms": 2}}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"channel": "sms", "from": ', "invalid_json"),
        (b"[1, 2, 3]", "invalid_payload"),
        (
            b'{"channel": "fax", "from": "+4930123", "external_id": "f1", "body": "x"}',
            "unknown_channel",
        ),
        (b'{"channel": "sms", "external_id": "f1", "body": "x"}', "invalid_payload"),
        (b'{"channel": "sms", "from": "+4930123", "body": "no id"}', "invalid_payload"),
    ],
    ids=["malformed-json", "not-an-object", "unknown-channel", "no-sender", "no-external-id"],
)
async def test_a_malformed_authentic_payload_is_400_and_journaled_as_rejected(
    client: TestClient, agents: Agents, body: bytes, code: str
) -> None:
    agent = await agents.add()
    response = await client.post(
        "/api/v1/inbound", data=body, headers={**bearer(agent), "Content-Type": "application/json"}
    )

    assert response.status == 400
    assert_error_body(await response.json(), code)
    assert await stored(client) == NOTHING
    (entry,) = await journal(client)
    assert entry.status == "rejected"
    assert entry.reason
    assert entry.payload == body


async def test_an_oversized_body_is_413(client: TestClient, agents: Agents) -> None:
    agent = await agents.add()
    limit = client.server.app[SETTINGS].max_body_bytes
    payload = inbound("big", body="x" * (limit + 1))

    response = await client.post("/api/v1/inbound", json=payload, headers=bearer(agent))

    assert response.status == 413
    assert_error_body(await response.json(), "payload_too_large")
    assert await stored(client) == NOTHING


async def test_unknown_paths_and_methods_answer_json(client: TestClient) -> None:
    missing = await client.get("/api/v1/nothing-here")
    wrong_method = await client.delete("/healthz")

    assert missing.status == 404
    assert_error_body(await missing.json(), "not_found")
    assert wrong_method.status == 405
    assert_error_body(await wrong_method.json(), "method_not_allowed")


async def test_an_unexpected_failure_is_a_500_with_a_request_id_and_no_trace(
    client: TestClient, agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await agents.add()
    created = await client.post(
        "/api/v1/contacts", json={"name": "C", "identities": []}, headers=bearer(agent)
    )
    contact_id = (await created.json())["id"]

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("database on fire at /srv/secret/path")

    monkeypatch.setattr(store, "recent_events", broken)
    response = await client.get(f"/api/v1/contacts/{contact_id}/timeline", headers=bearer(agent))

    body = await response.json()
    assert response.status == 500
    assert_error_body(body, "internal_error")
    assert len(body["request_id"]) == 16
    assert "secret" not in str(body)


async def test_a_failure_after_journaling_keeps_the_payload_as_failed(
    client: TestClient, agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await agents.add()

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("simulated crash while appending")

    monkeypatch.setattr(store, "add_events", broken)
    response = await client.post("/api/v1/inbound", json=inbound("m1"), headers=bearer(agent))

    assert response.status == 500
    assert_error_body(await response.json(), "ingest_failed")
    assert await stored(client) == NOTHING, "the ingest transaction rolled back whole"
    (entry,) = await journal(client)
    assert entry.status == "failed"
    assert "simulated crash" in (entry.reason or "")
