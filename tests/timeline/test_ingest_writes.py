"""The ingest path's writes in `timeline.store`, on both databases: events and journal entries
through the driver's executemany (`store.insert_many`), an entry journaled with its event, and
tickets read as records and written back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from timeline import store
from timeline.db import Database
from timeline.models import InboundJournal, JournalStatus, Ticket, TicketStatus, TimelineEvent


def event_row(n: int) -> store.Row:
    return {
        "channel": "email",
        "external_id": f"m{n}@example.org",
        "kind": "message",
        "direction": "in",
        "sender": "anna@example.org",
        "recipient": "support@example.org",
        "body": f"Hallo {n}",
        "occurred_at": datetime(2026, 12, 5, 9, n, tzinfo=UTC),
    }


async def test_what_rows_leave_out_takes_its_default_at_each_insert(db: Database) -> None:
    """`created_at` is the moment of each insert (the bulk writer works a statement's defaults
    out once, and must not keep the first batch's moment for later ones)."""
    first = await db.run(store.add_events, [event_row(1), event_row(2)])
    await asyncio.sleep(0.05)
    before = datetime.now(UTC)
    second = await db.run(store.add_events, [event_row(3)])

    def read(session: Session) -> dict[int, Any]:
        rows = session.execute(select(TimelineEvent).where(TimelineEvent.id.in_(first + second)))
        return {e.id: e for e in rows.scalars()}

    events = await db.read(read)
    assert [events[i].external_id for i in first + second] == [
        "m1@example.org",
        "m2@example.org",
        "m3@example.org",
    ]
    assert all(events[i].attachments == [] for i in first + second)
    assert events[first[0]].created_at < before <= events[second[0]].created_at
    assert events[second[0]].created_at - before < timedelta(seconds=5)


async def test_an_entry_journaled_with_its_event_is_accepted_and_points_at_it(
    db: Database,
) -> None:
    def write(session: Session) -> tuple[list[int], list[int]]:
        event_ids = list(store.reserve_ids(session, TimelineEvent, 2))
        journal_ids = store.journal(
            session,
            [("email", b"raw one", "message/rfc822"), ("email", b"raw two", "message/rfc822")],
            event_ids=event_ids,
        )
        rows = [event_row(n) | {"id": e, "journal_id": j} for n, e, j in zip(
            (1, 2), event_ids, journal_ids, strict=True
        )]  # fmt: skip
        store.add_events(session, rows)
        return event_ids, journal_ids

    event_ids, journal_ids = await db.run(write)

    def read(session: Session) -> list[InboundJournal]:
        query = select(InboundJournal).where(InboundJournal.id.in_(journal_ids))
        return list(session.execute(query.order_by(InboundJournal.id)).scalars())

    entries = await db.read(read)
    assert [(e.status, e.event_id, e.payload) for e in entries] == [
        (JournalStatus.ACCEPTED, event_ids[0], b"raw one"),
        (JournalStatus.ACCEPTED, event_ids[1], b"raw two"),
    ]
    assert all(e.received_at is not None for e in entries)


async def test_tickets_read_as_records_and_written_back(db: Database) -> None:
    now = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    later = now + timedelta(hours=1)

    def setup(session: Session) -> tuple[int, int]:
        (contact_id,) = store.create_contacts(session, [("Anna", [("email", "anna@x.org")])])
        opened = store.TicketRecord(contact_id=contact_id, channel="email", subject="Open")
        done = store.TicketRecord(contact_id=contact_id, channel="email", subject="Done")
        store.insert_tickets(session, [opened, done], now)
        session.get_one(Ticket, done.id).status = TicketStatus.RESOLVED
        session.get_one(Ticket, done.id).resolved_at = now
        session.flush()
        assert opened.number and opened.updated_at == now
        return contact_id, opened.id

    contact_id, open_id = await db.run(setup)

    def change(session: Session) -> tuple[store.TicketRecord, store.TicketRecord]:
        (opened,) = store.open_ticket_records_by_contact(session, [contact_id]).values()
        (done,) = store.last_resolved_ticket_records_by_contact(session, [contact_id]).values()
        store.touch_tickets(session, [opened], later)
        assert store.reopen(done, later) is None
        store.write_reopened(session, [done], later)
        return opened, done

    opened, done = await db.run(change)
    assert opened.id == open_id and opened.status == TicketStatus.NEW

    def read(session: Session) -> list[Ticket]:
        query = select(Ticket).where(Ticket.id.in_([opened.id, done.id])).order_by(Ticket.id)
        return list(session.execute(query).scalars())

    stored_open, stored_done = await db.read(read)
    assert stored_open.updated_at == later
    assert (stored_done.status, stored_done.resolved_at, stored_done.updated_at) == (
        TicketStatus.NEW,
        None,
        later,
    )
