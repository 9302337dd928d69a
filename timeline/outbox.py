"""The outbox: what Switchboard sends, on any channel, kept durably until a provider took it.

Plain functions of a `Session`, like `timeline.store`, run inside the caller's transaction.

Life of a row: `queued` → claimed (`sending`, under a lease) → `sent` (the provider accepted it)
→ maybe `delivered` / `undelivered` from a provider's receipt. A transient failure puts it back to
`queued` with a later `next_attempt_at`; the last allowed attempt failing makes it `dead`; a
permanent failure makes it `failed` at once. `failed` and `dead` rows wait for a person
(`requeue`).

Several processes may send from one database: `claim` takes rows with `FOR UPDATE SKIP LOCKED` on
PostgreSQL, so each row goes to one sender; on SQLite every write transaction holds the one write
lock (BEGIN IMMEDIATE, see `timeline.db`), which serialises claims the same way.

Crash recovery, the documented rule: a row whose sender died mid-send stays `sending` until its
lease runs out. Nobody can know whether the provider took it. The next claim then either sends
it again, but only for channels whose resend is harmless (`resendable`: e-mail, whose retry
carries the same Message-ID, which receivers treat as the same message, RFC 5322 §3.6.4), or
marks it `failed` with the reason "interrupted", for a person to check and retry (SMS, chat: a
second copy would reach the customer's phone). Nothing is ever sent twice silently.

The `attempts` counter doubles as a fencing token: a sender reports its result for the attempt
it claimed, and a late report for a row that was reclaimed meanwhile changes nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from timeline import bulk, messaging, store
from timeline.models import (
    Identity,
    OutboxMessage,
    OutboxStatus,
    TimelineEvent,
    utcnow,
)

INTERRUPTED = "interrupted while sending; the provider may or may not have accepted it"
OPTED_OUT = "the recipient opted out after this message was queued"

# The outbox's words, as the timeline shows them on the message's event.
_EVENT_STATUS = {
    OutboxStatus.QUEUED: "queued",
    OutboxStatus.SENDING: "queued",
    OutboxStatus.SENT: "sent",
    OutboxStatus.DELIVERED: "delivered",
    OutboxStatus.FAILED: "failed",
    OutboxStatus.UNDELIVERED: "undelivered",
    OutboxStatus.DEAD: "failed",
}
# Receipts (`mark_delivery`) in the timeline's words, as the outbox keeps them.
_RECEIPT_STATUS = {
    "delivered": OutboxStatus.DELIVERED,
    "undelivered": OutboxStatus.UNDELIVERED,
    "bounced": OutboxStatus.UNDELIVERED,
    "failed": OutboxStatus.FAILED,
    "sent": OutboxStatus.SENT,
}
RECEIPT_STATUSES = frozenset(_RECEIPT_STATUS)
WAITING_FOR_A_PERSON = (OutboxStatus.FAILED, OutboxStatus.DEAD)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A claimed row, detached from the session: what a channel's sender needs to send it."""

    id: int
    channel: str
    recipient: str
    payload: dict[str, Any]
    attempt: int
    provider_id: str | None
    idempotency_key: str
    event_id: int | None = None
    # The ticket the message answers, if any: only then is there an agent to tell of its status.
    ticket_id: int | None = None


@dataclass(frozen=True, slots=True)
class NewOutbound:
    """An outbound message and its timeline event, as one enqueue writes them."""

    channel: str
    idempotency_key: str
    recipient: str
    sender: str
    payload: dict[str, Any]
    external_id: str
    ticket_id: int | None
    contact_id: int | None
    text: str = ""
    subject: str | None = None
    html: str | None = None
    attachments: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Enqueued:
    message: OutboxMessage
    event: TimelineEvent | None
    duplicate: bool


def by_key(session: Session, idempotency_key: str) -> OutboxMessage | None:
    return session.execute(
        select(OutboxMessage).where(OutboxMessage.idempotency_key == idempotency_key)
    ).scalar_one_or_none()


def enqueue(session: Session, new: NewOutbound, now: datetime | None = None) -> Enqueued:
    """Append the outbound event and queue its message; an idempotency key seen before answers
    the first row and stores nothing.

    The insert runs in a savepoint: two processes racing with one key both get the winner's row.
    """
    existing = by_key(session, new.idempotency_key)
    if existing is not None:
        return _duplicate(session, existing)
    now = now or utcnow()
    try:
        with session.begin_nested():
            event = _outbound_event(new, now)
            session.add(event)
            session.flush()
            message = OutboxMessage(
                channel=new.channel,
                idempotency_key=new.idempotency_key,
                ticket_id=new.ticket_id,
                contact_id=new.contact_id,
                event_id=event.id,
                recipient=new.recipient,
                payload=new.payload,
                status=OutboxStatus.QUEUED,
                attempts=0,
                next_attempt_at=now,
                provider_id=new.external_id,
                created_at=now,
                updated_at=now,
            )
            session.add(message)
            session.flush()
    except IntegrityError:
        winner = by_key(session, new.idempotency_key)
        if winner is None:
            raise
        return _duplicate(session, winner)
    return Enqueued(message, event, duplicate=False)


def _duplicate(session: Session, message: OutboxMessage) -> Enqueued:
    event = session.get(TimelineEvent, message.event_id) if message.event_id else None
    return Enqueued(message, event, duplicate=True)


def _outbound_event(new: NewOutbound, now: datetime) -> TimelineEvent:
    return TimelineEvent(**_event_row(new, now))


def _event_row(new: NewOutbound, now: datetime) -> dict[str, Any]:
    return {
        "channel": new.channel,
        "external_id": new.external_id,
        "kind": "message",
        "direction": "out",
        "contact_id": new.contact_id,
        "ticket_id": new.ticket_id,
        "sender": new.sender,
        "recipient": new.recipient,
        "subject": new.subject,
        "body": new.text,
        "html": new.html,
        "attachments": list(new.attachments),
        "occurred_at": now,
        "created_at": now,
        "delivery_status": _EVENT_STATUS[OutboxStatus.QUEUED],
    }


def enqueue_many(
    session: Session, news: Sequence[NewOutbound], now: datetime | None = None
) -> list[int]:
    """Several `enqueue`s in four statements (bulk senders: campaigns); the outbox ids, in order.

    A key seen before answers its first row and stores nothing, as in `enqueue`. Unlike there,
    two processes racing with one key fail the later transaction (the unique key), which its
    caller retries, rather than each waiting in a savepoint: one savepoint per message would
    cost more than the rest of the batch.
    """
    now = now or utcnow()
    known = dict(
        session.execute(
            select(OutboxMessage.idempotency_key, OutboxMessage.id).where(
                OutboxMessage.idempotency_key.in_([n.idempotency_key for n in news])
            )
        ).all()
    )
    fresh = [n for n in news if n.idempotency_key not in known]
    event_ids = store.reserve_ids(session, TimelineEvent, len(fresh))
    message_ids = store.reserve_ids(session, OutboxMessage, len(fresh))
    events = [_event_row(n, now) | {"id": e} for n, e in zip(fresh, event_ids, strict=True)]
    bulk.execute_many(session, _NEW_EVENT, events, {"occurred_at": now, "created_at": now})
    messages = [
        {
            "id": message_id,
            "channel": n.channel,
            "idempotency_key": n.idempotency_key,
            "ticket_id": n.ticket_id,
            "contact_id": n.contact_id,
            "event_id": event_id,
            "recipient": n.recipient,
            "payload": n.payload,
            "provider_id": n.external_id,
        }
        for n, event_id, message_id in zip(fresh, event_ids, message_ids, strict=True)
    ]
    bulk.execute_many(session, _NEW_MESSAGE, messages, {"now": now})
    known.update(zip((n.idempotency_key for n in fresh), message_ids, strict=True))
    return [known[n.idempotency_key] for n in news]


def claim(
    session: Session,
    channel: str,
    *,
    limit: int,
    lease: timedelta,
    resendable: bool,
    recover: bool = True,
    now: datetime | None = None,
) -> list[OutboxItem]:
    """Take up to `limit` due rows of `channel` for this sender, each for `lease`.

    Due: queued rows whose time has come, and (with `recover`) `sending` rows whose sender's
    lease ran out (a crashed process). The latter are sent again only when `resendable`;
    otherwise they are marked failed (see the module's crash-recovery rule) and not returned.
    So is a message whose recipient opted out after it was queued (`routing.consent`): nothing
    is sent to someone who said stop.
    """
    now = now or utcnow()
    rows: list[Any] = []
    for due in (_CRASHED, _QUEUED) if recover else (_QUEUED,):
        if len(rows) < limit:
            found = session.execute(due, {"channel": channel, "now": now, "n": limit - len(rows)})
            rows.extend(found.all())
    opted_out = messaging.opted_out_since(
        session, [(r.contact_id, r.recipient, r.created_at) for r in rows if r.contact_id]
    )
    claimed: list[OutboxItem] = []
    for row in rows:
        reason = None
        if row.status == OutboxStatus.SENDING and not resendable:
            reason = INTERRUPTED
        elif (row.contact_id, row.recipient) in opted_out:
            reason = OPTED_OUT
        if reason is not None:
            failed = session.get(OutboxMessage, row.id)
            assert failed is not None
            _finish(session, failed, OutboxStatus.FAILED, reason, now)
        else:
            claimed.append(_item(row, attempt=row.attempts + 1))
    if claimed:
        # One Core statement for the lot: claiming is the outbox's hot path. The rows are
        # locked, so `attempts + 1` is each item's `attempt`.
        ids = [item.id for item in claimed]
        session.execute(_TAKE, {"ids": ids, "until": now + lease, "now": now})
    session.flush()
    return claimed


# Core tables for the hot paths (claims, results), where the ORM's unit of work costs most.
_OUTBOX = cast(Table, OutboxMessage.__table__)
_EVENTS = cast(Table, TimelineEvent.__table__)
# What `enqueue_many` writes, compiled once (`timeline.bulk`).
_NEW_EVENT = insert(_EVENTS).values(
    bulk.binds(
        "id channel external_id kind direction contact_id ticket_id sender recipient subject"
        " body html attachments occurred_at created_at delivery_status"
    )
)
_NEW_MESSAGE = insert(_OUTBOX).values(
    bulk.binds("id channel idempotency_key ticket_id contact_id event_id recipient payload")
    | bulk.binds("provider_id")
    | {
        "status": OutboxStatus.QUEUED,
        "attempts": 0,
        "next_attempt_at": bindparam("now"),
        "created_at": bindparam("now"),
        "updated_at": bindparam("now"),
    }
)


_CLAIMED_COLUMNS = (
    "id", "channel", "status", "attempts", "recipient", "contact_id", "created_at", "payload",
    "provider_id", "idempotency_key", "event_id", "ticket_id",
)  # fmt: skip


def _due(status: OutboxStatus, since: str) -> Any:
    """Rows of a channel in `status` whose `since` time has passed, oldest first, locked.

    Built once: statement building is a good part of a claim's cost. Each runs down the
    (status, next_attempt_at) index instead of scanning every row of the channel.
    """
    c = _OUTBOX.c
    return (
        select(*(c[name] for name in _CLAIMED_COLUMNS))
        .where(c.channel == bindparam("channel"), c.status == status)
        .where(c[since] <= bindparam("now"))
        .order_by(c.next_attempt_at, c.id)
        .limit(bindparam("n"))
        .with_for_update(skip_locked=True)
    )


# Two queries rather than one with OR, each down the index: rows a crashed sender left
# `sending` (lease over), then queued rows whose time has come.
_CRASHED = _due(OutboxStatus.SENDING, "locked_until")
_QUEUED = _due(OutboxStatus.QUEUED, "next_attempt_at")
# The rows are locked, so `attempts + 1` is each claimed item's `attempt`.
_TAKE = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        status=OutboxStatus.SENDING,
        attempts=_OUTBOX.c.attempts + 1,
        locked_until=bindparam("until"),
        updated_at=bindparam("now"),
    )
)


def _item(row: Any, attempt: int) -> OutboxItem:
    return OutboxItem(
        id=row.id,
        channel=row.channel,
        recipient=row.recipient,
        payload=dict(row.payload),
        attempt=attempt,
        provider_id=row.provider_id,
        idempotency_key=row.idempotency_key,
        event_id=row.event_id,
        ticket_id=row.ticket_id,
    )


def _claimed(session: Session, item: OutboxItem) -> OutboxMessage | None:
    """The row, if it is still this attempt's (the fencing check), locked for the update."""
    return session.execute(
        select(OutboxMessage)
        .where(
            OutboxMessage.id == item.id,
            OutboxMessage.status == OutboxStatus.SENDING,
            OutboxMessage.attempts == item.attempt,
        )
        .with_for_update()
    ).scalar_one_or_none()


def mark_sent(
    session: Session, item: OutboxItem, provider_id: str | None, now: datetime | None = None
) -> bool:
    return mark_sent_many(session, [(item, provider_id)], now)[0]


def mark_sent_many(
    session: Session,
    results: Sequence[tuple[OutboxItem, str | None]],
    now: datetime | None = None,
) -> list[bool]:
    """Several sends the provider accepted, `(item, provider id)` each, in four statements.

    Each is recorded only if its row is still that attempt's (the fencing check of
    `_claimed`); the answers say which were.
    """
    if not results:
        return []
    now = now or utcnow()
    asked = [item.id for item, _ in results]
    current = {
        (row_id, attempts): event_id
        for row_id, attempts, event_id in session.execute(_SENDING, {"ids": asked})
    }
    ours = [(i, p) for i, p in results if (i.id, i.attempt) in current]
    if ours:
        # What all share in one statement; only the provider's ids go row by row.
        session.execute(_SENT, {"ids": [i.id for i, _ in ours], "now": now})
        provider_ids = [{"sent_id": i.id, "sent_as": p or i.provider_id} for i, p in ours]
        bulk.execute_many(session, _PROVIDER_ID, provider_ids)
        events = [e for i, _ in ours if (e := current[(i.id, i.attempt)]) is not None]
        if events:
            session.execute(_EVENTS_SENT, {"ids": events})
    return [(item.id, item.attempt) in current for item, _ in results]


# `mark_sent_many`'s statements, built once.
_SENDING = (
    select(_OUTBOX.c.id, _OUTBOX.c.attempts, _OUTBOX.c.event_id)
    .where(
        _OUTBOX.c.id.in_(bindparam("ids", expanding=True)),
        _OUTBOX.c.status == OutboxStatus.SENDING,
    )
    .with_for_update()
)
_SENT = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        status=OutboxStatus.SENT,
        sent_at=bindparam("now"),
        locked_until=None,
        last_error=None,
        updated_at=bindparam("now"),
    )
)
_PROVIDER_ID = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("sent_id"))
    .values(provider_id=bindparam("sent_as"))
)
_EVENTS_SENT = (
    update(_EVENTS)
    .where(_EVENTS.c.id.in_(bindparam("ids", expanding=True)))
    .values(delivery_status=_EVENT_STATUS[OutboxStatus.SENT], delivery_detail=None)
)


def mark_retry(
    session: Session, item: OutboxItem, error: str, at: datetime, now: datetime | None = None
) -> bool:
    """A transient failure: queued again for `at`; the event stays `queued`."""
    row = _claimed(session, item)
    if row is None:
        return False
    row.status = OutboxStatus.QUEUED
    row.next_attempt_at = at
    row.locked_until = None
    row.last_error = error
    row.updated_at = now or utcnow()
    return True


def mark_failed(
    session: Session,
    item: OutboxItem,
    error: str,
    *,
    dead: bool = False,
    now: datetime | None = None,
) -> bool:
    """A permanent failure (`failed`), or the last transient one (`dead`)."""
    row = _claimed(session, item)
    if row is None:
        return False
    status = OutboxStatus.DEAD if dead else OutboxStatus.FAILED
    _finish(session, row, status, error, now or utcnow())
    return True


def _finish(
    session: Session, row: OutboxMessage, status: OutboxStatus, error: str | None, now: datetime
) -> None:
    row.status = status
    row.locked_until = None
    row.last_error = error
    row.updated_at = now
    if row.event_id is not None:
        _set_event_status(session, row.event_id, _EVENT_STATUS[status], error)


def _set_event_status(session: Session, event_id: int, status: str, detail: str | None) -> None:
    session.execute(
        update(TimelineEvent)
        .where(TimelineEvent.id == event_id)
        .values(delivery_status=status, delivery_detail=detail)
    )


def requeue(session: Session, outbox_id: int, now: datetime | None = None) -> OutboxMessage | None:
    """A person's retry of a failed or dead row: a fresh set of attempts, due at once.

    Returns None when there is no such row or it is not waiting for a person.
    """
    row = session.execute(
        select(OutboxMessage).where(OutboxMessage.id == outbox_id).with_for_update()
    ).scalar_one_or_none()
    if row is None or row.status not in WAITING_FOR_A_PERSON:
        return None
    now = now or utcnow()
    row.status = OutboxStatus.QUEUED
    row.attempts = 0
    row.next_attempt_at = now
    row.updated_at = now
    if row.event_id is not None:
        _set_event_status(session, row.event_id, _EVENT_STATUS[OutboxStatus.QUEUED], None)
    return row


def mark_delivery(
    session: Session,
    channel: str,
    external_id: str,
    status: str,
    detail: str | None,
    now: datetime | None = None,
) -> bool:
    """A provider's receipt for one of our outbound messages (a DSN, a Twilio status callback).

    `external_id` is the id the message went out with or the one the provider gave it (a
    Twilio MessageSid). `status` is one of `RECEIPT_STATUSES`. `bounced` also marks the
    recipient's identity as bouncing. Receipts arrive out of order: a late `sent` after a final
    word (delivered, failed, …) changes nothing. Returns False when no outbound event of ours
    has that id.
    """
    if status not in _RECEIPT_STATUS:
        raise ValueError(f"unknown delivery status {status!r}")
    event = outbound_event(session, channel, external_id)
    if event is None:
        return False
    # Locks in the order the sender's own results take them (outbox row, then event), so a
    # receipt racing the sender's `mark_sent` waits for it instead of deadlocking.
    session.execute(
        select(OutboxMessage.id).where(OutboxMessage.event_id == event.id).with_for_update()
    ).all()
    session.refresh(event)
    if status == "sent" and event.delivery_status in RECEIPT_STATUSES - {"sent"}:
        return True
    now = now or utcnow()
    event.delivery_status = status
    event.delivery_detail = detail
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.event_id == event.id)
        .values(status=_RECEIPT_STATUS[status], last_error=detail, updated_at=now)
    )
    if status == "bounced" and event.contact_id is not None:
        session.execute(
            update(Identity)
            .where(
                Identity.contact_id == event.contact_id,
                Identity.value == event.recipient,
                Identity.bouncing_since.is_(None),
            )
            .values(bouncing_since=now)
        )
    return True


def outbound_event(session: Session, channel: str, external_id: str) -> TimelineEvent | None:
    """Our outbound message with this id: the one it went out with, or the provider's."""
    ours = select(TimelineEvent).where(
        TimelineEvent.channel == channel, TimelineEvent.direction == "out"
    )
    event = session.execute(
        ours.where(TimelineEvent.external_id == external_id)
    ).scalar_one_or_none()
    if event is not None:
        return event
    return session.execute(
        ours.join(OutboxMessage, OutboxMessage.event_id == TimelineEvent.id).where(
            OutboxMessage.channel == channel, OutboxMessage.provider_id == external_id
        )
    ).scalar_one_or_none()


def next_due(session: Session, channels: Collection[str]) -> datetime | None:
    """When the earliest queued row of these channels is due; None when nothing is queued.

    Rows `sending` under another process's lease are that process's; they are not waited for.
    """
    return session.execute(
        select(func.min(OutboxMessage.next_attempt_at)).where(
            OutboxMessage.channel.in_(channels), OutboxMessage.status == OutboxStatus.QUEUED
        )
    ).scalar_one()


def listing(
    session: Session, statuses: Collection[str], *, limit: int, before_id: int | None = None
) -> list[OutboxMessage]:
    """The dead-letter view: rows in these statuses, newest first."""
    query = (
        select(OutboxMessage)
        .where(OutboxMessage.status.in_(statuses))
        .order_by(OutboxMessage.id.desc())
        .limit(limit)
    )
    if before_id is not None:
        query = query.where(OutboxMessage.id < before_id)
    return list(session.execute(query).scalars())


def thread_events(session: Session, ticket_id: int, channel: str) -> list[TimelineEvent]:
    """The ticket's events on `channel`, inbound and outbound, oldest first: a reply's thread."""
    return list(
        session.execute(
            select(TimelineEvent)
            .where(TimelineEvent.ticket_id == ticket_id, TimelineEvent.channel == channel)
            .order_by(TimelineEvent.occurred_at, TimelineEvent.id)
        ).scalars()
    )


def recent_count(session: Session, key_prefix: str, recipient: str, since: datetime) -> int:
    """How many messages with keys starting `key_prefix` went to `recipient` since `since`."""
    return session.execute(
        select(func.count(OutboxMessage.id)).where(
            OutboxMessage.idempotency_key.startswith(key_prefix, autoescape=True),
            OutboxMessage.recipient == recipient,
            OutboxMessage.created_at >= since,
        )
    ).scalar_one()
