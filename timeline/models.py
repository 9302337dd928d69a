"""SQLAlchemy models of the timeline; one schema for SQLite and PostgreSQL.

The schema itself is owned by the Alembic migrations in `timeline/migrations`; these classes must
describe the same tables (a test compares them).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite has no 64-bit autoincrement under BIGINT; INTEGER PRIMARY KEY is its rowid alias.
Id = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out, whatever the backend keeps.

    SQLite drops the offset; PostgreSQL keeps it. Both hand back aware UTC datetimes here.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use UTC-aware ones")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {
        datetime: UtcDateTime(),
        dict[str, Any]: JSON,
        list[str]: JSON,
        list[dict[str, Any]]: JSON,
        list[int]: JSON,
    }


class TicketStatus(enum.StrEnum):
    NEW = "new"
    OPEN = "open"
    PENDING = "pending"
    RESOLVED = "resolved"
    CLOSED = "closed"


OPEN_STATUSES = (TicketStatus.NEW, TicketStatus.OPEN, TicketStatus.PENDING)
# The open statuses as SQL's literal list: `('new', 'open', 'pending')`.
_OPEN = "({})".format(", ".join(f"'{status.value}'" for status in OPEN_STATUSES))
TICKET_PRIORITIES = ("low", "normal", "high", "urgent")


class JournalStatus(enum.StrEnum):
    RECEIVED = "received"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"


class Presence(enum.StrEnum):
    AVAILABLE = "available"
    AWAY = "away"
    BUSY = "busy"  # on a call (CTI)
    AFTER_CALL_WORK = "after_call_work"  # wrapping up a call; timed, then available again
    OFFLINE = "offline"


class Role(enum.StrEnum):
    AGENT = "agent"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    tags: Mapped[list[str]] = mapped_column(default=list)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Identity(Base):
    """A normalised address of a contact; one identity belongs to exactly one contact."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("kind", "value"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    value: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when mail to this address bounced (a DSN for one of our messages); cleared by hand.
    bouncing_since: Mapped[datetime | None] = mapped_column()


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), default=Role.AGENT)
    skills: Mapped[list[str]] = mapped_column(default=list)
    extension: Mapped[str | None] = mapped_column(String(32))
    # {"total": int | None, "channels": {channel: int}}; see routing.capacity.
    capacity: Mapped[dict[str, Any]] = mapped_column(default=dict)
    presence: Mapped[str] = mapped_column(String(16), default=Presence.OFFLINE)
    presence_since: Mapped[datetime] = mapped_column(default=utcnow)
    # Routing (see routing.assignment): offers left to time out in a row, when the agent last
    # got an offer (round robin) and last took a ticket (longest idle).
    missed_offers: Mapped[int] = mapped_column(Integer, default=0)
    last_offered_at: Mapped[datetime | None] = mapped_column()
    last_assigned_at: Mapped[datetime | None] = mapped_column()
    last_acked_pop_id: Mapped[int] = mapped_column(Id, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """Only a SHA-256 of the token is kept; the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


# Ticket numbers are what customers quote on the phone; they start above the ids of a fresh
# database so they look like ticket numbers from day one.
TICKET_NUMBER_OFFSET = 10_000


def ticket_number(ticket_id: int) -> int:
    return ticket_id + TICKET_NUMBER_OFFSET


def _ticket_number(context: Any) -> int:
    return ticket_number(int(context.get_current_parameters()["id"]))


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        Index(None, "status", "assignee_id"),
        Index(None, "contact_id", "status"),
        Index(None, "queue", "waiting_since"),
        # An agent's open tickets and their channels (its load, which routing reads for every
        # candidate): one short descent per agent, where the index above takes one per status.
        Index(
            "ix_tickets_open_assignee",
            "assignee_id",
            "channel",
            sqlite_where=text(f"status IN {_OPEN}"),
            postgresql_where=text(f"status IN {_OPEN}"),
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # Derived from the id, which `timeline.store.insert` assigns before the INSERT.
    number: Mapped[int | None] = mapped_column(Id, unique=True, default=_ticket_number)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    status: Mapped[str] = mapped_column(String(16), default=TicketStatus.NEW)
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    queue: Mapped[str] = mapped_column(String(64), default="default")
    channel: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str | None] = mapped_column(String(500))
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    linked_ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    assigned_at: Mapped[datetime | None] = mapped_column()
    first_response_at: Mapped[datetime | None] = mapped_column()
    resolved_at: Mapped[datetime | None] = mapped_column()
    # Set while the ticket waits in its queue for an agent (offers included), cleared when an
    # agent takes it: the queue's waiting count and longest wait come from an index on it.
    waiting_since: Mapped[datetime | None] = mapped_column()


class InboundJournal(Base):
    """Every authenticated payload as it arrived, kept before anything else is stored."""

    __tablename__ = "inbound_journal"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=JournalStatus.RECEIVED)
    reason: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    event_id: Mapped[int | None] = mapped_column(Id)


class TimelineEvent(Base):
    __tablename__ = "timeline_events"
    __table_args__ = (
        UniqueConstraint("channel", "external_id"),
        Index(None, "contact_id", "occurred_at", "id"),
        Index(None, "ticket_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(16))
    direction: Mapped[str] = mapped_column(String(3))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    sender: Mapped[str] = mapped_column(Text)
    recipient: Mapped[str] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(String(500))
    body: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str | None] = mapped_column(Text)
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(default=list)
    occurred_at: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    journal_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_journal.id"))
    # Outbound only: queued/sent/delivered/failed/undelivered/bounced, and the provider's reason.
    delivery_status: Mapped[str | None] = mapped_column(String(16))
    delivery_detail: Mapped[str | None] = mapped_column(Text)
    # The new text of a message without its quoted history (e-mail); `body` keeps everything.
    preview: Mapped[str | None] = mapped_column(Text)


class ScreenPop(Base):
    """A pop as sent to one agent, kept so a reconnecting agent receives what it missed.

    A pop for a call that another agent answered is withdrawn, and no longer replayed.
    """

    __tablename__ = "screen_pops"
    __table_args__ = (Index(None, "agent_id", "id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"))
    payload: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    withdrawn_at: Mapped[datetime | None] = mapped_column()


class CallState(enum.StrEnum):
    RINGING = "ringing"
    ANSWERED = "answered"
    COMPLETED = "completed"
    MISSED = "missed"
    UNANSWERED = "unanswered"  # an outbound call the customer did not pick up
    BLOCKED = "blocked"
    FAILED = "failed"


FINAL_CALL_STATES = (
    CallState.COMPLETED,
    CallState.MISSED,
    CallState.UNANSWERED,
    CallState.BLOCKED,
    CallState.FAILED,
)


class Call(Base):
    """One phone call through its life; its timeline event is updated, never duplicated."""

    __tablename__ = "calls"
    __table_args__ = (
        UniqueConstraint("provider", "call_id"),
        Index(None, "state", "started_at"),
        Index(None, "started_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    call_id: Mapped[str] = mapped_column(String(200))
    event_id: Mapped[int] = mapped_column(ForeignKey("timeline_events.id"))
    direction: Mapped[str] = mapped_column(String(3))
    state: Mapped[str] = mapped_column(String(16))
    from_number: Mapped[str] = mapped_column(Text)
    to_number: Mapped[str] = mapped_column(Text)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    queue: Mapped[str | None] = mapped_column(String(64))
    answered_by_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    # Which agents were rung, and the pop each was shown: {"<agent id>": <pop id>}.
    pops: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column()
    answered_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()
    duration_seconds: Mapped[int | None] = mapped_column(Integer)
    cause: Mapped[str | None] = mapped_column(String(32))
    recording_url: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxStatus(enum.StrEnum):
    """Where an outbound message is; `delivered`/`undelivered` come from providers' receipts."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    UNDELIVERED = "undelivered"
    DEAD = "dead"  # gave up after the last transient failure; waits in the dead-letter view


class OutboxMessage(Base):
    """One message Switchboard sends, on any channel, kept until the provider has taken it.

    `idempotency_key` makes an enqueue that is retried (a client resubmitting, a crash before
    the answer) a no-op that answers the first row. `locked_until` is the lease of the sender
    that claimed the row: a row still `sending` after its lease belongs to a crashed process
    (see `timeline.outbox` for what happens to it). `provider_id` is the id the message goes
    out with or the provider gave it (an e-mail's Message-ID, a Twilio MessageSid).
    """

    __tablename__ = "outbox_messages"
    __table_args__ = (
        Index(None, "status", "next_attempt_at"),
        # Provider receipts name a message by the provider's id (`timeline.outbox.mark_delivery`).
        Index(None, "channel", "provider_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    event_id: Mapped[int | None] = mapped_column(ForeignKey("timeline_events.id"), index=True)
    recipient: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    provider_id: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()


class MailboxState(Base):
    """How far IMAP intake has read one configured mailbox (RFC 3501 UIDs).

    UIDs only mean something under one UIDVALIDITY; when the server changes it, intake starts
    the mailbox over and the ingest path's dedupe on Message-ID keeps that idempotent.
    """

    __tablename__ = "mailbox_states"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OptOut(Base):
    """A customer's "do not send" on one identity (an SMS `STOP`), with when and how it came.

    One row per opted-out identity; opting back in (`START`) removes it. What may still be sent
    to an opted-out identity is decided by `routing.consent`.
    """

    __tablename__ = "opt_outs"

    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id"), primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    opted_out_at: Mapped[datetime] = mapped_column()
    # How it came, in words for people: e.g. `sms keyword STOP (event 42)`.
    source: Mapped[str] = mapped_column(String(200))


class EventEdit(Base):
    """An earlier version of a message the customer edited (Telegram `edited_message`).

    The event itself always shows the newest text; its earlier texts are kept here, oldest first.
    """

    __tablename__ = "event_edits"
    __table_args__ = (Index(None, "event_id", "edited_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("timeline_events.id"))
    previous_body: Mapped[str] = mapped_column(Text)
    # When the new text replaced `previous_body`, as the provider reports it.
    edited_at: Mapped[datetime] = mapped_column()
    journal_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_journal.id"))


# --- routing (issue 6) ----------------------------------------------------------------------


class RoutingQueue(Base):
    """A queue's configuration; see `routing.queues.QueueConfig` for what each field means."""

    __tablename__ = "queues"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RoutingRule(Base):
    """One rule of the ordered list that picks a new ticket's queue (`routing.rules`)."""

    __tablename__ = "routing_rules"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(64))
    conditions: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentSkill(Base):
    __tablename__ = "agent_skills"
    # Routing reads only the agents with a queue's skills: a large centre has thousands. The
    # agent's id in the index too, so that reading them takes no look at the table.
    __table_args__ = (Index(None, "skill", "level", "agent_id"),)

    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    skill: Mapped[str] = mapped_column(String(64), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, default=1)


class PresenceSpell(Base):
    """One stretch of one presence state of an agent; `until` is empty for the current one."""

    __tablename__ = "presence_history"
    __table_args__ = (Index(None, "agent_id", "until"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"))
    state: Mapped[str] = mapped_column(String(16))
    since: Mapped[datetime] = mapped_column()
    until: Mapped[datetime | None] = mapped_column()


class OfferStatus(enum.StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"


class Offer(Base):
    """A reservation of a waiting ticket for one agent until it accepts, rejects or times out.

    At most one pending offer per ticket: the partial unique index is the database's own
    guard against offering one ticket to two agents at once, whatever the processes do.
    """

    __tablename__ = "offers"
    __table_args__ = (
        Index(
            "uq_offers_pending_ticket",
            "ticket_id",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index(None, "agent_id", "status"),
        Index(None, "ticket_id", "agent_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"))
    queue: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=OfferStatus.PENDING)
    created_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()
    decided_at: Mapped[datetime | None] = mapped_column()


class TimerKind(enum.StrEnum):
    OFFER_EXPIRY = "offer_expiry"  # subject: an offer
    AFTER_CALL_WORK = "after_call_work"  # subject: an agent
    OVERFLOW = "overflow"  # subject: a ticket
    REROUTE = "reroute"  # subject: a ticket whose chosen agent another batch filled first
    QUEUE_OPENS = "queue_opens"  # subject: a queue (its tickets waited while it was closed)
    AFTER_HOURS_REPLY = "after_hours_reply"  # subject: a ticket that entered a closed queue


class RoutingTimer(Base):
    """Something routing must do at a time: a row, so it survives the process that set it.

    A sweeper claims due rows (`SKIP LOCKED` on PostgreSQL), acts and deletes them in one
    transaction: each fires exactly once, on whichever process is alive.
    """

    __tablename__ = "routing_timers"
    __table_args__ = (Index(None, "due_at"), Index(None, "kind", "subject_id"))

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[int] = mapped_column(Id)
    due_at: Mapped[datetime] = mapped_column()


class QueueDay(Base):
    """Counters of one queue for one local day, bumped by routing events (never recounted)."""

    __tablename__ = "queue_stats"

    queue: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # ISO date, queue's zone
    offered: Mapped[int] = mapped_column(Integer, default=0)
    answered: Mapped[int] = mapped_column(Integer, default=0)
    answered_in_sla: Mapped[int] = mapped_column(Integer, default=0)
    abandoned: Mapped[int] = mapped_column(Integer, default=0)
    wait_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    handled: Mapped[int] = mapped_column(Integer, default=0)
    handle_seconds: Mapped[float] = mapped_column(Float, default=0.0)


class QueueSample(Base):
    """A queue as it stood at one minute, for the wallboard's charts of the last hours."""

    __tablename__ = "queue_samples"

    queue: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime] = mapped_column(primary_key=True)
    waiting: Mapped[int] = mapped_column(Integer)
    longest_wait_seconds: Mapped[float] = mapped_column(Float)
    service_level: Mapped[float | None] = mapped_column(Float)


# --- outbound campaigns (issue 8) -----------------------------------------------------------


class Segment(Base):
    """A saved audience: a filter over contacts (see `routing.segments` for its keys)."""

    __tablename__ = "segments"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    filter: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CampaignStatus(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class Campaign(Base):
    """One outbound campaign: audience, template, politeness, and how far dispatch has come.

    `cursor_contact_id` is the last contact whose recipient row exists: recipients are
    materialised in keyset pages, each page and its cursor in one transaction, so a restart
    continues after the last committed page. `lease_owner`/`lease_until`: the process that
    dispatches the campaign now (one at a time, so its pacing holds across processes).
    """

    __tablename__ = "campaigns"
    __table_args__ = (Index(None, "status"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.DRAFT)
    segment_id: Mapped[int | None] = mapped_column(ForeignKey("segments.id"))
    # The audience as it was when the campaign was created (a segment's filter is copied).
    filter: Mapped[dict[str, Any]] = mapped_column()
    template: Mapped[dict[str, Any]] = mapped_column()
    sender: Mapped[str | None] = mapped_column(String(320))
    pacing: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    quiet_hours: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    frequency_cap: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    scheduled_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    cursor_contact_id: Mapped[int] = mapped_column(Id, default=0)
    materialised_at: Mapped[datetime | None] = mapped_column()
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column()
    # Inbound events up to this id were looked at for replies to the campaign.
    replies_seen_event_id: Mapped[int] = mapped_column(Id, default=0)


class RecipientStatus(enum.StrEnum):
    PENDING = "pending"  # materialised, not yet handed to the outbox
    QUEUED = "queued"  # in the outbox (its row says sent, delivered, failed, …)
    SKIPPED = "skipped"  # not sent, for `skip_reason`


class CampaignRecipient(Base):
    """One contact of a campaign's audience: at most one per campaign, whatever its identities.

    `idempotency_key` is also the outbox row's key, so handing the message to the outbox twice
    (a crash between enqueue and this row's update cannot happen, they share a transaction,
    but a second process might try) stores one message. `not_before`: not sent earlier (quiet
    hours in the recipient's time zone move it on).
    """

    __tablename__ = "campaign_recipients"
    __table_args__ = (
        UniqueConstraint("campaign_id", "contact_id"),
        Index(None, "campaign_id", "status", "not_before", "id"),
        Index(None, "contact_id", "queued_at"),
        # The timeline shows which campaign a reply answered (`timeline.campaigns.links`).
        Index(None, "reply_event_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=RecipientStatus.PENDING)
    skip_reason: Mapped[str | None] = mapped_column(String(32))
    recipient: Mapped[str | None] = mapped_column(String(320))
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox_messages.id"))
    not_before: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column()
    # The customer's answer (the first inbound on the channel after the message), if any.
    reply_event_id: Mapped[int | None] = mapped_column(ForeignKey("timeline_events.id"))
    replied_at: Mapped[datetime | None] = mapped_column()
    opted_out_at: Mapped[datetime | None] = mapped_column()
