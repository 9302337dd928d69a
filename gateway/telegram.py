"""Telegram updates, from the webhook or from long polling, down the one ingest path.

A new message is ingested like any other. An edit is journaled and applied to the event of the
message it edits (the agent holding the ticket is told); an edit of a message we never saw
(sent before the bot was set up, or lost) is stored as the message it now is.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.orm import Session

from channels import InvalidPayload, telegram
from channels.telegram import TelegramInbound
from gateway.bus import Bus, agent_topic
from gateway.errors import ApiError, ingest_failed
from gateway.ingest import IngestError, Ingestor
from gateway.keys import BUS, DATABASE, INGESTOR, SETTINGS
from gateway.webhooks import reject
from timeline import messaging, store
from timeline.db import Database
from timeline.models import Ticket

routes = web.RouteTableDef()

JSON_TYPE = "application/json"


@routes.post("/webhooks/telegram")
async def telegram_webhook(request: web.Request) -> web.Response:
    """Telegram retries anything but a 2xx, so a message is answered only once it is stored."""
    secret = request.app[SETTINGS].telegram_secret
    if not secret:
        raise ApiError(403, "telegram_disabled", "Telegram is not configured.")
    if not telegram.verify_secret(secret, request.headers.get(telegram.SECRET_HEADER)):
        raise ApiError(403, "invalid_secret", "The Telegram secret token does not match.")
    body = await request.read()
    try:
        inbound = telegram.parse_update(body)
    except InvalidPayload as error:
        await reject(request, telegram.CHANNEL, body, error)
    if inbound is not None:
        app = request.app
        try:
            await TelegramIntake(app[INGESTOR], app[DATABASE], app[BUS]).receive(inbound, body)
        except IngestError as error:
            raise ingest_failed(error.journal_id) from None
    return web.json_response({"ok": True})


class TelegramIntake:
    def __init__(self, ingestor: Ingestor, db: Database, bus: Bus) -> None:
        self.ingestor = ingestor
        self.db = db
        self.bus = bus

    async def receive_raw(self, body: bytes) -> None:
        """An update from polling: the same path as the webhook's, rejects journaled."""
        try:
            inbound = telegram.parse_update(body)
        except InvalidPayload as error:
            await self.ingestor.reject(
                channel=telegram.CHANNEL, payload=body, content_type=JSON_TYPE, reason=error.detail
            )
            return
        if inbound is not None:
            await self.receive(inbound, body)

    async def receive(self, inbound: TelegramInbound, body: bytes) -> None:
        if inbound.edited_at is not None:
            edited = await self.db.run(_apply_edit, inbound, body)
            if edited is not None:
                await self._announce_edit(*edited, inbound.event.text)
                return
        await self.ingestor.ingest(inbound.event, payload=body, content_type=JSON_TYPE)

    async def _announce_edit(self, event_id: int, assignee_id: int | None, text: str) -> None:
        if assignee_id is not None:
            await self.bus.publish(
                agent_topic(assignee_id),
                {"type": "message_edited", "event_id": event_id, "body": text},
            )


def _apply_edit(
    session: Session, inbound: TelegramInbound, body: bytes
) -> tuple[int, int | None] | None:
    """Journal the edit and apply it: (event id, ticket assignee), or None if the message is
    unknown (nothing is written then). A resent edit changes nothing and is not journaled."""
    assert inbound.edited_at is not None
    (journal_id,) = store.journal(session, [(telegram.CHANNEL, body, JSON_TYPE)])
    event, changed = messaging.record_edit(
        session,
        telegram.CHANNEL,
        inbound.event.external_id,
        inbound.event.text,
        inbound.edited_at,
        journal_id,
    )
    if event is None or not changed:
        store.forget_journal(session, [journal_id])
        if event is None:
            return None
        return event.id, None
    store.mark_journal_accepted(session, [(journal_id, event.id)])
    ticket = session.get(Ticket, event.ticket_id) if event.ticket_id else None
    return event.id, ticket.assignee_id if ticket else None
