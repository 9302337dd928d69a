"""Normalised event types: what every channel turns its provider's payload into."""

from __future__ import annotations

import enum
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import nh3

SlotsT = TypeVar("SlotsT", bound=type)


class EventKind(enum.StrEnum):
    MESSAGE = "message"
    CALL = "call"
    NOTE = "note"
    STATUS = "status"


class Direction(enum.StrEnum):
    INBOUND = "in"
    OUTBOUND = "out"


def sanitise_html(html: str) -> str:
    """Strip scripts, event handlers and dangerous URLs: customer HTML is shown to agents."""
    return nh3.clean(html)


def pickled_by_position(cls: SlotsT) -> SlotsT:
    """Pickle a frozen slots dataclass (of two fields or more) as its values in slot order,
    restored without `__init__`, as the default does, so no `__post_init__` runs twice.

    Parsed e-mail crosses from the parser processes to the gateway as these; the default
    state of a slots dataclass is built and applied field by field through `fields()`,
    twice the cost (bench.email: 15 µs a message each way, against 7 and 10)."""
    slots: tuple[str, ...] = cls.__slots__  # type: ignore[attr-defined]
    if len(slots) < 2:
        raise TypeError(f"{cls.__name__}: attrgetter of one name gives no tuple")
    values = operator.attrgetter(*slots)

    def __reduce__(self: object) -> tuple[Callable[..., object], tuple[object, ...]]:
        return _restore, (cls, values(self))

    setattr(cls, "__reduce__", __reduce__)  # noqa: B010 (mypy: no assignment to a method)
    return cls


def _restore(cls: type, values: tuple[object, ...]) -> object:
    restored: object = object.__new__(cls)
    put = object.__setattr__
    for name, value in zip(cls.__slots__, values, strict=False):  # type: ignore[attr-defined]
        put(restored, name, value)
    return restored


@pickled_by_position
@dataclass(frozen=True, slots=True)
class Address:
    """A sender or recipient as the channel saw it, before identity normalisation.

    `kind` names the identity kind the raw value belongs to (`phone`, `email`, `telegram`, …);
    `name` is whatever display name the channel knows, used to name a new contact.
    """

    kind: str
    raw: str
    name: str | None = None


@pickled_by_position
@dataclass(frozen=True, slots=True)
class ThreadHints:
    """What the provider tells us about the conversation this event continues."""

    ticket_number: int | None = None
    references: tuple[str, ...] = ()
    # False for messages nobody should answer (auto-replies, bulk mail, bounces): they join an
    # open ticket they thread into, else stay on the contact's timeline without a ticket; they
    # never open or reopen one (routing.tickets.choose_ticket).
    opens_ticket: bool = True


@pickled_by_position
@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    size: int | None = None
    url: str | None = None
    # An inline part (e-mail `cid:` image) that the HTML body shows in place.
    content_id: str | None = None


@pickled_by_position
@dataclass(frozen=True, slots=True)
class InboundEvent:
    """One thing a customer did, normalised; the only shape the ingest path accepts.

    HTML is sanitised on construction, so no unsanitised customer markup can reach storage.
    """

    channel: str
    kind: EventKind
    sender: Address
    recipient: str
    external_id: str
    text: str = ""
    subject: str | None = None
    html: str | None = None
    direction: Direction = Direction.INBOUND
    thread: ThreadHints = field(default_factory=ThreadHints)
    attachments: tuple[Attachment, ...] = ()
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    journal_id: int | None = None
    # The queue a new ticket opened by this event waits in (an e-mail mailbox has its own).
    queue: str | None = None
    # The new text without quoted history, for previews; `text` keeps the full body.
    preview: str | None = None

    def __post_init__(self) -> None:
        if self.html is not None:
            object.__setattr__(self, "html", sanitise_html(self.html))


# Our ticket tag in subjects, `[#10042]` (DESIGN.md contract); replies that lost their
# threading headers still carry it.
_TICKET_TAG = re.compile(r"\[#(\d{1,18})\]")


def ticket_tag(subject: str | None) -> int | None:
    match = _TICKET_TAG.search(subject or "")
    return int(match.group(1)) if match else None


class CallPhase(enum.StrEnum):
    """Where a call is in its life; every telephony channel maps its events onto these."""

    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


class HangupCause(enum.StrEnum):
    """Why a call ended (the causes of Zammad's generic CTI, which PBX scripts already send)."""

    NORMAL_CLEARING = "normalClearing"
    BUSY = "busy"
    CANCEL = "cancel"
    NO_ANSWER = "noAnswer"
    CONGESTION = "congestion"
    NOT_FOUND = "notFound"
    FORWARDED = "forwarded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class CallSignal:
    """One thing that happened to one call, from any telephony channel.

    `provider` and `call_id` together name the call (a CTI `callId`, a Twilio `CallSid`, an
    Asterisk `Linkedid`); several signals update the same call. `agents` names the agents
    to ring (by name, extension or e-mail) when the PBX says whom; `answered_by` names the
    agent who answered, if the provider knows. A ringing call that names no agents rings
    every available agent, unless `ring_available` is off: a provider that names the agents
    in a later signal (Asterisk's `DialBegin`) must not ring everybody first.
    """

    provider: str
    call_id: str
    phase: CallPhase
    direction: Direction
    caller: Address
    callee: str
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    agents: tuple[str, ...] = ()
    answered_by: str | None = None
    cause: HangupCause | None = None
    duration_seconds: int | None = None
    recording_url: str | None = None
    queue: str | None = None
    ring_available: bool = True
