"""Store functions of outbound campaigns: segments, campaigns, their recipients and counts.

Plain functions of a `Session`, like `timeline.store`, run inside the caller's transaction.
What a campaign decides (audience, politeness, rendering) lives in `routing` and
`gateway.campaigns`; here are the rows and the one rule of their life cycle (`TRANSITIONS`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, bindparam, exists, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from timeline import bulk
from timeline.models import (
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    Identity,
    OptOut,
    OutboxMessage,
    OutboxStatus,
    RecipientStatus,
    Segment,
    TimelineEvent,
    utcnow,
)

# action → the statuses it may leave from.
# A campaign may be changed until it begins: nothing of it is materialised or sent yet.
EDITABLE = (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED)
TRANSITIONS: dict[str, tuple[CampaignStatus, ...]] = {
    "start": (CampaignStatus.DRAFT,),
    "pause": (CampaignStatus.RUNNING, CampaignStatus.SCHEDULED),
    "resume": (CampaignStatus.PAUSED,),
    "cancel": (
        CampaignStatus.DRAFT,
        CampaignStatus.SCHEDULED,
        CampaignStatus.RUNNING,
        CampaignStatus.PAUSED,
    ),
}
SKIP_CANCELLED = "cancelled"
_RECIPIENTS = cast(Table, CampaignRecipient.__table__)
# A page of the audience (`add_recipients`, through `timeline.bulk`), per dialect: a contact
# already there is left as it is.
_NEW_RECIPIENT = {
    name: dialect.insert(_RECIPIENTS)
    .values(
        bulk.binds("campaign_id contact_id idempotency_key")
        | {
            "status": RecipientStatus.PENDING,
            "not_before": bindparam("now"),
            "created_at": bindparam("now"),
        }
    )
    .on_conflict_do_nothing()
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}
# Outbox statuses in the campaign's words; `undelivered` was sent, and then failed.
_SENT = {OutboxStatus.SENT, OutboxStatus.DELIVERED, OutboxStatus.UNDELIVERED}
_FAILED = {OutboxStatus.FAILED, OutboxStatus.DEAD, OutboxStatus.UNDELIVERED}
_WAITING = {OutboxStatus.QUEUED, OutboxStatus.SENDING}


_KEY_PREFIX = "campaign:"


def recipient_key(campaign_id: int, contact_id: int) -> str:
    """The idempotency key of one contact's message of one campaign (also the outbox's)."""
    return f"{_KEY_PREFIX}{campaign_id}:contact:{contact_id}"


def links(session: Session, event_ids: Collection[int]) -> dict[int, int]:
    """The campaign of each of these timeline events that is a campaign's message or a reply
    to one: `{event id: campaign id}`."""
    if not event_ids:
        return {}
    found = {
        event_id: campaign_id
        for event_id, campaign_id in session.execute(
            select(CampaignRecipient.reply_event_id, CampaignRecipient.campaign_id).where(
                CampaignRecipient.reply_event_id.in_(event_ids)
            )
        )
        if event_id is not None
    }
    sent = session.execute(
        select(OutboxMessage.event_id, OutboxMessage.idempotency_key).where(
            OutboxMessage.event_id.in_(event_ids),
            OutboxMessage.idempotency_key.startswith(_KEY_PREFIX),
        )
    )
    for event_id, key in sent:
        if event_id is not None:
            found[event_id] = int(key.split(":")[1])
    return found


# --- segments -------------------------------------------------------------------------------


def add_segment(session: Session, name: str, audience: dict[str, Any]) -> Segment:
    segment = Segment(name=name, filter=audience, created_at=utcnow())
    session.add(segment)
    session.flush()
    return segment


def segments(session: Session) -> list[Segment]:
    return list(session.execute(select(Segment).order_by(Segment.id.desc())).scalars())


# --- campaigns ------------------------------------------------------------------------------


def add_campaign(session: Session, **fields: Any) -> Campaign:
    campaign = Campaign(status=CampaignStatus.DRAFT, created_at=utcnow(), **fields)
    session.add(campaign)
    session.flush()
    return campaign


def campaigns(session: Session, limit: int, before_id: int | None = None) -> list[Campaign]:
    query = select(Campaign).order_by(Campaign.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(Campaign.id < before_id)
    return list(session.execute(query).scalars())


def edit(
    session: Session, campaign_id: int, fields: Mapping[str, Any]
) -> tuple[Campaign | None, bool]:
    """Change a campaign that has not begun (`EDITABLE`); `(campaign, False)` when its status
    no longer allows it, `(None, False)` when there is no such campaign. A scheduled campaign
    whose time is taken away is a draft again, to be started by hand."""
    campaign = _locked(session, campaign_id)
    if campaign is None or campaign.status not in EDITABLE:
        return campaign, False
    for name, value in fields.items():
        setattr(campaign, name, value)
    if campaign.status == CampaignStatus.SCHEDULED and campaign.scheduled_at is None:
        campaign.status = CampaignStatus.DRAFT
    session.flush()
    return campaign, True


def _locked(session: Session, campaign_id: int) -> Campaign | None:
    return session.execute(
        select(Campaign).where(Campaign.id == campaign_id).with_for_update()
    ).scalar_one_or_none()


def transition(
    session: Session, campaign_id: int, action: str, now: datetime | None = None
) -> tuple[Campaign | None, bool]:
    """Apply `action` (start, pause, resume, cancel); `(campaign, False)` when its status does
    not allow it, `(None, False)` when there is no such campaign."""
    campaign = _locked(session, campaign_id)
    if campaign is None or campaign.status not in TRANSITIONS[action]:
        return campaign, False
    now = now or utcnow()
    if action == "pause":
        campaign.status = CampaignStatus.PAUSED
    elif action == "cancel":
        campaign.status = CampaignStatus.CANCELLED
        campaign.finished_at = now
        session.execute(
            update(CampaignRecipient)
            .where(
                CampaignRecipient.campaign_id == campaign.id,
                CampaignRecipient.status == RecipientStatus.PENDING,
            )
            .values(status=RecipientStatus.SKIPPED, skip_reason=SKIP_CANCELLED)
        )
    else:
        if action == "start":
            # Replies are looked for among what arrives from now on.
            newest = session.execute(select(func.max(TimelineEvent.id))).scalar_one()
            campaign.replies_seen_event_id = newest or 0
        later = campaign.scheduled_at is not None and campaign.scheduled_at > now
        campaign.status = CampaignStatus.SCHEDULED if later else CampaignStatus.RUNNING
        if campaign.status == CampaignStatus.RUNNING:
            campaign.started_at = campaign.started_at or now
    session.flush()
    return campaign, True


def due_to_start(session: Session, now: datetime) -> bool:
    """Whether a scheduled campaign's time has come (read first: starting one is a write)."""
    return (
        session.execute(
            select(Campaign.id)
            .where(Campaign.status == CampaignStatus.SCHEDULED, Campaign.scheduled_at <= now)
            .limit(1)
        ).first()
        is not None
    )


def start_due(session: Session, now: datetime) -> None:
    """Scheduled campaigns whose time has come start running."""
    session.execute(
        update(Campaign)
        .where(Campaign.status == CampaignStatus.SCHEDULED, Campaign.scheduled_at <= now)
        .values(status=CampaignStatus.RUNNING, started_at=func.coalesce(Campaign.started_at, now))
    )


def running(session: Session) -> list[Campaign]:
    return list(
        session.execute(
            select(Campaign).where(Campaign.status == CampaignStatus.RUNNING).order_by(Campaign.id)
        ).scalars()
    )


def lease(
    session: Session, campaign_id: int, owner: str, ttl: timedelta, now: datetime
) -> Campaign | None:
    """The running campaign, locked and leased to `owner`; None if it is not running or
    another live process holds it (so one process at a time paces a campaign)."""
    campaign = session.execute(
        select(Campaign).where(Campaign.id == campaign_id).with_for_update()
    ).scalar_one_or_none()
    if campaign is None or campaign.status != CampaignStatus.RUNNING:
        return None
    holder, until = campaign.lease_owner, campaign.lease_until
    if holder not in (None, owner) and until is not None and until > now:
        return None
    campaign.lease_owner, campaign.lease_until = owner, now + ttl
    return campaign


# --- recipients -----------------------------------------------------------------------------


def add_recipients(
    session: Session, campaign_id: int, contact_ids: Sequence[int], now: datetime
) -> None:
    """A page of the audience; a contact already there is left as it is."""
    if not contact_ids:
        return
    rows = [
        {"contact_id": contact_id, "idempotency_key": recipient_key(campaign_id, contact_id)}
        for contact_id in contact_ids
    ]
    statement = _NEW_RECIPIENT[session.get_bind().dialect.name]
    bulk.execute_many(session, statement, rows, {"campaign_id": campaign_id, "now": now})


class DueRecipient(NamedTuple):
    """A pending recipient whose time has come: what dispatching it needs."""

    id: int
    contact_id: int
    idempotency_key: str


def due_recipients(
    session: Session, campaign_id: int, now: datetime, limit: int
) -> list[DueRecipient]:
    """Pending recipients whose time has come, oldest first, locked (`SKIP LOCKED`)."""
    found = session.execute(_DUE, {"campaign": campaign_id, "now": now, "n": limit})
    return [DueRecipient(*row) for row in found]


# Built once, and plain rows rather than ORM objects: it runs for every batch of a campaign.
_DUE = (
    select(_RECIPIENTS.c.id, _RECIPIENTS.c.contact_id, _RECIPIENTS.c.idempotency_key)
    .where(
        _RECIPIENTS.c.campaign_id == bindparam("campaign"),
        _RECIPIENTS.c.status == RecipientStatus.PENDING,
        _RECIPIENTS.c.not_before <= bindparam("now"),
    )
    .order_by(_RECIPIENTS.c.not_before, _RECIPIENTS.c.id)
    .limit(bindparam("n"))
    .with_for_update(skip_locked=True)
)


def next_pending(session: Session, campaign_id: int) -> datetime | None:
    """When the earliest pending recipient is due; None when none is pending."""
    return session.execute(
        select(func.min(CampaignRecipient.not_before)).where(
            CampaignRecipient.campaign_id == campaign_id,
            CampaignRecipient.status == RecipientStatus.PENDING,
        )
    ).scalar_one()


# PostgreSQL advisory lock (any fixed number) around counting towards the frequency cap.
_CAP_LOCK = 7_254_008
_CAP_LOCKS = {
    True: text("SELECT pg_advisory_xact_lock(:key)"),
    False: text("SELECT pg_advisory_xact_lock_shared(:key)"),
}


def hold_frequency_cap(session: Session, counting: bool) -> None:
    """Before a batch is decided: several processes may dispatch campaigns side by side on
    PostgreSQL, and a batch that counts each contact's recent campaign messages (`counting`)
    must see every batch sent beside it. It holds the cap's lock alone, the others share it
    until they commit, so a count never misses a batch still in flight. SQLite's single
    writer serialises the batches by itself."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_CAP_LOCKS[counting], {"key": _CAP_LOCK})


def campaign_messages_since(
    session: Session, contact_ids: Collection[int], since: datetime, other_than: int
) -> Counter[int]:
    """How many messages of other campaigns each contact was sent since `since` (the cap)."""
    if not contact_ids:
        return Counter()
    rows = session.execute(
        select(CampaignRecipient.contact_id, func.count())
        .where(
            CampaignRecipient.contact_id.in_(contact_ids),
            CampaignRecipient.queued_at >= since,
            CampaignRecipient.campaign_id != other_than,
        )
        .group_by(CampaignRecipient.contact_id)
    )
    return Counter({contact_id: n for contact_id, n in rows})


def opted_out_contacts(session: Session, contact_ids: Collection[int], kind: str) -> set[int]:
    """The contacts with an opt-out on any identity of `kind`."""
    if not contact_ids:
        return set()
    return set(session.execute(_OPTED_OUT, {"contacts": contact_ids, "kind": kind}).scalars())


# Driven from the opt-outs of these contacts, the identity's kind checked per opt-out: as a
# join, SQLite's planner (no statistics) scans every identity of the kind instead, 10 ms per
# batch with 100,000 contacts.
_OPTED_OUT = select(OptOut.contact_id).where(
    OptOut.contact_id.in_(bindparam("contacts", expanding=True)),
    exists().where(Identity.id == OptOut.identity_id, Identity.kind == bindparam("kind")),
)


def waiting_in_outbox(session: Session, channel: str) -> int:
    """Messages of `channel` queued and due in the outbox: the backlog campaigns keep small,
    so that a pause stops sending within moments."""
    return session.execute(
        select(func.count(OutboxMessage.id)).where(
            OutboxMessage.status == OutboxStatus.QUEUED,
            OutboxMessage.next_attempt_at <= utcnow(),
            OutboxMessage.channel == channel,
        )
    ).scalar_one()


def finish_if_done(session: Session, campaign: Campaign, now: datetime) -> bool:
    """Completed: the whole audience is materialised, and every recipient was handed to the
    outbox (or skipped) and the outbox has sent or given up on each."""
    if campaign.materialised_at is None or next_pending(session, campaign.id) is not None:
        return False
    in_outbox = session.execute(
        select(CampaignRecipient.id)
        .join(OutboxMessage, OutboxMessage.id == CampaignRecipient.outbox_id)
        .where(CampaignRecipient.campaign_id == campaign.id, OutboxMessage.status.in_(_WAITING))
        .limit(1)
    ).first()
    if in_outbox is not None:
        return False
    campaign.status = CampaignStatus.COMPLETED
    campaign.finished_at = now
    campaign.lease_owner = campaign.lease_until = None
    return True


@dataclass(frozen=True, slots=True)
class Queued:
    recipient_id: int
    address: str
    outbox_id: int


def mark_queued(session: Session, queued: Sequence[Queued], now: datetime) -> None:
    rows = [{"rid": q.recipient_id, "address": q.address, "oid": q.outbox_id} for q in queued]
    bulk.execute_many(session, _QUEUED, rows, {"now": now})


_QUEUED = (
    update(_RECIPIENTS)
    .where(_RECIPIENTS.c.id == bindparam("rid"))
    .values(
        status=RecipientStatus.QUEUED,
        recipient=bindparam("address"),
        outbox_id=bindparam("oid"),
        queued_at=bindparam("now"),
    )
)


def mark_skipped(session: Session, skipped: Sequence[tuple[int, str]]) -> None:
    """`(recipient id, reason)` each: not sent, for good."""
    if skipped:
        session.execute(
            update(_RECIPIENTS)
            .where(_RECIPIENTS.c.id == bindparam("rid"))
            .values(status=RecipientStatus.SKIPPED, skip_reason=bindparam("reason")),
            [{"rid": rid, "reason": reason} for rid, reason in skipped],
        )


def defer(session: Session, deferred: Sequence[tuple[int, datetime]]) -> None:
    """`(recipient id, not before)` each: still pending, later (quiet hours)."""
    if deferred:
        session.execute(
            update(_RECIPIENTS)
            .where(_RECIPIENTS.c.id == bindparam("rid"))
            .values(not_before=bindparam("at")),
            [{"rid": rid, "at": at} for rid, at in deferred],
        )


# --- replies --------------------------------------------------------------------------------


def reply_candidates(
    session: Session, campaign: Campaign, limit: int
) -> tuple[list[tuple[int, int, str, datetime]], int]:
    """The next inbound events on the campaign's channel after its watermark, as
    `(event id, contact id, body, occurred at)` oldest first, and the new watermark: the
    events looked at (outbound ones included) need not be looked at again."""
    newest = session.execute(select(func.max(TimelineEvent.id))).scalar_one() or 0
    rows = session.execute(
        select(
            TimelineEvent.id,
            TimelineEvent.contact_id,
            TimelineEvent.body,
            TimelineEvent.occurred_at,
        )
        .where(
            TimelineEvent.id > campaign.replies_seen_event_id,
            TimelineEvent.id <= newest,
            # `|| ''` keeps the planner on the id range: SQLite (no statistics) would rather
            # walk the (channel, external id) index through every event of the channel,
            # which grows with the timeline (55 ms after a campaign of 100,000; now 2 ms).
            TimelineEvent.channel.concat("") == campaign.channel,
            TimelineEvent.direction == "in",
        )
        .order_by(TimelineEvent.id)
        .limit(limit)
    ).all()
    upto = rows[-1][0] if len(rows) == limit else newest
    return [(i, c, b, at) for i, c, b, at in rows if c is not None], upto


def awaiting_reply(
    session: Session, campaign_id: int, contact_ids: Collection[int]
) -> dict[int, CampaignRecipient]:
    """The recipients among these contacts that were sent the campaign and have not answered."""
    rows = session.execute(
        select(CampaignRecipient).where(
            CampaignRecipient.campaign_id == campaign_id,
            CampaignRecipient.contact_id.in_(contact_ids),
            CampaignRecipient.status == RecipientStatus.QUEUED,
            or_(CampaignRecipient.replied_at.is_(None), CampaignRecipient.opted_out_at.is_(None)),
        )
    ).scalars()
    return {r.contact_id: r for r in rows}


def reply_watch(session: Session, since: datetime) -> list[Campaign]:
    """Campaigns whose replies are still followed: started, and not finished before `since`."""
    return list(
        session.execute(
            select(Campaign).where(
                Campaign.started_at.is_not(None),
                or_(Campaign.finished_at.is_(None), Campaign.finished_at >= since),
            )
        ).scalars()
    )


# --- counts ---------------------------------------------------------------------------------


def counts(session: Session, campaign_id: int) -> dict[str, Any]:
    """The campaign's figures (see README, "Campaigns"), in one grouped query."""
    rows = session.execute(
        select(
            CampaignRecipient.status,
            CampaignRecipient.skip_reason,
            OutboxMessage.status,
            func.count(),
            func.count(CampaignRecipient.replied_at),
            func.count(CampaignRecipient.opted_out_at),
        )
        .outerjoin(OutboxMessage, OutboxMessage.id == CampaignRecipient.outbox_id)
        .where(CampaignRecipient.campaign_id == campaign_id)
        .group_by(CampaignRecipient.status, CampaignRecipient.skip_reason, OutboxMessage.status)
    )
    figures: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for status, reason, sent_as, n, replied, opted_out in rows:
        figures["targeted"] += n
        figures["replied"] += replied
        figures["opted_out"] += opted_out
        if status == RecipientStatus.SKIPPED:
            skipped[reason or "unknown"] += n
        elif status == RecipientStatus.PENDING or sent_as in _WAITING:
            figures["queued"] += n
        figures["sent"] += n if sent_as in _SENT else 0
        figures["delivered"] += n if sent_as == OutboxStatus.DELIVERED else 0
        figures["failed"] += n if sent_as in _FAILED else 0
    names = ("targeted", "queued", "sent", "delivered", "failed", "opted_out", "replied")
    return {**{name: figures[name] for name in names}, "skipped": dict(skipped)}
