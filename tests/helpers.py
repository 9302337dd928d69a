"""Helpers the tests share: agents with tokens, auth headers, inbound payloads."""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from gateway.agents import NewAgent, create_agent
from gateway.keys import DATABASE
from gateway.serialize import agent_json
from routing.capacity import Capacity
from timeline.models import Role


class Agents:
    """Makes agents straight in the database of an app; returns their JSON with a token."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._count = 0

    async def add(
        self,
        name: str | None = None,
        *,
        role: Role = Role.AGENT,
        capacity: str = "3",
        extension: str | None = None,
    ) -> dict[str, Any]:
        self._count += 1
        name = name or f"Agent {self._count}"
        new = NewAgent(
            name=name,
            email=f"agent{self._count}.{secrets.token_hex(2)}@example.com",
            password="correct horse battery",
            role=role,
            extension=extension,
            capacity=Capacity.parse(capacity),
        )
        async with self.app[DATABASE].transaction() as session:
            agent, token = await create_agent(session, new)
        return {**agent_json(agent), "token": token}


def bearer(agent: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {agent['token']}"}


def inbound(external_id: str, sender: str = "+4930555716000", **fields: Any) -> dict[str, Any]:
    """A generic inbound payload, SMS by default."""
    return {
        "channel": "sms",
        "from": sender,
        "to": "+493012345678",
        "external_id": external_id,
        "body": f"message {external_id}",
        **fields,
    }
