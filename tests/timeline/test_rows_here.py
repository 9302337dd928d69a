"""`Database.rows_here`: one SELECT's rows as plain tuples, on SQLite on the loop thread's own
connection in autocommit. Both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from timeline.db import Database
from timeline.models import Agent

_NAMED = select(Agent.id, Agent.name).where(Agent.name == bindparam("name")).order_by(Agent.id)
_HOW_MANY = select(func.count(Agent.id))


def _add(session: Session, name: str) -> None:
    session.add(Agent(name=name, email=f"{name}@example.com", password_hash="x"))


async def test_it_gives_the_rows_and_sees_each_commit(db: Database) -> None:
    assert await db.rows_here(_HOW_MANY, {}) == [(0,)]
    await db.run(_add, "anna")
    await db.run(_add, "bernd")

    assert await db.rows_here(_HOW_MANY, {}) == [(2,)], "no snapshot kept from before"
    rows = await db.rows_here(_NAMED, {"name": "bernd"})
    assert [name for _, name in rows] == ["bernd"]
    assert await db.rows_here(_NAMED, {"name": "nobody"}) == []


async def test_it_takes_no_expanding_parameters_on_sqlite(tmp_path: Path) -> None:
    # On PostgreSQL the async engine expands them as in any read: SQLite's own connection only.
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'switchboard.db'}")
    await db.upgrade()
    try:
        expanding = select(Agent.id).where(Agent.name.in_(bindparam("names", expanding=True)))
        with pytest.raises(ValueError):
            await db.rows_here(expanding, {"names": ["anna"]})
    finally:
        await db.dispose()
