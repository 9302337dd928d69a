"""An Asterisk PBX followed over AMI: its calls land on the timeline and pop to agents."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from channels.asterisk import parse_blocks
from gateway.agents import NewAgent, create_agent
from gateway.app import create_app
from gateway.serialize import agent_json
from gateway.settings import Settings
from tests.helpers import bearer, nothing_more, receive
from tests.stubs.asterisk_ami import SECRET, USERNAME, Script, ScriptedPbx
from timeline.db import Database

FIXTURES = Path(__file__).parent.parent / "fixtures" / "asterisk"


def recorded(name: str) -> list[dict[str, str]]:
    text = (FIXTURES / f"{name}.txt").read_text(encoding="utf-8")
    return parse_blocks(text.replace("\n", "\r\n").encode())


async def agent_in(database_url: str, name: str, extension: str) -> dict[str, Any]:
    database = Database(database_url)
    await database.upgrade()
    try:
        new = NewAgent(name, f"{name.lower()}@example.com", "long enough", extension=extension)
        agent, token = await database.run(create_agent, new)
    finally:
        await database.dispose()
    return {**agent_json(agent), "token": token}


async def the_calls(client: TestClient, agent: dict[str, Any], state: str) -> list[Any]:
    """The caller log once a call reached `state` (the PBX streams on its own time)."""
    async with asyncio.timeout(10):
        while True:
            response = await client.get(f"/api/v1/calls?state={state}", headers=bearer(agent))
            found = (await response.json())["calls"]
            if found:
                return list(found)
            await asyncio.sleep(0.02)


async def test_a_pbx_call_rung_to_two_agents_and_answered_by_one(
    aiohttp_client: Any, database_url: str
) -> None:
    async with ScriptedPbx([Script(recorded("inbound_answered"))]) as pbx:
        settings = Settings(
            database_url=database_url,
            ami_host="127.0.0.1",
            ami_port=pbx.port,
            ami_username=USERNAME,
            ami_secret=SECRET,
        )
        # The agents exist before the gateway connects to the PBX and hears the call.
        first = await agent_in(database_url, "Anna", "201")
        second = await agent_in(database_url, "Bernd", "202")
        client: TestClient = await aiohttp_client(create_app(settings))

        (call,) = await the_calls(client, first, "completed")

    assert call["provider"] == "asterisk"
    assert call["direction"] == "in"
    assert call["answered_by_id"] == second["id"]
    assert call["rung_agent_ids"] == sorted([first["id"], second["id"]])
    assert call["duration_seconds"] is not None
    async with client.ws_connect(f"/ws/agent?token={second['token']}") as socket:
        pop = await receive(socket, "screen_pop")
    assert pop["reason"] == "incoming_call"
    assert pop["contact"]["identities"] == [{"kind": "phone", "value": "+4915771234567"}]
    async with client.ws_connect(f"/ws/agent?token={first['token']}") as socket:
        await nothing_more(socket, "screen_pop")  # withdrawn when Bernd answered
    timeline = await client.get(
        f"/api/v1/contacts/{call['contact_id']}/timeline", headers=bearer(first)
    )
    assert [e["kind"] for e in (await timeline.json())["events"]] == ["call"]
