"""Segment filters against a hand-built set of contacts, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.orm import Session

from routing import segments
from routing.segments import InvalidFilter
from timeline import messaging, store
from timeline.db import Database
from timeline.models import Contact, Ticket, TimelineEvent

JANUARY = datetime(2026, 1, 15, tzinfo=UTC)
JUNE = datetime(2026, 6, 15, tzinfo=UTC)

# name: (identities, tags, attributes, tickets, last contact)
PEOPLE: dict[str, tuple[list[tuple[str, str]], list[str], dict[str, Any], int, datetime | None]] = {
    "anna": ([("phone", "+4930555716001")], ["VIP", "spring"], {"abc_class": "A"}, 2, JUNE),
    "bert": ([("phone", "+12135550123")], ["spring"], {"abc_class": "B"}, 0, JANUARY),
    "carla": ([("email", "carla@example.com")], ["autumn"], {"abc_class": "A"}, 1, None),
    "dora": (
        [("phone", "+4989555716002"), ("telegram", "4711")],
        ["spring", "autumn"],
        {"abc_class": "C", "consent": "opted_in"},
        5,
        JUNE,
    ),
    "emil": ([("phone", "+4930555716003")], [], {"consent": "opted_in"}, 0, None),
}


def _build(session: Session) -> dict[str, int]:
    ids = {}
    for name, (identities, tags, attributes, tickets, last) in PEOPLE.items():
        contact = store.create_contact(
            session, name=name, identities=identities, tags=tags, attributes=attributes
        )
        ids[name] = contact.id
        for _ in range(tickets):
            store.insert_rows(session, Ticket, [{"channel": "sms", "contact_id": contact.id}])
        if last is not None:
            session.add(_event(contact.id, last))
    messaging.set_opt_out(session, "phone", "+4930555716003", "STOP", JANUARY)
    session.flush()
    return ids


def _event(contact_id: int, at: datetime) -> TimelineEvent:
    return TimelineEvent(
        channel="sms",
        external_id=f"e-{contact_id}",
        kind="message",
        direction="in",
        contact_id=contact_id,
        sender="x",
        recipient="y",
        occurred_at=at,
    )


@pytest.fixture
async def people(database_url: str) -> AsyncIterator[tuple[Database, dict[int, str]]]:
    database = Database(database_url)
    await database.upgrade()
    ids = await database.run(_build)
    yield database, {v: k for k, v in ids.items()}
    await database.dispose()


def _names(session: Session, raw: dict[str, Any], names: dict[int, str]) -> set[str]:
    audience = segments.parse_filter(raw)
    members, after = segments.page(session, audience, 0, 100)
    assert segments.page(session, audience, after or 0, 100)[1] is None
    assert segments.count(session, audience) == len(members)
    # Materialising a campaign takes the same contacts, as ids only.
    assert segments.page_ids(session, audience, 0, 100)[0] == [m.contact_id for m in members]
    return {names[m.contact_id] for m in members}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, {"anna", "bert", "carla", "dora", "emil"}),
        ({"tags_any": ["spring", "autumn"]}, {"anna", "bert", "carla", "dora"}),
        ({"tags_all": ["spring", "autumn"]}, {"dora"}),
        ({"vip": True}, {"anna"}),
        ({"vip": False, "tags_any": ["spring"]}, {"bert", "dora"}),
        ({"abc_class": ["A"]}, {"anna", "carla"}),
        ({"attributes": {"abc_class": ["B", "C"]}}, {"bert", "dora"}),
        ({"channel": "email"}, {"carla"}),
        ({"channel": "telegram"}, {"dora"}),
        ({"channel": "sms", "consent": "not_opted_out"}, {"anna", "bert", "dora"}),
        ({"consent": "opted_in"}, {"dora"}),
        ({"last_contact_after": "2026-03-01T00:00:00Z"}, {"anna", "dora"}),
        ({"last_contact_before": "2026-03-01T00:00:00+00:00"}, {"bert", "carla", "emil"}),
        ({"tickets_min": 1, "tickets_max": 2}, {"anna", "carla"}),
        ({"tickets_max": 0}, {"bert", "emil"}),
        ({"countries": ["US"]}, {"bert"}),
        ({"countries": ["DE"], "tags_any": ["spring"]}, {"anna", "dora"}),
        ({"regions": ["Munich"]}, {"dora"}),
        ({"regions": ["berlin"]}, {"anna", "emil"}),
    ],
)
async def test_a_filter_finds_exactly_its_contacts(
    people: tuple[Database, dict[int, str]], raw: dict[str, Any], expected: set[str]
) -> None:
    database, names = people

    found = await database.read(_names, raw, names)

    assert found == expected


async def test_merged_contacts_are_not_in_any_audience(
    people: tuple[Database, dict[int, str]],
) -> None:
    database, names = people
    ids = {v: k for k, v in names.items()}

    def merge(session: Session) -> None:
        loser = session.get(Contact, ids["bert"])
        assert loser is not None
        loser.merged_into_id = ids["anna"]

    await database.run(merge)

    assert await database.read(_names, {"tags_any": ["spring"]}, names) == {"anna", "dora"}


async def test_pages_stream_the_audience_by_contact_id(
    people: tuple[Database, dict[int, str]],
) -> None:
    database, names = people
    audience = segments.parse_filter({"countries": ["DE"]})
    seen: list[str] = []
    after: int | None = 0
    while after is not None:
        members, after = await database.read(segments.page, audience, after, 2)
        seen.extend(names[m.contact_id] for m in members)

    assert seen == ["anna", "dora", "emil"]


@pytest.mark.parametrize(
    "raw",
    [
        {"colour": ["red"]},
        {"tags_any": "spring"},
        {"channel": "fax"},
        {"consent": "maybe"},
        {"vip": "yes"},
        {"last_contact_before": "yesterday"},
        {"last_contact_after": "2026-01-01T00:00:00"},
        {"tickets_min": -1},
        {"attributes": {"abc_class": "A"}},
    ],
)
def test_a_bad_filter_says_why(raw: dict[str, Any]) -> None:
    with pytest.raises(InvalidFilter):
        segments.parse_filter(raw)
