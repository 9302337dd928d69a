"""Queries and writes on the timeline, inside a session the caller owns.

Every function here runs within the caller's transaction: the ingest path composes several of
them into one unit of work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from timeline.events import InboundEvent
from timeline.models import (
    OPEN_STATUSES,
    Contact,
    Identity,
    InboundJournal,
    JournalStatus,
    ScreenPop,
    Ticket,
    TicketStatus,
    TimelineEvent,
    utcnow,
)

# Ticket numbers are what customers quote on the phone; they start above the ids of a fresh
# database so they look like ticket numbers from day one.
TICKET_NUMBER_OFFSET = 10_000


async def find_event(session: AsyncSession, channel: str, external_id: str) -> TimelineEvent | None:
    query = select(TimelineEvent).where(
        TimelineEvent.channel == channel, TimelineEvent.external_id == external_id
    )
    return (await session.execute(query)).scalar_one_or_none()


async def journal(
    session: AsyncSession,
    *,
    channel: str,
    payload: bytes,
    content_type: str | None,
    status: JournalStatus = JournalStatus.RECEIVED,
    reason: str | None = None,
) -> InboundJournal:
    entry = InboundJournal(
        channel=channel, payload=payload, content_type=content_type, status=status, reason=reason
    )
    session.add(entry)
    await session.flush()
    return entry


async def mark_journal(
    session: AsyncSession,
    journal_id: int,
    status: JournalStatus,
    *,
    reason: str | None = None,
    event_id: int | None = None,
) -> None:
    await session.execute(
        update(InboundJournal)
        .where(InboundJournal.id == journal_id)
        .values(status=status, reason=reason, event_id=event_id)
    )


async def contact_by_identity(session: AsyncSession, kind: str, value: str) -> Contact | None:
    query = (
        select(Contact)
        .join(Identity, Identity.contact_id == Contact.id)
        .where(Identity.kind == kind, Identity.value == value)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def create_contact(
    session: AsyncSession,
    *,
    name: str,
    identities: Iterable[tuple[str, str]],
    tags: Sequence[str] = (),
    attributes: dict[str, object] | None = None,
) -> Contact:
    contact = Contact(name=name, tags=list(tags), attributes=dict(attributes or {}))
    session.add(contact)
    await session.flush()
    session.add_all(Identity(contact_id=contact.id, kind=k, value=v) for k, v in identities)
    await session.flush()
    return contact


async def lock_contact(session: AsyncSession, contact_id: int) -> None:
    """Serialise ticket choice per contact (PostgreSQL row lock; SQLite has one writer anyway)."""
    await session.execute(select(Contact.id).where(Contact.id == contact_id).with_for_update())


async def identities_of(session: AsyncSession, contact_ids: Sequence[int]) -> list[Identity]:
    query = select(Identity).where(Identity.contact_id.in_(contact_ids)).order_by(Identity.id)
    return list((await session.execute(query)).scalars())


async def ticket_by_number(session: AsyncSession, number: int) -> Ticket | None:
    return (
        await session.execute(select(Ticket).where(Ticket.number == number))
    ).scalar_one_or_none()


async def ticket_of_references(
    session: AsyncSession, channel: str, references: Sequence[str]
) -> Ticket | None:
    """The ticket of the newest stored event any of `references` names (e.g. Message-IDs)."""
    if not references:
        return None
    query = (
        select(Ticket)
        .join(TimelineEvent, TimelineEvent.ticket_id == Ticket.id)
        .where(TimelineEvent.channel == channel, TimelineEvent.external_id.in_(references))
        .order_by(TimelineEvent.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def open_ticket_of(session: AsyncSession, contact_id: int) -> Ticket | None:
    query = (
        select(Ticket)
        .where(Ticket.contact_id == contact_id, Ticket.status.in_(OPEN_STATUSES))
        .order_by(Ticket.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def last_resolved_ticket_of(session: AsyncSession, contact_id: int) -> Ticket | None:
    query = (
        select(Ticket)
        .where(
            Ticket.contact_id == contact_id,
            Ticket.status.in_((TicketStatus.RESOLVED, TicketStatus.CLOSED)),
        )
        .order_by(Ticket.resolved_at.desc(), Ticket.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def open_tickets_of(session: AsyncSession, contact_id: int, limit: int = 10) -> list[Ticket]:
    query = (
        select(Ticket)
        .where(Ticket.contact_id == contact_id, Ticket.status.in_(OPEN_STATUSES))
        .order_by(Ticket.id.desc())
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())


async def create_ticket(
    session: AsyncSession,
    *,
    contact_id: int | None,
    channel: str,
    subject: str | None,
    queue: str,
    linked_ticket_id: int | None = None,
) -> Ticket:
    ticket = Ticket(
        contact_id=contact_id,
        channel=channel,
        subject=subject,
        queue=queue,
        linked_ticket_id=linked_ticket_id,
    )
    session.add(ticket)
    await session.flush()
    ticket.number = ticket.id + TICKET_NUMBER_OFFSET
    return ticket


def reopen(ticket: Ticket, now: datetime) -> int | None:
    """Back to waiting, unassigned; returns who held it, who may be preferred when routing.

    The assignee is released rather than kept, since keeping it could put that agent over
    capacity without anybody deciding so.
    """
    previous = ticket.assignee_id
    ticket.status = TicketStatus.NEW
    ticket.resolved_at = None
    ticket.assignee_id = None
    ticket.assigned_at = None
    ticket.updated_at = now
    return previous


async def append_event(
    session: AsyncSession,
    event: InboundEvent,
    *,
    contact_id: int | None,
    ticket_id: int | None,
    sender: str,
) -> TimelineEvent:
    row = TimelineEvent(
        channel=event.channel,
        external_id=event.external_id,
        kind=event.kind,
        direction=event.direction,
        contact_id=contact_id,
        ticket_id=ticket_id,
        sender=sender,
        recipient=event.recipient,
        subject=event.subject,
        body=event.text,
        html=event.html,
        attachments=[
            {"filename": a.filename, "content_type": a.content_type, "size": a.size, "url": a.url}
            for a in event.attachments
        ],
        occurred_at=event.occurred_at,
        journal_id=event.journal_id,
    )
    session.add(row)
    await session.flush()
    return row


async def recent_events(
    session: AsyncSession, contact_id: int, *, limit: int, before_id: int | None = None
) -> list[TimelineEvent]:
    """Newest first, by when it happened; `before_id` continues after that event (a cursor)."""
    query = select(TimelineEvent).where(TimelineEvent.contact_id == contact_id)
    if before_id is not None:
        cursor = (
            await session.execute(
                select(TimelineEvent.occurred_at, TimelineEvent.id).where(
                    TimelineEvent.id == before_id
                )
            )
        ).one_or_none()
        if cursor is None:
            return []
        occurred_at, event_id = cursor
        query = query.where(
            or_(
                TimelineEvent.occurred_at < occurred_at,
                and_(TimelineEvent.occurred_at == occurred_at, TimelineEvent.id < event_id),
            )
        )
    query = query.order_by(TimelineEvent.occurred_at.desc(), TimelineEvent.id.desc()).limit(limit)
    return list((await session.execute(query)).scalars())


async def store_pop(session: AsyncSession, agent_id: int, payload: dict[str, object]) -> int:
    pop = ScreenPop(agent_id=agent_id, payload=payload, created_at=utcnow())
    session.add(pop)
    await session.flush()
    return pop.id


async def pops_after(session: AsyncSession, agent_id: int, after_id: int) -> list[ScreenPop]:
    query = (
        select(ScreenPop)
        .where(ScreenPop.agent_id == agent_id, ScreenPop.id > after_id)
        .order_by(ScreenPop.id)
    )
    return list((await session.execute(query)).scalars())


async def count(session: AsyncSession, model: type[object]) -> int:
    return (await session.execute(select(func.count()).select_from(model))).scalar_one()
