"""`/ws/agent`: presence in, screen-pops and offers out, with replay of what a reconnecting
agent missed; `{"type": "accept" | "reject", "id"}` settles an offer. `/ws/supervisor`: queue
figures, pushed when they change.

The bus subscription starts before the replay is read from the database, so a pop committed in
between arrives twice at worst (once replayed, once live); replayed ids are remembered and the
live copy is dropped. Pops stay stored until the agent acknowledges them (`{"type": "ack"}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web
from sqlalchemy import update

from gateway import agents
from gateway.api import authenticate
from gateway.auth import Principal
from gateway.bus import SUPERVISORS_TOPIC, Subscription, agent_topic
from gateway.dispatch import offer_messages
from gateway.errors import ApiError
from gateway.keys import AGENT_SOCKETS, BUS, DATABASE, DISPATCHER, OPEN_SOCKETS
from gateway.routing_api import SUPERVISING, queue_figures
from gateway.serialize import iso
from routing.assignment import OfferGone, pending_offers
from timeline import store
from timeline.models import Agent, Presence

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

HEARTBEAT_SECONDS = 25.0
# A supervisor's figures are refreshed at most this often, however busy the queues.
SUPERVISOR_PUSH_SECONDS = 0.5


@routes.get("/ws/agent")
async def agent_socket(request: web.Request) -> web.WebSocketResponse:
    principal = await authenticate(request, allow_query=True)
    # The close handshake is answered only after the session ended (the agent is offline
    # and its offers passed on), so a console that has closed sees the consequences.
    socket = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, autoclose=False)
    await socket.prepare(request)
    request.app[OPEN_SOCKETS].add(socket)
    try:
        await AgentSession(request.app, principal, socket, request.transport).run()
    finally:
        request.app[OPEN_SOCKETS].discard(socket)
        await socket.close()
    return socket


async def json_objects(
    socket: web.WebSocketResponse, refuse: Callable[[str, str], Awaitable[None]]
) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects a client sends; anything else is answered `invalid_json` (through
    `refuse(code, detail)`) and skipped, and the socket stays open."""
    async for frame in socket:
        if frame.type != WSMsgType.TEXT:
            continue
        try:
            data = json.loads(frame.data)
        except ValueError:
            data = None
        if isinstance(data, dict):
            yield data
        else:
            await refuse("invalid_json", "Messages must be JSON objects.")


class AgentSession:
    """One connected agent console."""

    def __init__(
        self,
        app: web.Application,
        principal: Principal,
        socket: web.WebSocketResponse,
        transport: asyncio.Transport | None,
    ):
        self.app = app
        self.principal = principal
        self.socket = socket
        self._transport = transport
        self._replayed: set[int] = set()
        self._offers_sent: set[int] = set()
        self._forwarding = False  # `_forward` has a queued message on its way out
        self._answering = False  # a message of the console's is being handled

    async def run(self) -> None:
        agent_id = self.principal.agent_id
        sockets = self.app[AGENT_SOCKETS]
        sockets[agent_id] += 1
        subscription = await self.app[BUS].subscribe(agent_topic(agent_id))
        subscription.take_directly(self._take_now)
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
            offers = await session.run_sync(pending_offers, self.principal.agent_id)
            offered = await session.run_sync(offer_messages, offers)
        for pop in missed:
            self._replayed.add(pop.id)
            await self._send({**pop.payload, "id": pop.id, "replayed": True})
        for offer in offered:
            self._offers_sent.add(offer["id"])
            del offer["agent_id"]
            await self._send({**offer, "replayed": True})

    async def _forward(self, subscription: Subscription) -> None:
        async for message in subscription:
            self._forwarding = True
            try:
                await self._pass_on(message)
            finally:
                self._forwarding = False

    async def _take_now(self, message: dict[str, Any]) -> bool:
        """A message published in this process goes out in its publisher's turn of the loop
        when nothing of this console's is on its way out (then nothing is overtaken, and the
        frame goes straight to the kernel); otherwise it is left to `_forward`. So is what a
        message of the console's causes while it is being handled: its answer comes first
        (`offer_accepted`, then the pop of the ticket taken)."""
        if self._forwarding or self._answering or self.socket.closed or self._transport is None:
            return False
        if self._transport.get_write_buffer_size():
            return False
        await self._pass_on(message)
        return True

    async def _pass_on(self, message: dict[str, Any]) -> None:
        # A pop both replayed and published goes out once, an offer published again by
        # another process too; a withdrawal always goes out.
        if message.get("type") == "screen_pop" and message.get("id") in self._replayed:
            return
        if message.get("type") == "offer":
            if message.get("id") in self._offers_sent:
                return
            self._offers_sent.add(message["id"])
        await self._send(message)

    async def _receive(self) -> None:
        async for data in json_objects(self.socket, self._error):
            self._answering = True
            try:
                await self._handle(data)
            except ApiError as error:
                await self._error(error.code, error.detail)
            finally:
                self._answering = False

    async def _handle(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "presence":
            await self._set_presence(agents.parse_presence(data.get("state")))
        elif kind == "ack":
            await self._ack(data.get("id"))
        elif kind in ("accept", "reject"):
            await self._settle(kind, data.get("id"))
        elif kind == "ping":
            await self._send({"type": "pong"})
        else:
            await self._error("unknown_type", f"Unknown message type {kind!r}.")

    async def _set_presence(self, presence: Presence) -> None:
        await self.app[DISPATCHER].set_presence(
            self.principal.agent_id, presence, committed=self._confirm_presence
        )

    async def _confirm_presence(self) -> None:
        async with self.app[DATABASE].reading() as session:
            agent = await session.get(Agent, self.principal.agent_id)
        if agent is not None:
            await self._send(
                {"type": "presence", "state": agent.presence, "since": iso(agent.presence_since)}
            )

    async def _settle(self, kind: str, offer_id: object) -> None:
        """Accept: the ticket becomes the agent's (its `assigned` pop follows); reject: it
        goes to the next agent."""
        if not isinstance(offer_id, int) or isinstance(offer_id, bool):
            await self._error("invalid_offer", f"A {kind} needs the offer's numeric 'id'.")
            return
        dispatcher = self.app[DISPATCHER]
        try:
            if kind == "accept":
                ticket_id = await dispatcher.accept(offer_id, self.principal.agent_id)
                await self._send({"type": "offer_accepted", "id": offer_id, "ticket_id": ticket_id})
            else:
                await dispatcher.reject(offer_id, self.principal.agent_id)
                await self._send({"type": "offer_rejected", "id": offer_id})
        except OfferGone:
            await self._error("offer_gone", f"Offer {offer_id} is no longer open to you.")

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
        """The agent's last console closed: nothing may be routed to an empty chair, and its
        open offers go to others."""
        try:
            await self.app[DISPATCHER].set_presence(self.principal.agent_id, Presence.OFFLINE)
        except Exception:
            log.exception("could not set agent %s offline", self.principal.agent_id)

    async def _error(self, code: str, detail: str) -> None:
        await self._send({"type": "error", "error": code, "detail": detail})

    async def _send(self, message: dict[str, Any]) -> None:
        # A console that vanished mid-send gets the rest on reconnect (replay).
        if not self.socket.closed:
            with contextlib.suppress(ConnectionResetError):
                await self.socket.send_json(message)


@routes.get("/ws/supervisor")
async def supervisor_socket(request: web.Request) -> web.WebSocketResponse:
    """Every queue's figures on connect, then a queue's again whenever routing touched it
    (on any process: the bus carries the news), at most every `SUPERVISOR_PUSH_SECONDS`."""
    principal = await authenticate(request, allow_query=True)
    principal.require(*SUPERVISING)
    socket = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS)
    await socket.prepare(request)
    request.app[OPEN_SOCKETS].add(socket)
    subscription = await request.app[BUS].subscribe(SUPERVISORS_TOPIC)
    pusher = asyncio.create_task(_push_figures(request.app, socket, subscription))
    try:
        async for _ in socket:  # supervisors only listen; this ends when they leave
            pass
    finally:
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pusher
        await subscription.close()
        request.app[OPEN_SOCKETS].discard(socket)
    return socket


async def _push_figures(
    app: web.Application, socket: web.WebSocketResponse, subscription: Subscription
) -> None:
    database = app[DATABASE]
    for queue in await database.read(queue_figures):
        await socket.send_json({"type": "queue_stats", "queue": queue})
    while True:
        changed = {(await subscription.get()).get("queue")}
        await asyncio.sleep(SUPERVISOR_PUSH_SECONDS)
        changed.update(message.get("queue") for message in subscription.drain())
        names = sorted(name for name in changed if isinstance(name, str))
        for queue in await database.read(queue_figures, names):
            if not socket.closed:
                await socket.send_json({"type": "queue_stats", "queue": queue})
