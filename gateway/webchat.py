"""Web chat for customers: the widget's files and its WebSocket `/ws/chat`.

The widget (`/chat/widget.js`, one script, no build step) runs on the company's own pages; a
page from another origin may open the socket only if SWITCHBOARD_WEBCHAT_ORIGINS lists it
(browsers send `Origin` on every WebSocket handshake, and do not stop cross-site sockets
themselves). On connect the visitor gets its history and whether an agent is there; its
messages take the one ingest path; agent replies arrive through the outbox's web-chat sender
on the visitor's bus topic, so they reach the socket whichever process holds it. Each visitor
may send `SWITCHBOARD_WEBCHAT_MESSAGES_PER_MINUTE` messages (a token bucket per visitor and
process).

Messages to the widget (`type`): `welcome` {visitor, agents_available, history}, `message`
{id, direction, body, occurred_at}, `sent` {client_id, id}, `typing`, `prechat_ok`,
`offline_ok` {ticket_number}, `error` {error, detail}. From the widget: `message` {text,
client_id}, `typing`, `prechat` {name, email?}, `offline` {name, email, text, client_id}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from importlib import resources
from typing import Any

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from channels import InvalidPayload, webchat
from channels.webchat import EMAIL, WEBCHAT, chat_message
from gateway.api import authenticate, path_id
from gateway.bus import Subscription, agent_topic
from gateway.errors import ApiError, not_found
from gateway.ingest import IngestError
from gateway.keys import BUS, DATABASE, INGESTOR, MESSAGE_STATUS, OPEN_SOCKETS, SETTINGS
from gateway.outbox import RateLimit
from gateway.ws import json_objects
from routing.identity import normalise
from timeline import messaging, outbox
from timeline.models import Agent, Presence, Ticket, TimelineEvent

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

VISITOR_COOKIE = "switchboard_visitor"
HISTORY = 100
HEARTBEAT_SECONDS = 25.0
TYPING_EVERY_SECONDS = 2.0
# The widget styles itself with a <style> element of its own; nothing else on the page is inline.
DEMO_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "connect-src 'self'",
        "base-uri 'none'",
    ]
)


def _asset(name: str) -> str:
    return resources.files("agent_ui").joinpath(f"static/{name}").read_text(encoding="utf-8")


@routes.get("/chat/widget.js")
async def widget(request: web.Request) -> web.Response:
    """Public: embedded by other origins' pages, so it is served to anyone."""
    return web.Response(
        text=_asset("chat-widget.js"),
        content_type="text/javascript",
        headers={"Access-Control-Allow-Origin": "*", "Cache-Control": "public, max-age=300"},
    )


@routes.get("/chat/demo")
async def demo(request: web.Request) -> web.Response:
    """A page with the widget on it, to try the chat (and for the browser test)."""
    return web.Response(
        text=_asset("chat-demo.html"),
        content_type="text/html",
        headers={"Content-Security-Policy": DEMO_POLICY},
    )


@routes.get("/ws/chat")
async def chat_socket(request: web.Request) -> web.WebSocketResponse:
    _check_origin(request)
    visitor = request.query.get("visitor") or request.cookies.get(VISITOR_COOKIE)
    if not webchat.valid_visitor(visitor):
        visitor = secrets.token_urlsafe(18)
    assert visitor is not None
    socket = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS)
    socket.set_cookie(
        VISITOR_COOKIE, visitor, max_age=365 * 24 * 3600, httponly=True, samesite="Lax"
    )
    await socket.prepare(request)
    request.app[OPEN_SOCKETS].add(socket)
    try:
        await ChatSession(request.app, visitor, socket).run()
    finally:
        request.app[OPEN_SOCKETS].discard(socket)
    return socket


def _check_origin(request: web.Request) -> None:
    """Only pages of our own origin, or of the origins the setting lists, may chat."""
    origin = request.headers.get("Origin")
    if origin is None:  # not a browser: nothing a web page could abuse
        return
    settings = request.app[SETTINGS]
    own = {f"{request.scheme}://{request.host}"}
    if settings.public_url:
        own.add(settings.public_url.rstrip("/"))
    if origin.rstrip("/") not in own | set(settings.webchat_origins):
        raise ApiError(403, "origin_not_allowed", "This page may not open the chat.")


class ChatSession:
    """One visitor's socket."""

    def __init__(self, app: web.Application, visitor: str, socket: web.WebSocketResponse):
        self.app = app
        self.visitor = visitor
        self.socket = socket
        self.name: str | None = None
        per_minute = app[SETTINGS].webchat_messages_per_minute
        self._limit = RateLimit(per_minute / 60, burst=max(1.0, min(per_minute, 10.0)))
        self._typing_at = 0.0

    async def run(self) -> None:
        subscription = await self.app[BUS].subscribe(webchat.visitor_topic(self.visitor))
        forwarder = asyncio.create_task(self._forward(subscription))
        try:
            await self._welcome()
            await self._receive()
        finally:
            forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forwarder
            await subscription.close()

    async def _welcome(self) -> None:
        db = self.app[DATABASE]
        history = await db.read(messaging.conversation, webchat.CHANNEL, self.visitor, HISTORY)
        available = await db.read(_agents_available)
        await self._send(
            {
                "type": "welcome",
                "visitor": self.visitor,
                "agents_available": available,
                "history": [_line(e) for e in history],
            }
        )

    async def _forward(self, subscription: Subscription) -> None:
        async for message in subscription:
            await self._send(message)
            if message.get("type") == "message" and message.get("direction") == "out":
                await self._delivered(str(message["id"]))

    async def _delivered(self, message_id: str) -> None:
        """The reply reached the visitor's browser: the agent sees it delivered."""
        db = self.app[DATABASE]
        try:
            if await db.run(outbox.mark_delivery, webchat.CHANNEL, message_id, "delivered", None):
                event = await db.read(outbox.outbound_event, webchat.CHANNEL, message_id)
                if event is not None:
                    await self.app[MESSAGE_STATUS]([event.id])
        except Exception:  # the reply is on the screen all the same; only its receipt is lost
            log.exception("web chat: recording the delivery of %s failed", message_id)

    async def _receive(self) -> None:
        async for data in json_objects(self.socket, self._error):
            try:
                await self._handle(data)
            except InvalidPayload as error:
                await self._error(error.code, error.detail)
            except IngestError:
                await self._error("ingest_failed", "The message could not be stored; resend it.")

    async def _handle(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "typing":
            await self._typing()
            return
        if kind not in ("message", "prechat", "offline"):
            await self._error("unknown_type", f"Unknown message type {kind!r}.")
            return
        if self._limit.available() < 1:
            await self._error("rate_limited", "Too many messages; wait a moment.")
            return
        self._limit.take(1)
        if kind == "message":
            await self._message(data)
        elif kind == "prechat":
            await self._prechat(data)
        else:
            await self._offline(data)

    async def _message(self, data: dict[str, Any]) -> None:
        event = webchat.message_event(self.visitor, data, self.name)
        await self.app[INGESTOR].ingest(
            event, payload=json.dumps(data).encode(), content_type="application/json"
        )
        line = chat_message(event.external_id, "in", event.text, event.occurred_at)
        await self._send({"type": "sent", "client_id": data["client_id"], "id": line["id"]})
        # The visitor's other tabs show it too (this one skips the copy by its id).
        await self.app[BUS].publish(webchat.visitor_topic(self.visitor), line)

    async def _prechat(self, data: dict[str, Any]) -> None:
        form = webchat.prechat(data)
        self.name = form.name
        if form.email is not None:
            await self.app[DATABASE].run(
                messaging.link_identities,
                (WEBCHAT, self.visitor),
                (EMAIL, self._email(form.email)),
                form.name,
            )
        await self._send({"type": "prechat_ok"})

    async def _offline(self, data: dict[str, Any]) -> None:
        """Nobody there: the message becomes an e-mail-style ticket, answered by e-mail."""
        event = webchat.offline_event(self.visitor, data)
        result = await self.app[INGESTOR].ingest(
            event, payload=json.dumps(data).encode(), content_type="application/json"
        )
        if result.contact_id is not None:
            await self.app[DATABASE].run(
                messaging.link_identities,
                (EMAIL, self._email(event.sender.raw)),
                (WEBCHAT, self.visitor),
                event.sender.name,
            )
        await self._send({"type": "offline_ok", "ticket_number": result.ticket_number})

    def _email(self, raw: str) -> str:
        """The address as ingest keys it (lower case, IDNA domain)."""
        identity = normalise(EMAIL, raw, self.app[SETTINGS].default_region)
        if identity is None:
            raise InvalidPayload("invalid_email", "'email' must be an e-mail address.")
        return identity.value

    async def _typing(self) -> None:
        now = time.monotonic()
        if now - self._typing_at < TYPING_EVERY_SECONDS:
            return
        self._typing_at = now
        db = self.app[DATABASE]
        ticket = await db.read(messaging.latest_ticket_from, webchat.CHANNEL, self.visitor)
        if ticket is not None and ticket.assignee_id is not None:
            await self.app[BUS].publish(
                agent_topic(ticket.assignee_id),
                {"type": "typing", "channel": webchat.CHANNEL, "ticket_id": ticket.id},
            )

    async def _error(self, code: str, detail: str) -> None:
        await self._send({"type": "error", "error": code, "detail": detail})

    async def _send(self, message: dict[str, Any]) -> None:
        if not self.socket.closed:
            await self.socket.send_json(message)


def _line(event: TimelineEvent) -> dict[str, Any]:
    return chat_message(event.external_id, event.direction, event.body, event.occurred_at)


def _agents_available(session: Session) -> bool:
    count = session.execute(
        select(func.count(Agent.id)).where(Agent.presence == Presence.AVAILABLE)
    ).scalar_one()
    return bool(count)


@routes.post("/api/v1/tickets/{id}/typing")
async def agent_typing(request: web.Request) -> web.Response:
    """The agent is writing a reply: the chat visitor sees "typing…"."""
    await authenticate(request)
    ticket_id = path_id(request)
    db = request.app[DATABASE]
    async with db.reading() as session:
        if await session.get(Ticket, ticket_id) is None:
            raise not_found("ticket")
    visitor = await db.read(messaging.latest_sender_on, ticket_id, webchat.CHANNEL)
    if visitor is None:
        raise ApiError(422, "not_a_chat", "Nobody chats on this ticket.")
    await request.app[BUS].publish(webchat.visitor_topic(visitor), {"type": "typing"})
    return web.json_response({}, status=202)
