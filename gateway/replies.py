"""Replies: an agent's message (or the auto-acknowledgement) onto the timeline and into the outbox.

Generic over channels: the ticket's channel picks the `Sender` from the registry; a channel
without one cannot send yet. The event and the outbox row are written in one transaction, so
the timeline never shows a message that will not be sent, nor the outbox hold one the timeline
does not show.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from channels import InvalidPayload
from channels.sending import OutgoingAttachment, Reply, Sender, Thread
from gateway.errors import ApiError, bad_request, not_found
from gateway.outbox import OutboxWorker
from routing import consent
from routing.identity import normalise
from timeline import messaging, outbox
from timeline.db import Database
from timeline.models import Identity, Ticket, TimelineEvent, utcnow
from timeline.outbox import Enqueued, NewOutbound

AUTO_ACK_KEY = "auto-ack:"
AFTER_HOURS_KEY = "after-hours:"


@dataclass(frozen=True, slots=True)
class AutoAck:
    """The automatic first answer to a new e-mail ticket (SWITCHBOARD_EMAIL_AUTO_ACK*).

    `text` may name `{ticket}`, the ticket number. At most `per_sender` acknowledgements go to
    one address within `window`: a customer who opens ten tickets in a minute, or a robot that
    slipped through the auto-reply checks, gets a few, not a loop.
    """

    text: str = (
        "Thank you for your message. We have opened ticket #{ticket} and will answer soon.\n"
        "Please keep the ticket number in the subject when you reply."
    )
    per_sender: int = 3
    window: timedelta = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class ReplyRequest:
    ticket_id: int
    text: str
    html: str | None = None
    subject: str | None = None
    attachments: tuple[OutgoingAttachment, ...] = ()
    # `to`: another identity of the contact; None replies to whoever wrote last.
    to: str | None = None
    idempotency_key: str | None = None


class Replies:
    """The reply service of one gateway process: enqueue, then wake the local outbox worker."""

    def __init__(
        self,
        db: Database,
        senders: Mapping[str, Sender],
        worker: OutboxWorker,
        identity_kinds: Mapping[str, str],
        region: str,
        auto_ack: AutoAck | None = None,
    ) -> None:
        self.db = db
        self.senders = senders
        self.worker = worker
        self.identity_kinds = identity_kinds
        self.region = region
        self.auto_ack = auto_ack

    async def reply(self, request: ReplyRequest) -> Enqueued:
        enqueued = await self.db.run(self._enqueue_reply, request)
        if not enqueued.duplicate:
            self.worker.wake()
        return enqueued

    async def acknowledge(self, event_id: int) -> Enqueued | None:
        """The auto-acknowledgement for the e-mail that `event_id` stored, if it opened a ticket.

        Mail that must not be answered (auto-replies, bulk, bounces) never opens a ticket, so it
        is never acknowledged. Off unless configured; None when nothing was sent.
        """
        if self.auto_ack is None or "email" not in self.senders:
            return None
        enqueued = await self.db.run(self._enqueue_auto_ack, event_id, self.auto_ack)
        if enqueued is not None and not enqueued.duplicate:
            self.worker.wake()
        return enqueued

    def enqueue_after_hours(self, session: Session, ticket_id: int, text: str) -> bool:
        """A closed queue's automatic answer to a ticket that entered it (`auto_reply`), in the
        caller's transaction; whether one was queued. At most once per ticket (its idempotency
        key), marked as machine-written; nothing when the channel cannot send, the customer
        opted out or bounces, or there is no address. Machine-made mail never opens or reopens
        a ticket, so it never enters a queue and is never answered."""
        key = f"{AFTER_HOURS_KEY}{ticket_id}"
        ticket = session.get(Ticket, ticket_id)
        if ticket is None or outbox.by_key(session, key) is not None:
            return False
        sender = self.senders.get(ticket.channel)
        if sender is None:
            return False
        thread = outbox.thread_events(session, ticket.id, ticket.channel)
        kind = self.identity_kinds.get(ticket.channel, ticket.channel)
        try:
            recipient, contact_id = self._recipient(session, ticket, thread, kind, None)
            _require_consent(session, kind, recipient, thread, self.region)
        except ApiError:
            return False
        if kind == "email" and _is_bouncing(session, recipient):
            return False
        body = text.replace("{ticket}", str(ticket.number))
        reply = Reply(recipient=recipient, text=body, auto=True)
        try:
            _enqueue(session, sender, ticket, thread, reply, key, contact_id)
        except InvalidPayload:
            return False
        return True

    def wake(self) -> None:
        """Something was queued in another unit of work: the local sender looks at once."""
        self.worker.wake()

    def _enqueue_reply(self, session: Session, request: ReplyRequest) -> Enqueued:
        key = f"ticket:{request.ticket_id}:{request.idempotency_key or uuid.uuid4().hex}"
        existing = outbox.by_key(session, key)
        if existing is not None:
            return Enqueued(existing, _event(session, existing.event_id), duplicate=True)
        ticket = session.get(Ticket, request.ticket_id)
        if ticket is None:
            raise not_found("ticket")
        sender = self.senders.get(ticket.channel)
        if sender is None:
            raise ApiError(
                422, "channel_cannot_send", f"Replies on {ticket.channel!r} cannot be sent yet."
            )
        thread = outbox.thread_events(session, ticket.id, ticket.channel)
        kind = self.identity_kinds.get(ticket.channel, ticket.channel)
        recipient, contact_id = self._recipient(session, ticket, thread, kind, request.to)
        _require_consent(session, kind, recipient, thread, self.region)
        reply = Reply(
            recipient=recipient,
            text=request.text,
            html=request.html,
            subject=request.subject,
            attachments=request.attachments,
        )
        try:
            enqueued = _enqueue(session, sender, ticket, thread, reply, key, contact_id)
        except InvalidPayload as error:  # the channel cannot carry this reply
            raise ApiError(422, error.code, error.detail) from None
        now = utcnow()
        ticket.first_response_at = ticket.first_response_at or now
        ticket.updated_at = now
        return enqueued

    def _recipient(
        self,
        session: Session,
        ticket: Ticket,
        thread: list[TimelineEvent],
        kind: str,
        to: str | None,
    ) -> tuple[str, int | None]:
        """The address to answer and its contact: `to` if it is the contact's, else whoever
        wrote last on the ticket (another person who joined the thread gets the answer), else
        the contact's first address of the channel's kind."""
        if to is not None:
            key = normalise(kind, to, self.region)
            owner = _owner(session, kind, key.value) if key else None
            if key is None or owner is None or owner != ticket.contact_id:
                raise ApiError(
                    422, "not_an_identity", f"{to!r} is not a {kind} identity of this contact."
                )
            return key.value, owner
        for event in reversed(thread):
            if event.direction == "in":
                key = normalise(kind, event.sender, self.region)
                if key is not None:
                    return key.value, _owner(session, kind, key.value) or event.contact_id
        if ticket.contact_id is not None:
            first = session.execute(
                select(Identity.value)
                .where(Identity.contact_id == ticket.contact_id, Identity.kind == kind)
                .order_by(Identity.id)
                .limit(1)
            ).scalar_one_or_none()
            if first is not None:
                return first, ticket.contact_id
        raise ApiError(422, "no_recipient", f"The contact has no {kind} address to answer.")

    def _enqueue_auto_ack(
        self, session: Session, event_id: int, auto_ack: AutoAck
    ) -> Enqueued | None:
        event = session.get(TimelineEvent, event_id)
        if event is None or event.channel != "email" or event.direction != "in":
            return None
        if event.ticket_id is None:
            return None
        thread = outbox.thread_events(session, event.ticket_id, "email")
        if not thread or thread[0].id != event.id:
            return None  # the mail joined an existing ticket
        key = normalise("email", event.sender, self.region)
        if key is None or _is_bouncing(session, key.value):
            return None
        since = utcnow() - auto_ack.window
        if outbox.recent_count(session, AUTO_ACK_KEY, key.value, since) >= auto_ack.per_sender:
            return None
        ticket = session.get(Ticket, event.ticket_id)
        assert ticket is not None
        reply = Reply(
            recipient=key.value, text=auto_ack.text.format(ticket=ticket.number), auto=True
        )
        idempotency_key = f"{AUTO_ACK_KEY}{ticket.id}"
        sender = self.senders["email"]
        return _enqueue(
            session,
            sender,
            ticket,
            thread,
            reply,
            idempotency_key,
            event.contact_id,
            event.external_id,
        )


def _enqueue(
    session: Session,
    sender: Sender,
    ticket: Ticket,
    thread: list[TimelineEvent],
    reply: Reply,
    idempotency_key: str,
    contact_id: int | None,
    in_reply_to: str | None = None,
) -> Enqueued:
    """`in_reply_to`: the message answered; by default the customer's latest on the thread."""
    inbound = [e.external_id for e in thread if e.direction == "in"]
    draft = sender.draft(
        reply,
        Thread(
            ticket_number=ticket.number,
            subject=next((e.subject for e in thread if e.subject), ticket.subject),
            message_ids=tuple(e.external_id for e in thread),
            in_reply_to=in_reply_to or (inbound[-1] if inbound else None),
        ),
    )
    return outbox.enqueue(
        session,
        NewOutbound(
            channel=sender.channel,
            idempotency_key=idempotency_key,
            recipient=reply.recipient,
            sender=draft.sender,
            payload=draft.payload,
            external_id=draft.external_id,
            ticket_id=ticket.id,
            contact_id=contact_id,
            text=draft.text,
            subject=draft.subject,
            html=draft.html,
            attachments=tuple(
                {"filename": a.filename, "content_type": a.content_type, "size": len(a.data)}
                for a in reply.attachments
            ),
        ),
    )


def _require_consent(
    session: Session, kind: str, recipient: str, thread: list[TimelineEvent], region: str
) -> None:
    """Refuse a reply to an opted-out identity, unless `routing.consent` allows it."""
    opted_out = messaging.opt_out_of(session, kind, recipient)
    if opted_out is None:
        return
    wrote = [
        e.occurred_at
        for e in thread
        if e.direction == "in" and (k := normalise(kind, e.sender, region)) and k.value == recipient
    ]
    if not consent.may_send(opted_out.opted_out_at, max(wrote, default=None), utcnow()):
        raise ApiError(
            422,
            "recipient_opted_out",
            f"{recipient} opted out ({opted_out.source}); nothing is sent to it.",
        )


def _event(session: Session, event_id: int | None) -> TimelineEvent | None:
    return session.get(TimelineEvent, event_id) if event_id is not None else None


def _owner(session: Session, kind: str, value: str) -> int | None:
    return session.execute(
        select(Identity.contact_id).where(Identity.kind == kind, Identity.value == value)
    ).scalar_one_or_none()


def _is_bouncing(session: Session, address: str) -> bool:
    return (
        session.execute(
            select(Identity.id).where(
                Identity.kind == "email",
                Identity.value == address,
                Identity.bouncing_since.is_not(None),
            )
        ).first()
        is not None
    )


def parse_reply(data: dict[str, Any], ticket_id: int) -> ReplyRequest:
    """The body of `POST /api/v1/tickets/{id}/messages`, checked."""
    unknown = set(data) - {"body", "html", "subject", "to", "attachments", "idempotency_key"}
    if unknown:
        raise bad_request("invalid_payload", f"Unknown fields: {', '.join(sorted(unknown))}.")
    body = data.get("body")
    if not isinstance(body, str) or not body.strip():
        raise bad_request("invalid_payload", "Field 'body' must be a non-empty string.")
    for name in ("html", "subject", "to", "idempotency_key"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise bad_request("invalid_payload", f"Field {name!r} must be a string.")
    key = data.get("idempotency_key")
    if key is not None and not 0 < len(key) <= 100:
        raise bad_request("invalid_payload", "Field 'idempotency_key' must be 1-100 characters.")
    return ReplyRequest(
        ticket_id=ticket_id,
        text=body,
        html=data.get("html"),
        subject=(data.get("subject") or "").strip() or None,
        attachments=_attachments(data.get("attachments", [])),
        to=data.get("to"),
        idempotency_key=key,
    )


def _attachments(raw: object) -> tuple[OutgoingAttachment, ...]:
    """`[{"filename", "content_type", "content": <base64>}]`."""
    if not isinstance(raw, list):
        raise bad_request("invalid_payload", "Field 'attachments' must be a list.")
    result = []
    for item in raw:
        if not isinstance(item, dict) or not all(
            isinstance(item.get(f), str) for f in ("filename", "content_type", "content")
        ):
            raise bad_request(
                "invalid_attachment",
                "Each attachment needs string 'filename', 'content_type' and base64 'content'.",
            )
        if "/" not in item["content_type"]:
            raise bad_request("invalid_attachment", "'content_type' must be like 'image/png'.")
        try:
            data = base64.b64decode(item["content"], validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("invalid_attachment", "'content' must be base64.") from None
        result.append(OutgoingAttachment(item["filename"], item["content_type"], data))
    return tuple(result)
