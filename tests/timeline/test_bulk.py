"""`timeline.bulk`: many rows through the driver store exactly what SQLAlchemy's own
executemany stores, on both databases: typed values (time zones, JSON), shared values, values
written into the statement and column defaults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, text, update
from sqlalchemy.orm import Session

from timeline import bulk
from timeline.db import Database
from timeline.models import TimelineEvent

EVENTS = cast(Table, TimelineEvent.__table__)
NOW = datetime(2026, 12, 5, 9, 30, 15, 123456, tzinfo=UTC)
NEW_EVENT = insert(EVENTS).values(
    bulk.binds("id channel external_id contact_id sender recipient body attachments occurred_at")
    | {"kind": "message", "direction": "out"}
)
MARK = update(EVENTS).where(EVENTS.c.id == bindparam("event")).values(bulk.binds("delivery_status"))


def rows(first_id: int) -> list[dict[str, Any]]:
    return [
        {
            "id": first_id + n,
            "channel": "sms",
            "external_id": f"m{first_id + n}",
            "contact_id": None,
            "sender": "+4930555716000",
            "recipient": f"+4915100000{n:03d}",
            "body": f"Hallo Nr. {n}, Grüße € 5",
            "attachments": [{"name": f"file{n}.pdf", "size": n}] if n % 2 else [],
        }
        for n in range(5)
    ]


def stored(session: Session, ids: list[int]) -> list[tuple[Any, ...]]:
    """As the database holds them (no type converts what is read back), every column but
    those the two writes differ in by design (ids, the default's clock)."""
    differ = {"id", "external_id", "created_at"}
    columns = ", ".join(c.name for c in EVENTS.c if c.key not in differ)
    listed = ", ".join(str(int(i)) for i in ids)
    found = session.execute(
        text(f"SELECT {columns} FROM timeline_events WHERE id IN ({listed}) ORDER BY id")
    )
    return [tuple(row) for row in found]


async def test_rows_are_stored_as_sqlalchemys_own_executemany_stores_them(db: Database) -> None:
    ours, theirs = rows(100), rows(200)
    occurred = NOW - timedelta(minutes=3)

    def write(session: Session) -> None:
        bulk.execute_many(session, NEW_EVENT, ours, {"occurred_at": occurred})
        session.execute(NEW_EVENT, [row | {"occurred_at": occurred} for row in theirs])

    await db.run(write)

    def both(session: Session) -> tuple[list[Any], list[Any]]:
        return stored(session, [r["id"] for r in ours]), stored(session, [r["id"] for r in theirs])

    mine, reference = await db.read(both)
    assert len(mine) == len(reference) == 5
    assert mine == reference


async def test_shared_values_and_row_values_go_to_their_own_rows(db: Database) -> None:
    written = rows(300)

    def write(session: Session) -> None:
        bulk.execute_many(session, NEW_EVENT, written, {"occurred_at": NOW})
        bulk.execute_many(
            session,
            MARK,
            [
                {"event": 301, "delivery_status": "sent"},
                {"event": 303, "delivery_status": "failed"},
            ],
        )

    await db.run(write)

    def read(session: Session) -> list[Any]:
        query = select(TimelineEvent).where(TimelineEvent.id.in_([r["id"] for r in written]))
        return list(session.execute(query.order_by(TimelineEvent.id)).scalars())

    events = await db.read(read)
    assert [e.external_id for e in events] == [f"m{n}" for n in range(300, 305)]
    assert [e.attachments for e in events] == [r["attachments"] for r in written]
    assert {e.occurred_at for e in events} == {NOW}
    assert [e.kind for e in events] == ["message"] * 5  # written into the statement
    assert all(e.created_at is not None for e in events)  # the column's default
    assert [e.delivery_status for e in events] == [None, "sent", None, "failed", None]


async def test_no_rows_write_nothing(db: Database) -> None:
    await db.run(bulk.execute_many, NEW_EVENT, [])

    def count(session: Session) -> int:
        return len(session.execute(select(EVENTS.c.id)).all())

    assert await db.read(count) == 0


async def test_a_default_worked_out_when_inserting_is_worked_out_for_each_batch(
    db: Database,
) -> None:
    """`created_at` (default `utcnow`): the same within a batch, later for a later batch."""
    first, second = rows(400), rows(500)
    await db.run(bulk.execute_many, NEW_EVENT, first, {"occurred_at": NOW})
    await db.run(bulk.execute_many, NEW_EVENT, second, {"occurred_at": NOW})

    def created(session: Session, batch: list[dict[str, Any]]) -> set[datetime]:
        ids = [r["id"] for r in batch]
        return set(
            session.execute(select(EVENTS.c.created_at).where(EVENTS.c.id.in_(ids))).scalars()
        )

    [earlier], [later] = await db.read(created, first), await db.read(created, second)
    assert earlier < later
