"""Web chat: the customer's side of the chat widget (`/ws/chat`), as events and back.

A visitor is known by a random id the widget keeps in the browser (`webchat:<id>` identity):
whoever holds the id holds the conversation, so ids are long random strings, never guessable.
Visitor messages become `InboundEvent`s keyed by visitor and the widget's own message id, so a
message the widget resends after a reconnect is stored once. Agent replies go out through the
outbox like any channel's: `WebchatSender` publishes them on the visitor's bus topic, and
whichever gateway process holds the visitor's socket pushes them on.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from channels import InvalidPayload
from channels.sending import Draft, Reply, SendResult, Thread, draft_id
from timeline.events import Address, EventKind, InboundEvent
from timeline.outbox import OutboxItem

CHANNEL = "webchat"
WEBCHAT = "webchat"  # the identity kind (routing.identity.WEBCHAT)
EMAIL = "email"
VISITOR_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TEXT = 4000
MAX_NAME = 100
# Good enough to catch typos; the address is checked for real when mail is sent to it.
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def valid_visitor(visitor: str | None) -> bool:
    return visitor is not None and bool(VISITOR_ID.match(visitor))


def visitor_topic(visitor: str) -> str:
    """The bus topic of one visitor's sockets, on whichever process they are."""
    return f"webchat.{visitor}"


def message_event(visitor: str, data: Mapping[str, Any], name: str | None) -> InboundEvent:
    """`{"type": "message", "text", "client_id"}` from the widget."""
    return InboundEvent(
        channel=CHANNEL,
        kind=EventKind.MESSAGE,
        sender=Address(WEBCHAT, visitor, name),
        recipient=CHANNEL,
        external_id=f"{visitor}:{_client_id(data)}",
        text=_text(data, "text", MAX_TEXT),
    )


@dataclass(frozen=True, slots=True)
class PreChat:
    name: str
    email: str | None


def prechat(data: Mapping[str, Any]) -> PreChat:
    """`{"type": "prechat", "name", "email"?}`: who the visitor says they are."""
    email = data.get("email")
    if email in (None, ""):
        return PreChat(_text(data, "name", MAX_NAME), None)
    return PreChat(_text(data, "name", MAX_NAME), _email(email))


def offline_event(visitor: str, data: Mapping[str, Any]) -> InboundEvent:
    """`{"type": "offline", "name", "email", "text", "client_id"}`: with nobody there to chat,
    the message becomes an e-mail-style ticket, answered by e-mail."""
    name = _text(data, "name", MAX_NAME)
    email = _email(data.get("email"))
    return InboundEvent(
        channel=EMAIL,
        kind=EventKind.MESSAGE,
        sender=Address(EMAIL, email, name),
        recipient=CHANNEL,
        # Shaped like a Message-ID, unique per visitor and form: a resent form is one ticket.
        external_id=f"webchat.{visitor}.{_client_id(data)}@switchboard.invalid",
        subject=f"Web chat message from {name}",
        text=_text(data, "text", MAX_TEXT),
    )


def _client_id(data: Mapping[str, Any]) -> str:
    value = data.get("client_id")
    if not isinstance(value, str) or not CLIENT_ID.match(value):
        raise InvalidPayload("invalid_payload", "'client_id' must be 1-64 letters, digits, - or _.")
    return value


def _text(data: Mapping[str, Any], name: str, limit: int) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidPayload("invalid_payload", f"'{name}' must be a non-empty string.")
    if len(value) > limit:
        raise InvalidPayload("too_long", f"'{name}' is longer than {limit} characters.")
    return value.strip()


def _email(value: object) -> str:
    if not isinstance(value, str) or not _EMAIL.match(value.strip()):
        raise InvalidPayload("invalid_email", "'email' must be an e-mail address.")
    return value.strip()


Publish = Callable[[str, dict[str, Any]], Awaitable[None]]


class WebchatSender:
    """The web chat's outbound side (`channels.sending.Sender`): onto the visitor's topic.

    Resendable: the widget shows a message once per id, however often it arrives.
    """

    channel = CHANNEL
    resendable = True

    def __init__(self, publish: Publish) -> None:
        self._publish = publish

    def draft(self, reply: Reply, thread: Thread) -> Draft:
        if reply.attachments:
            raise InvalidPayload("attachments_unsupported", "Chat replies carry text only.")
        return Draft(
            external_id=draft_id("chat"),
            sender="agent",
            subject=None,
            text=reply.text,
            html=None,
            payload={"visitor": reply.recipient, "text": reply.text},
        )

    async def send(self, item: OutboxItem) -> SendResult:
        await self._publish(
            visitor_topic(item.payload["visitor"]),
            chat_message(item.provider_id or "", "out", item.payload["text"], datetime.now(UTC)),
        )
        return SendResult(provider_id=item.provider_id)


def chat_message(message_id: str, direction: str, body: str, at: datetime) -> dict[str, Any]:
    """One line of the conversation as the widget receives it (live or in the history)."""
    return {
        "type": "message",
        "id": message_id,
        "direction": direction,
        "body": body,
        "occurred_at": at.isoformat(),
    }
