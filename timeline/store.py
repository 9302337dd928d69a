"""Queries and writes on the timeline, inside a session the caller owns.

Every function runs within the caller's transaction, and the ingest path's functions take a
whole batch of events at once: a statement per step for the batch, not per event, which is
what lets one commit acknowledge many inbounds (group commit).
"""

from __future__ import annotations

import functools
import threading
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from timeline import bulk
from timeline.models import (
    OPEN_STATUSES,
    Base,
    Call,
    Contact,
    Identity,
    InboundJournal,
    JournalStatus,
    ScreenPop,
    Ticket,
    TicketStatus,
    TimelineEvent,
    ticket_number,
)

EventKey = tuple[str, str]  # (channel, external_id)
IdentityPair = tuple[str, str]  # (kind, normalised value)
CallKey = tuple[str, str]  # (provider, call_id)


_NEXT_IDS = text("SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :n)")


Row = dict[str, Any]


def _pairs_in(
    first: InstrumentedAttribute[str],
    second: InstrumentedAttribute[str],
    pairs: Collection[tuple[str, str]],
) -> ColumnElement[bool]:
    """`(first, second) IN pairs`, written so that a two-column index serves it.

    SQLite scans the whole table for a row-value IN list; grouped by the first column
    (`first = ? AND second IN (…)`, one group per channel or identity kind) it seeks the index.
    """
    return or_(*(and_(first == a, second.in_(bs)) for a, bs in _grouped(pairs).items()))


class _SqliteIds:
    """The largest id this process has handed out per SQLite file and table.

    An id may be taken ahead of its INSERT (a call's pop goes out before its commit, see
    `reserve_ids`); the next transaction must not hand it out again although the table does
    not show it yet. SQLite files are written by one gateway process, so a process-wide
    counter is the whole truth; it is shared by the writer and reader threads, hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issued: dict[tuple[str | None, str], int] = {}

    def take(self, session: Session, table: Table, n: int) -> range:
        largest: int = session.connection().execute(_largest_id(table)).scalar_one() or 0
        return self.after(session, table, largest, n)

    def after(self, session: Session, table: Table, largest: int, n: int) -> range:
        """`n` ids past `largest` (what the table holds) and past any handed out already."""
        return self.past(session.get_bind().engine.url.database, table, largest, n)

    def past(self, database: str | None, table: Table, largest: int, n: int) -> range:
        key = (database, table.name)
        with self._lock:
            first = max(largest, self._issued.get(key, 0)) + 1
            self._issued[key] = first + n - 1
        return range(first, first + n)


_sqlite_ids = _SqliteIds()


@functools.cache
def _largest_id(table: Table) -> Select[Any]:
    return select(func.max(table.c.id))


def _next_ids(session: Session, table: Table, n: int) -> Sequence[int]:
    """Ids for `n` new rows, taken before the INSERT so a batch goes in as one statement.

    SQLite cannot promise the order of a multi-row INSERT's RETURNING, so SQLAlchemy would
    insert such rows one statement at a time. On SQLite the next ids after the largest are
    safe because every write transaction holds SQLite's write lock from its start (BEGIN
    IMMEDIATE, see timeline.db); on PostgreSQL they come from the table's own sequence, as the
    column default would take them.
    """
    if n == 0:
        return []
    if session.get_bind().dialect.name == "sqlite":
        return _sqlite_ids.take(session, table, n)
    result = session.execute(_NEXT_IDS, {"table": table.name, "n": n})
    return result.scalars().all()


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def reserve_ids(session: Session, model: type[Base], n: int) -> Sequence[int]:
    """Ids for rows a later transaction inserts (`insert_rows`/`insert` keep a preset id):
    what must be known before the commit, such as the pops of a ringing call, or the events
    an ingest batch's journal entries point at."""
    return _next_ids(session, _table(model), n)


def reserve_ids_of(
    session: Session, wanted: Sequence[tuple[type[Base], int]]
) -> list[Sequence[int]]:
    """`reserve_ids` for several tables, `(model, n)` each: on SQLite one statement reads
    where every table stands, since a ring's few indexed lookups cost more in Python and in
    hand-offs of the GIL than in SQLite."""
    tables = [_table(model) for model, _ in wanted]
    counts = [n for _, n in wanted]
    if session.get_bind().dialect.name != "sqlite":
        return [_next_ids(session, table, n) for table, n in zip(tables, counts, strict=True)]
    largest = session.connection().execute(_largest_ids(tuple(tables))).one()
    return [
        _sqlite_ids.after(session, table, top or 0, n)
        for table, top, n in zip(tables, largest, counts, strict=True)
    ]


def reserve_ids_past(
    database: str | None, wanted: Sequence[tuple[type[Base], int | None, int]]
) -> list[range]:
    """SQLite: `reserve_ids_of` where the caller read the largest ids itself (`(model,
    largest, n)` each) in a statement of its own; `database` is the file's name."""
    return [
        _sqlite_ids.past(database, _table(model), largest or 0, n) for model, largest, n in wanted
    ]


@functools.cache
def _largest_ids(tables: tuple[Table, ...]) -> Select[Any]:
    return select(*(select(func.max(table.c.id)).scalar_subquery() for table in tables))


def insert_rows(session: Session, model: type[Base], rows: list[Row]) -> list[int]:
    """Insert plain rows (column defaults apply) in one statement; their new ids, in order.

    The hot path inserts with Core rather than the ORM's unit of work, which costs far more
    per row than the database does.
    """
    if not rows:
        return []
    table = _table(model)
    _number(session, table, rows)
    session.execute(table.insert(), rows)
    return [row["id"] for row in rows]


def insert_many(session: Session, model: type[Base], rows: list[Row]) -> list[int]:
    """`insert_rows` through the driver's executemany (`timeline.bulk`): each column's type
    looked up once, not per row and value; what the rows leave out takes the column's default,
    worked out once for them all. For tables whose defaults need no row (not tickets, whose
    number follows from the id). Rows with the same columns go in as one statement."""
    if not rows:
        return []
    table = _table(model)
    _number(session, table, rows)
    grouped: dict[frozenset[str], list[Row]] = defaultdict(list)
    for row in rows:
        grouped[frozenset(row)].append(row)
    for columns, same in grouped.items():
        bulk.execute_many(session, _insert_of(table, columns), same)
    return [row["id"] for row in rows]


def _number(session: Session, table: Table, rows: list[Row]) -> None:
    """Give the rows without an id (a preset one, as `reserve_ids` gave it, is kept) theirs."""
    fresh = iter(_next_ids(session, table, sum(1 for row in rows if "id" not in row)))
    for row in rows:
        if "id" not in row:
            row["id"] = next(fresh)


@functools.cache
def _insert_of(table: Table, columns: frozenset[str]) -> Any:
    """The INSERT of these columns, built once (`timeline.bulk` compiles it once)."""
    return table.insert().values(bulk.binds(" ".join(sorted(columns))))


def insert(session: Session, objects: Sequence[Base]) -> None:
    """Insert new ORM objects of one class in one statement, ids given beforehand (an id
    already set, as `reserve_ids` gave it, is kept)."""
    if not objects:
        return
    table = type(objects[0]).__table__
    assert isinstance(table, Table)
    unnumbered = [obj for obj in objects if obj.id is None]  # type: ignore[attr-defined]
    for obj, obj_id in zip(unnumbered, _next_ids(session, table, len(unnumbered)), strict=True):
        obj.id = obj_id  # type: ignore[attr-defined]
    session.add_all(objects)
    session.flush()


# --- journal --------------------------------------------------------------------------------


def journal(
    session: Session,
    entries: Sequence[tuple[str, bytes, str | None]],
    *,
    status: JournalStatus = JournalStatus.RECEIVED,
    reason: str | None = None,
    event_ids: Sequence[int] | None = None,
) -> list[int]:
    """Keep raw payloads `(channel, payload, content_type)`; their ids, in order.

    `event_ids`: the payloads are journaled in the transaction that stores them as these
    events (ids reserved beforehand), so the entries go in as accepted, already pointing at
    them, and no second statement has to mark them.
    """
    rows: list[Row] = [
        {
            "channel": channel,
            "payload": payload,
            "content_type": content_type,
            "status": status,
            "reason": reason,
            "event_id": None,
        }
        for channel, payload, content_type in entries
    ]
    if event_ids is not None:
        for row, event_id in zip(rows, event_ids, strict=True):
            row["status"], row["event_id"] = JournalStatus.ACCEPTED, event_id
    return insert_many(session, InboundJournal, rows)


def mark_journal(
    session: Session,
    journal_id: int,
    status: JournalStatus,
    *,
    reason: str | None = None,
    event_id: int | None = None,
) -> None:
    session.execute(
        update(InboundJournal)
        .where(InboundJournal.id == journal_id)
        .values(status=status, reason=reason, event_id=event_id)
    )


def mark_journal_accepted(
    session: Session, events: Sequence[tuple[int, int]], notes: Mapping[int, str] | None = None
) -> None:
    """`(journal_id, event_id)` pairs: these payloads are now timeline events.

    `notes` keeps a remark on some of them (`{journal_id: text}`), such as a signal that
    arrived for a call we never heard ring.
    """
    if events:
        notes = notes or {}
        bulk.execute_many(
            session,
            _mark_accepted(),
            [{"journal": j, "event": e, "note": notes.get(j)} for j, e in events],
        )


@functools.cache
def _mark_accepted() -> Any:
    """One statement for every batch, through the driver (`timeline.bulk`): the ORM's bulk
    UPDATE by primary key costs far more per row in Python than the database spends on it."""
    table = _table(InboundJournal)
    return (
        update(table)
        .where(table.c.id == bindparam("journal"))
        .values(
            status=JournalStatus.ACCEPTED, event_id=bindparam("event"), reason=bindparam("note")
        )
    )


def forget_journal(session: Session, journal_ids: Collection[int]) -> None:
    """Drop entries of payloads that turned out to be retries of stored events."""
    if journal_ids:
        session.execute(delete(InboundJournal).where(InboundJournal.id.in_(journal_ids)))


# --- events ---------------------------------------------------------------------------------


def events_by_key(session: Session, keys: Collection[EventKey]) -> dict[EventKey, TimelineEvent]:
    """The stored events of `keys`: one prepared statement per channel, not a statement
    built and compiled anew for every batch (most batches find none)."""
    found: dict[EventKey, TimelineEvent] = {}
    for channel, external_ids in _grouped(keys).items():
        rows = session.execute(_events_of_channel(), {"channel": channel, "ids": external_ids})
        found.update(((e.channel, e.external_id), e) for e in rows.scalars())
    return found


@functools.cache
def _events_of_channel() -> Select[Any]:
    return select(TimelineEvent).where(
        TimelineEvent.channel == bindparam("channel"),
        TimelineEvent.external_id.in_(bindparam("ids", expanding=True)),
    )


def _grouped(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """`(a, b)` pairs as `{a: [b, …]}`: a two-column index serves `a = ? AND b IN (…)`."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for a, b in pairs:
        grouped[a].append(b)
    return grouped


def events_by_id(session: Session, event_ids: Collection[int]) -> dict[int, TimelineEvent]:
    if not event_ids:
        return {}
    query = select(TimelineEvent).where(TimelineEvent.id.in_(event_ids))
    return {event.id: event for event in session.execute(query).scalars()}


def add_events(session: Session, events: list[Row]) -> list[int]:
    """New timeline events as rows of `timeline_events`; their ids, in order."""
    return insert_many(session, TimelineEvent, events)


def recent_events(
    session: Session, contact_id: int, *, limit: int, before_id: int | None = None
) -> list[TimelineEvent]:
    """Newest first, by when it happened; `before_id` continues after that event (a cursor)."""
    query = select(TimelineEvent).where(TimelineEvent.contact_id == contact_id)
    if before_id is not None:
        cursor = (
            session.execute(
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
    return list((session.execute(query)).scalars())


def recent_events_of(
    session: Session, contact_ids: Collection[int], *, limit: int
) -> dict[int, list[TimelineEvent]]:
    """The newest `limit` events of each contact, newest first.

    One small index seek per contact, so the cost does not grow with a contact's history the
    way a window over all its events would; the seek is one prepared statement, run once per
    contact, so a batch of pops pays no SQL compilation per contact either.
    """
    if not contact_ids:
        return {}
    connection = session.connection()
    newest = _newest_event_ids(limit)
    ids = [
        event_id
        for contact_id in contact_ids
        for event_id in connection.execute(newest, {"contact_id": contact_id}).scalars()
    ]
    query = (
        select(TimelineEvent)
        .where(TimelineEvent.id.in_(ids))
        .order_by(TimelineEvent.occurred_at.desc(), TimelineEvent.id.desc())
    )
    recent: dict[int, list[TimelineEvent]] = defaultdict(list)
    for row in session.execute(query).scalars():
        if row.contact_id is not None:
            recent[row.contact_id].append(row)
    return recent


@functools.cache
def _newest_event_ids(limit: int) -> Select[Any]:
    return (
        select(TimelineEvent.id)
        .where(TimelineEvent.contact_id == bindparam("contact_id"))
        .order_by(TimelineEvent.occurred_at.desc(), TimelineEvent.id.desc())
        .limit(limit)
    )


# --- contacts and identities ----------------------------------------------------------------


def contact_by_identity(session: Session, kind: str, value: str) -> Contact | None:
    query = (
        select(Contact)
        .join(Identity, Identity.contact_id == Contact.id)
        .where(Identity.kind == kind, Identity.value == value)
    )
    return (session.execute(query)).scalar_one_or_none()


def contact_ids_by_identity(
    session: Session, pairs: Collection[IdentityPair]
) -> dict[IdentityPair, int]:
    found: dict[IdentityPair, int] = {}
    for kind, values in _grouped(pairs).items():
        rows = session.execute(_contacts_of_identities(), {"kind": kind, "values": values})
        found.update(((kind, value), contact_id) for value, contact_id in rows)
    return found


@functools.cache
def _contacts_of_identities() -> Select[Any]:
    """One prepared statement per identity kind, not one built for every batch."""
    identities = _table(Identity)
    return select(identities.c.value, identities.c.contact_id).where(
        identities.c.kind == bindparam("kind"),
        identities.c.value.in_(bindparam("values", expanding=True)),
    )


def create_contact(
    session: Session,
    *,
    name: str,
    identities: Iterable[IdentityPair],
    tags: Sequence[str] = (),
    attributes: dict[str, Any] | None = None,
) -> Contact:
    (contact_id,) = create_contacts(
        session, [(name, list(identities))], tags=tags, attributes=attributes
    )
    contact = session.get(Contact, contact_id)
    assert contact is not None
    return contact


def create_contacts(
    session: Session,
    contacts: Sequence[tuple[str, Sequence[IdentityPair]]],
    *,
    tags: Sequence[str] = (),
    attributes: dict[str, Any] | None = None,
) -> list[int]:
    """New contacts `(name, identities)`, two statements however many there are; their ids."""
    ids = insert_rows(
        session,
        Contact,
        [
            {"name": name, "tags": list(tags), "attributes": dict(attributes or {})}
            for name, _ in contacts
        ],
    )
    insert_rows(
        session,
        Identity,
        [
            {"contact_id": contact_id, "kind": kind, "value": value}
            for contact_id, (_, pairs) in zip(ids, contacts, strict=True)
            for kind, value in pairs
        ],
    )
    return ids


def lock_contacts(session: Session, contact_ids: Collection[int]) -> None:
    """Serialise ticket choice per contact across processes (PostgreSQL row locks, id order).

    SQLite has a single writer already, so it needs (and supports) no row locks.
    """
    if contact_ids and session.get_bind().dialect.name != "sqlite":
        query = (
            select(Contact.id)
            .where(Contact.id.in_(contact_ids))
            .order_by(Contact.id)
            .with_for_update()
        )
        session.execute(query)


def identities_of(session: Session, contact_ids: Collection[int]) -> list[Identity]:
    query = select(Identity).where(Identity.contact_id.in_(contact_ids)).order_by(Identity.id)
    return list((session.execute(query)).scalars())


# --- tickets --------------------------------------------------------------------------------


def open_ticket_by_contact(session: Session, contact_ids: Collection[int]) -> dict[int, Ticket]:
    """Each contact's newest open (new, open or pending) ticket."""
    tickets = open_tickets_of(session, contact_ids)
    return {contact_id: found[0] for contact_id, found in tickets.items()}


def open_tickets_of(session: Session, contact_ids: Collection[int]) -> dict[int, list[Ticket]]:
    """Open tickets per contact, newest first."""
    if not contact_ids:
        return {}
    query = (
        select(Ticket)
        .where(Ticket.contact_id.in_(contact_ids), Ticket.status.in_(OPEN_STATUSES))
        .order_by(Ticket.id.desc())
    )
    grouped: dict[int, list[Ticket]] = defaultdict(list)
    for ticket in (session.execute(query)).scalars():
        if ticket.contact_id is not None:
            grouped[ticket.contact_id].append(ticket)
    return grouped


@dataclass(eq=False, slots=True)
class TicketRecord:
    """A ticket as plain data, for the ingest path: it reads and decides on a batch's tickets
    at a fraction of what an ORM object per ticket costs (identity map, change tracking), and
    writes back what it changed by explicit statements (`insert_tickets`, `touch_tickets`,
    `write_reopened`). One that the batch opens has id 0 until it is inserted.

    The fields are in the order `_ticket_columns` reads them.
    """

    id: int = 0
    number: int | None = None
    contact_id: int | None = None
    channel: str = ""
    subject: str | None = None
    queue: str = "default"
    status: str = TicketStatus.NEW
    priority: str = "normal"
    assignee_id: int | None = None
    assigned_at: datetime | None = None
    resolved_at: datetime | None = None
    updated_at: datetime | None = None
    linked_ticket_id: int | None = None


def _ticket_columns() -> tuple[Any, ...]:
    tickets = _table(Ticket)
    return tuple(tickets.c[name] for name in TicketRecord.__dataclass_fields__)


def _records(rows: Iterable[Sequence[Any]]) -> Iterator[TicketRecord]:
    return (TicketRecord(*row) for row in rows)


def ticket_records_by_number(session: Session, numbers: Collection[int]) -> dict[int, TicketRecord]:
    """The tickets with these numbers (the `[#N]` tag of a subject)."""
    if not numbers:
        return {}
    rows = session.execute(_tickets_by_number(), {"numbers": list(numbers)})
    return {t.number: t for t in _records(rows) if t.number}


@functools.cache
def _tickets_by_number() -> Select[Any]:
    tickets = _table(Ticket)
    return select(*_ticket_columns()).where(
        tickets.c.number.in_(bindparam("numbers", expanding=True))
    )


def ticket_records_by_reference(
    session: Session, references: Collection[EventKey]
) -> dict[EventKey, TicketRecord]:
    """The ticket of each stored event named by `(channel, external_id)` (e.g. Message-IDs),
    one prepared statement per channel."""
    found: dict[EventKey, TicketRecord] = {}
    for channel, external_ids in _grouped(references).items():
        rows = session.execute(_tickets_of_events(), {"channel": channel, "ids": external_ids})
        found.update(((channel, row[0]), TicketRecord(*row[1:])) for row in rows)
    return found


@functools.cache
def _tickets_of_events() -> Select[Any]:
    tickets, events = _table(Ticket), _table(TimelineEvent)
    return (
        select(events.c.external_id, *_ticket_columns())
        .join(tickets, events.c.ticket_id == tickets.c.id)
        .where(
            events.c.channel == bindparam("channel"),
            events.c.external_id.in_(bindparam("ids", expanding=True)),
        )
    )


def open_ticket_records_by_contact(
    session: Session, contact_ids: Collection[int]
) -> dict[int, TicketRecord]:
    """Each contact's newest open (new, open or pending) ticket."""
    if not contact_ids:
        return {}
    found: dict[int, TicketRecord] = {}
    for ticket in _records(session.execute(_open_tickets(), {"contacts": list(contact_ids)})):
        if ticket.contact_id is not None:
            found.setdefault(ticket.contact_id, ticket)  # newest first
    return found


@functools.cache
def _open_tickets() -> Select[Any]:
    tickets = _table(Ticket)
    return (
        select(*_ticket_columns())
        .where(
            tickets.c.contact_id.in_(bindparam("contacts", expanding=True)),
            tickets.c.status.in_(OPEN_STATUSES),
        )
        .order_by(tickets.c.id.desc())
    )


def last_resolved_ticket_records_by_contact(
    session: Session, contact_ids: Collection[int]
) -> dict[int, TicketRecord]:
    """Each contact's most recently resolved or closed ticket."""
    if not contact_ids:
        return {}
    rows = session.execute(_last_resolved_tickets(), {"contacts": list(contact_ids)})
    return {t.contact_id: t for t in _records(rows) if t.contact_id}


@functools.cache
def _last_resolved_tickets() -> Select[Any]:
    tickets = _table(Ticket)
    done = (TicketStatus.RESOLVED, TicketStatus.CLOSED)
    newest = (
        select(tickets.c.contact_id, func.max(tickets.c.resolved_at).label("resolved_at"))
        .where(
            tickets.c.contact_id.in_(bindparam("contacts", expanding=True)),
            tickets.c.status.in_(done),
        )
        .group_by(tickets.c.contact_id)
        .subquery()
    )
    return (
        select(*_ticket_columns())
        .join(
            newest,
            and_(
                tickets.c.contact_id == newest.c.contact_id,
                tickets.c.resolved_at == newest.c.resolved_at,
            ),
        )
        .where(tickets.c.status.in_(done))
        .order_by(tickets.c.id)
    )


def insert_tickets(session: Session, tickets: Sequence[TicketRecord], now: datetime) -> None:
    """Insert the new `tickets` in one statement; each gets its id and number."""
    ids = insert_rows(
        session,
        Ticket,
        [
            {
                "contact_id": t.contact_id,
                "channel": t.channel,
                "subject": t.subject,
                "queue": t.queue,
                "linked_ticket_id": t.linked_ticket_id,
                "created_at": now,
                "updated_at": now,
            }
            for t in tickets
        ],
    )
    for ticket, ticket_id in zip(tickets, ids, strict=True):
        ticket.id, ticket.number, ticket.updated_at = ticket_id, ticket_number(ticket_id), now


def touch_tickets(session: Session, tickets: Collection[TicketRecord], now: datetime) -> None:
    """Something happened on these stored tickets now: one statement for all of them."""
    if tickets:
        session.execute(_touch(), {"ids": [t.id for t in tickets], "now": now})
        for ticket in tickets:
            ticket.updated_at = now


@functools.cache
def _touch() -> Any:
    tickets = _table(Ticket)
    return (
        update(tickets)
        .where(tickets.c.id.in_(bindparam("ids", expanding=True)))
        .values(updated_at=bindparam("now"))
    )


def write_reopened(session: Session, tickets: Collection[TicketRecord], now: datetime) -> None:
    """Store what `reopen(ticket, now)` did to these records."""
    if tickets:
        session.execute(_reopen(), {"ids": [t.id for t in tickets], "now": now})


@functools.cache
def _reopen() -> Any:
    tickets = _table(Ticket)
    return (
        update(tickets)
        .where(tickets.c.id.in_(bindparam("ids", expanding=True)))
        .values(
            status=TicketStatus.NEW,
            resolved_at=None,
            assignee_id=None,
            assigned_at=None,
            updated_at=bindparam("now"),
        )
    )


def reopen(ticket: Ticket | TicketRecord, now: datetime) -> int | None:
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


# --- screen-pops ----------------------------------------------------------------------------


def add_pops(session: Session, pops: list[Row]) -> list[int]:
    """New screen-pops as rows `{"agent_id", "payload"}`; their ids, in order."""
    return insert_rows(session, ScreenPop, pops)


def pops_after(session: Session, agent_id: int, after_id: int) -> list[ScreenPop]:
    """The agent's pops after `after_id` that still stand (not withdrawn)."""
    query = (
        select(ScreenPop)
        .where(
            ScreenPop.agent_id == agent_id,
            ScreenPop.id > after_id,
            ScreenPop.withdrawn_at.is_(None),
        )
        .order_by(ScreenPop.id)
    )
    return list((session.execute(query)).scalars())


def withdraw_pops(session: Session, pop_ids: Collection[int], now: datetime) -> list[ScreenPop]:
    """Mark standing pops withdrawn; the ones that were still standing."""
    if not pop_ids:
        return []
    query = select(ScreenPop).where(ScreenPop.id.in_(pop_ids), ScreenPop.withdrawn_at.is_(None))
    pops = list(session.execute(query).scalars())
    for pop in pops:
        pop.withdrawn_at = now
    return pops


def count(session: Session, model: type[object]) -> int:
    return (session.execute(select(func.count()).select_from(model))).scalar_one()


# --- calls ----------------------------------------------------------------------------------


def calls_by_key(
    session: Session, keys: Collection[tuple[str, str]]
) -> dict[tuple[str, str], Call]:
    """The calls named `(provider, call_id)`, their rows locked until the transaction ends."""
    if not keys:
        return {}
    query = select(Call).where(_pairs_in(Call.provider, Call.call_id, keys)).with_for_update()
    return {(call.provider, call.call_id): call for call in session.execute(query).scalars()}
