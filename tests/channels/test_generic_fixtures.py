"""Every real-shaped payload in tests/fixtures/generic/ through the whole ingest path.

Adding a case is adding a file: `{"description", "payload", "expect": {"contact", "event"}}`,
where `expect` lists only the fields that matter for that case.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.keys import DATABASE
from gateway.serialize import event_json
from tests.helpers import Agents, bearer
from timeline.models import TimelineEvent

FIXTURES = sorted((Path(__file__).parent.parent / "fixtures" / "generic").glob("*.json"))
CASES = [json.loads(f.read_text(encoding="utf-8")) for f in FIXTURES]


@pytest.mark.parametrize("case", CASES, ids=[f.stem for f in FIXTURES])
async def test_fixture_lands_on_the_timeline_as_expected(
    client: TestClient, agents: Agents, case: dict[str, Any]
) -> None:
    agent = await agents.add()

    response = await client.post("/api/v1/inbound", json=case["payload"], headers=bearer(agent))

    assert response.status == 202, await response.text()
    result = await response.json()
    async with client.server.app[DATABASE].reading() as session:
        event = (
            await session.execute(
                select(TimelineEvent).where(TimelineEvent.id == result["event_id"])
            )
        ).scalar_one()
    stored_event = event_json(event)
    assert {k: stored_event[k] for k in case["expect"]["event"]} == case["expect"]["event"]
    expected_contact = case["expect"]["contact"]
    if expected_contact is None:
        assert result["contact_id"] is None
        return
    contact_response = await client.get(
        f"/api/v1/contacts/{result['contact_id']}", headers=bearer(agent)
    )
    contact = await contact_response.json()
    assert {k: contact[k] for k in expected_contact} == expected_contact


def test_there_are_fixtures_to_feed() -> None:
    assert len(FIXTURES) >= 5
