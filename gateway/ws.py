"""`/ws/agent`: presence in, screen-pops out, with replay of what a reconnecting agent missed.

The bus subscription starts before the replay is read from the database, so a pop committed in
between arrives twice at worst (once replayed, once live); replayed ids are remembered and the
live copy is dropped. Pops stay stored until the agent acknowledges them (`{"type": "ack"}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web
from sqlalchemy import update

from gateway import agents
from gateway.api import authenticate
from gateway.auth import Principal
from gateway.bus import Subscription, agent_topic
from gateway.errors import ApiError
from gateway.keys import AGENT_SOCKETS, BUS, DATABASE, DISPATCHER, OPEN_SOCKETS
from gateway.serialize import iso
from timeline import store
from timeline.models import Agent, Presence

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

HEARTBEAT_SECONDS = 25.0


@routes.get("/ws/agent")
async def agent_socket(request: web.Request) -> web.WebSocketResponse:
    principal = await authenticate(request, allow_query=True)
    socket = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS)
    await socket.prepare(request)
    request.app[OPEN_SOCKETS].add(socket)
    try:
        await AgentSession(request.app, principal, socket).run()
    finally:
        request.app[OPEN_SOCKETS].discard(socket)
    return socket


class AgentSession:
    """One connected agent console."""

    def __init__(self, app: web.Application, principal: Principal, socket: web.WebSocketResponse):
        self.app = app
        self.principal = principal
        self.socket = socket
        self._replayed: set[int] = set()

    async def run(self) -> None:
        agent_id = self.principal.agent_id
        sockets = self.app[AGENT_SOCKETS]
        sockets[agent_id] += 1
        subscription = await self.app[BUS].subscribe(agent_topic(agent_id))
        forwarder = asyncio.create_task(self._forward(subscription))
        try:
            await self._send({"type": "hello", "agent_id": agent_id, "name": self.principal.name})
            await self._replay()
            await self._receive()
        finally:
            forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forwarder
            await subscription.close()
            sockets[agent_id] -= 1
            if sockets[agent_id] <= 0:
                del sockets[agent_id]
                await self._go_offline()

    async def _replay(self) -> None:
        async with self.app[DATABASE].reading() as session:
            agent = await session.get(Agent, self.principal.agent_id)
            after = agent.last_acked_pop_id if agent else 0
            missed = await session.run_sync(store.pops_after, self.principal.agent_id, after)
        for pop in missed:
            self._replayed.add(pop.id)
            await self._send({**pop.payload, "id": pop.id, "replayed": True})

    async def _forward(self, subscription: Subscription) -> None:
        async for message in subscription:
            # A pop both replayed and published goes out once; a withdrawal always goes out.
            if message.get("type") == "screen_pop" and message.get("id") in self._replayed:
                continue
            await self._send(message)

    async def _receive(self) -> None:
        async for message in self.socket:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(message.data)
                if not isinstance(data, dict):
                    raise ValueError("not an object")
            except ValueError:
                await self._error("invalid_json", "Messages must be JSON objects.")
                continue
            try:
                await self._handle(data)
            except ApiError as error:
                await self._error(error.code, error.detail)

    async def _handle(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "presence":
            await self._set_presence(agents.parse_presence(data.get("state")))
        elif kind == "ack":
            await self._ack(data.get("id"))
        elif kind == "ping":
            await self._send({"type": "pong"})
        else:
            await self._error("unknown_type", f"Unknown message type {kind!r}.")

    async def _set_presence(self, presence: Presence) -> None:
        async with self.app[DATABASE].transaction() as session:
            agent = await session.run_sync(agents.set_presence, self.principal.agent_id, presence)
        if agent is None:
            return
        await self._send(
            {"type": "presence", "state": agent.presence, "since": iso(agent.presence_since)}
        )
        if presence is Presence.AVAILABLE:
            await self.app[DISPATCHER].offer_waiting(self.principal.agent_id)

    async def _ack(self, pop_id: object) -> None:
        if not isinstance(pop_id, int) or isinstance(pop_id, bool):
            await self._error("invalid_ack", "An ack needs the pop's numeric 'id'.")
            return
        async with self.app[DATABASE].transaction() as session:
            await session.execute(
                update(Agent)
                .where(Agent.id == self.principal.agent_id, Agent.last_acked_pop_id < pop_id)
                .values(last_acked_pop_id=pop_id)
            )

    async def _go_offline(self) -> None:
        """The agent's last console closed: nothing may be routed to an empty chair."""
        try:
            async with self.app[DATABASE].transaction() as session:
                await session.run_sync(
                    agents.set_presence, self.principal.agent_id, Presence.OFFLINE
                )
        except Exception:
            log.exception("could not set agent %s offline", self.principal.agent_id)

    async def _error(self, code: str, detail: str) -> None:
        await self._send({"type": "error", "error": code, "detail": detail})

    async def _send(self, message: dict[str, Any]) -> None:
        if not self.socket.closed:
            await self.socket.send_json(message)
