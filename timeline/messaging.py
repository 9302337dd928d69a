"""Store functions of the messaging channels: opt-outs per identity, edits of messages.

Plain functions of a `Session`, like `timeline.store`, run inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import and_, bindparam, or_, select
from sqlalchemy.orm import Session

from timeline.models import Contact, EventEdit, Identity, OptOut, Ticket, TimelineEvent


def set_opt_out(session: Session, kind: str, value: str, source: str, at: datetime) -> bool:
    """Record that the owner of this identity wants nothing sent to it; False if unknown.

    A second opt-out keeps the first one's time and source: it is still the same wish.
    """
    identity = _identity(session, kind, value)
    if identity is None:
        return False
    if session.get(OptOut, identity.id) is None:
        session.add(
            OptOut(
                identity_id=identity.id,
                contact_id=identity.contact_id,
                opted_out_at=at,
                source=source[:200],
            )
        )
        session.flush()
    return True


def clear_opt_out(session: Session, kind: str, value: str) -> bool:
    """The identity opted back in; True if it had been opted out."""
    identity = _identity(session, kind, value)
    if identity is None:
        return False
    opted_out = session.get(OptOut, identity.id)
    if opted_out is None:
        return False
    session.delete(opted_out)
    session.flush()
    return True


def opt_out_of(session: Session, kind: str, value: str) -> OptOut | None:
    return session.execute(
        select(OptOut)
        .join(Identity, Identity.id == OptOut.identity_id)
        .where(Identity.kind == kind, Identity.value == value)
    ).scalar_one_or_none()


def opted_out_since(
    session: Session, recipients: Collection[tuple[int, str, datetime]]
) -> set[tuple[int, str]]:
    """Of `(contact id, address, since)`, the contacts' addresses that opted out after `since`.

    The outbox asks this for the messages it is about to send: one queued while sending was
    allowed is still stopped by an opt-out that came in meanwhile.
    """
    if not recipients:
        return set()
    contacts, values = {c for c, _, _ in recipients}, {v for _, v, _ in recipients}
    rows = session.execute(_OPT_OUTS, {"contacts": contacts, "values": values}).all()
    opted = {(contact_id, value): at for contact_id, value, at in rows}
    return {
        (contact_id, value)
        for contact_id, value, since in recipients
        if (at := opted.get((contact_id, value))) is not None and at > since
    }


# Built once: the outbox asks before every batch it sends.
_OPT_OUTS = (
    select(Identity.contact_id, Identity.value, OptOut.opted_out_at)
    .join(OptOut, OptOut.identity_id == Identity.id)
    .where(
        Identity.contact_id.in_(bindparam("contacts", expanding=True)),
        Identity.value.in_(bindparam("values", expanding=True)),
    )
)


def record_edit(
    session: Session,
    channel: str,
    external_id: str,
    text: str,
    edited_at: datetime,
    journal_id: int | None,
) -> tuple[TimelineEvent | None, bool]:
    """The customer edited a message: the event shows the new text, the old one is kept.

    Returns the event (None when no such inbound event is stored) and whether this edit
    changed it. Providers resend updates, and an edit can arrive after a later one: an edit
    not newer than the newest kept changes nothing.
    """
    event = session.execute(
        select(TimelineEvent)
        .where(
            TimelineEvent.channel == channel,
            TimelineEvent.external_id == external_id,
            TimelineEvent.direction == "in",
        )
        .with_for_update()
    ).scalar_one_or_none()
    if event is None:
        return None, False
    latest = session.execute(
        select(EventEdit.edited_at)
        .where(EventEdit.event_id == event.id)
        .order_by(EventEdit.edited_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    if latest is not None and edited_at <= latest:
        return event, False
    session.add(
        EventEdit(
            event_id=event.id, previous_body=event.body, edited_at=edited_at, journal_id=journal_id
        )
    )
    event.body = text
    session.flush()
    return event, True


def edits_of(session: Session, event_id: int) -> list[EventEdit]:
    return list(
        session.execute(
            select(EventEdit).where(EventEdit.event_id == event_id).order_by(EventEdit.edited_at)
        ).scalars()
    )


def _identity(session: Session, kind: str, value: str) -> Identity | None:
    return session.execute(
        select(Identity).where(Identity.kind == kind, Identity.value == value)
    ).scalar_one_or_none()


def link_identities(
    session: Session, first: tuple[str, str], second: tuple[str, str], name: str | None
) -> int:
    """Make two identities one person's (a chat visitor who gives an e-mail address).

    A new identity joins the contact that owns the other; with neither known, one new contact
    gets both. Two identities already owned by different contacts stay as they are: merging two
    customers is an agent's decision. A contact still named after an identity value (as ingest
    names strangers) takes `name`. Returns the first identity's contact.
    """
    owners = {key: _owner(session, *key) for key in (first, second)}
    contact_id = owners[first] or owners[second]
    if contact_id is None:
        contact = Contact(name=(name or first[1])[:200])
        session.add(contact)
        session.flush()
        contact_id = contact.id
    for key, owner in owners.items():
        if owner is None:
            session.add(Identity(contact_id=contact_id, kind=key[0], value=key[1]))
    named = session.get(Contact, contact_id)
    if name and named is not None and named.name in (first[1], second[1]):
        named.name = name[:200]
    session.flush()
    return owners[first] or contact_id


def conversation(session: Session, channel: str, address: str, limit: int) -> list[TimelineEvent]:
    """The last `limit` messages between us and one address on a channel, oldest first."""
    query = (
        select(TimelineEvent)
        .where(
            TimelineEvent.channel == channel,
            or_(
                and_(TimelineEvent.direction == "in", TimelineEvent.sender == address),
                and_(TimelineEvent.direction == "out", TimelineEvent.recipient == address),
            ),
        )
        .order_by(TimelineEvent.occurred_at.desc(), TimelineEvent.id.desc())
        .limit(limit)
    )
    return list(reversed(session.execute(query).scalars().all()))


def latest_ticket_from(session: Session, channel: str, address: str) -> Ticket | None:
    """The ticket of the newest message this address sent on the channel."""
    return session.execute(
        select(Ticket)
        .join(TimelineEvent, TimelineEvent.ticket_id == Ticket.id)
        .where(
            TimelineEvent.channel == channel,
            TimelineEvent.direction == "in",
            TimelineEvent.sender == address,
        )
        .order_by(TimelineEvent.occurred_at.desc(), TimelineEvent.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def latest_sender_on(session: Session, ticket_id: int, channel: str) -> str | None:
    """Who wrote last on the ticket on this channel (the chat visitor to show typing to)."""
    return session.execute(
        select(TimelineEvent.sender)
        .where(
            TimelineEvent.ticket_id == ticket_id,
            TimelineEvent.channel == channel,
            TimelineEvent.direction == "in",
        )
        .order_by(TimelineEvent.occurred_at.desc(), TimelineEvent.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def _owner(session: Session, kind: str, value: str) -> int | None:
    return session.execute(
        select(Identity.contact_id).where(Identity.kind == kind, Identity.value == value)
    ).scalar_one_or_none()
