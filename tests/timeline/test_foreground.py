"""`Database.foreground`: while the event loop's latency-critical work holds it, the SQLite
writer thread waits before its next statement; readers never wait for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from timeline import db as timeline_db
from timeline.db import Database


@pytest.fixture
async def sqlite_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Database]:
    # Long enough that a writer let through by the time limit, not by the release, shows.
    monkeypatch.setattr(timeline_db, "FOREGROUND_MAX_WAIT_SECONDS", 60.0)
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'switchboard.db'}")
    await database.upgrade()
    yield database
    await database.dispose()


def _count(session: Session) -> int:
    return int(session.execute(text("SELECT count(*) FROM agents")).scalar_one())


async def test_the_writer_waits_while_the_foreground_is_held_and_goes_on_after(
    sqlite_db: Database,
) -> None:
    release = sqlite_db.foreground.hold()
    writing = asyncio.create_task(sqlite_db.run(_count))
    await asyncio.sleep(0.3)
    assert not writing.done(), "the writer waits at its first statement"

    release()
    assert await asyncio.wait_for(writing, timeout=10) == 0


async def test_it_is_held_until_every_holder_let_go_each_once(sqlite_db: Database) -> None:
    foreground = sqlite_db.foreground
    first, second = foreground.hold(), foreground.hold()
    first()
    first()  # again: changes nothing
    assert foreground.held
    second()
    assert not foreground.held
    assert await asyncio.wait_for(sqlite_db.run(_count), timeout=10) == 0


async def test_readers_do_not_wait_for_it(sqlite_db: Database) -> None:
    release = sqlite_db.foreground.hold()
    try:
        assert await asyncio.wait_for(sqlite_db.read_here(_count), timeout=10) == 0
        assert await asyncio.wait_for(sqlite_db.read(_count), timeout=10) == 0
    finally:
        release()
