"""What every channel that can send implements, so the outbox and the reply API stay generic.

A channel's sender does two things: `draft` turns an agent's reply and the conversation so far
into the payload the outbox stores (pure, at enqueue time: the payload is what gets sent, on
every attempt), and `send` hands one stored payload to the provider. `send` says how it failed
by the exception it raises: a `TransientSendError` is retried with backoff, a
`PermanentSendError` (the provider refused this message for good) fails it at once.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

from timeline.outbox import OutboxItem

# A random part drawn once per process: with the counter, ids no other process draws.
_PROCESS_PART = secrets.token_hex(8)
_COUNTER = itertools.count(1)


def draft_id(prefix: str) -> str:
    """An id of our own for a message we are about to send (`Draft.external_id`).

    Unique across processes and restarts without asking the OS for randomness per message:
    each `os.urandom` gives up the GIL, and a campaign drafts thousands of messages a second
    on the database thread, each hand-off a wait behind the event loop.
    """
    return f"{prefix}-{_PROCESS_PART}{next(_COUNTER):08x}"


class SendError(Exception):
    """The provider did not take the message; `reason` is in its own words, for people to read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientSendError(SendError):
    """Worth trying again later: a timeout, a refused connection, an SMTP 4xx."""


class PermanentSendError(SendError):
    """Trying again cannot help: an SMTP 5xx, an unknown recipient, a refused payload."""


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the provider calls the message (a Message-ID, a MessageSid), when it says."""

    provider_id: str | None = None


@dataclass(frozen=True, slots=True)
class OutgoingAttachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """An agent's (or the auto-acknowledgement's) message to one recipient address.

    `html` is sanitised by the sender's `draft`; `auto` marks machine-written mail.
    """

    recipient: str
    text: str
    html: str | None = None
    subject: str | None = None
    attachments: tuple[OutgoingAttachment, ...] = ()
    auto: bool = False


@dataclass(frozen=True, slots=True)
class Thread:
    """The conversation a reply continues: its ticket, and its messages' ids oldest first."""

    ticket_number: int | None
    subject: str | None = None
    message_ids: tuple[str, ...] = ()
    # The customer's latest message on the channel, the one the reply answers.
    in_reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class Draft:
    """A reply ready for the outbox: the payload to send, and how the timeline records it."""

    external_id: str
    sender: str
    subject: str | None
    text: str
    html: str | None
    payload: dict[str, Any] = field(default_factory=dict)


class Sender(Protocol):
    """One channel's outbound side; the gateway keeps one per channel that can send.

    `resendable`: whether sending again a message whose earlier attempt was cut off by a crash
    is harmless (see `timeline.outbox`, crash recovery).
    """

    channel: str
    resendable: bool

    def draft(self, reply: Reply, thread: Thread) -> Draft: ...

    async def send(self, item: OutboxItem) -> SendResult: ...
