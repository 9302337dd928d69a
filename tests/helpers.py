"""Helpers the tests share: agents with tokens, auth headers, inbound payloads."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import asyncpg
from aiohttp import web

from gateway.agents import NewAgent, create_agent
from gateway.keys import DATABASE
from gateway.serialize import agent_json
from routing.capacity import Capacity
from timeline.models import Base, Role


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
        skills: tuple[str, ...] = (),
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
            skills=skills,
        )
        async with self.app[DATABASE].transaction() as session:
            agent, token = await session.run_sync(create_agent, new)
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


async def receive(socket: Any, kind: str, within: float = 5.0) -> dict[str, Any]:
    """The next message of `kind` on an agent WebSocket, skipping others (hello, presence…)."""
    async with asyncio.timeout(within):
        while True:
            message = await socket.receive_json()
            if message.get("type") == kind:
                return message


async def nothing_more(socket: Any, kind: str, wait: float = 0.3) -> None:
    """Assert that no message of `kind` arrives within `wait` seconds."""
    try:
        message = await receive(socket, kind, within=wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected {kind}: {message}")


async def go_available(socket: Any) -> None:
    await socket.send_json({"type": "presence", "state": "available"})
    reply = await receive(socket, "presence")
    assert reply["state"] == "available"


async def empty_postgres(url: str) -> None:
    """Every test starts from empty tables (the schema stays; migrations ran once)."""
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    try:
        exists = await connection.fetchval("SELECT to_regclass('public.contacts') IS NOT NULL")
        if exists:
            tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            await connection.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    finally:
        await connection.close()
