"""The frequency cap's lock on PostgreSQL: a batch that counts recent campaign messages waits
for every batch in flight beside it, and batches that do not count never wait for each other."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from timeline.campaigns import hold_frequency_cap
from timeline.db import Database

pytestmark = pytest.mark.postgres


async def hold(session: AsyncSession, counting: bool, wait_ms: int | None = None) -> None:
    await session.begin()
    if wait_ms is not None:
        await session.execute(text(f"SET LOCAL lock_timeout = '{wait_ms}ms'"))
    await session.run_sync(hold_frequency_cap, counting)


async def test_a_counting_batch_waits_for_the_batches_in_flight_and_they_for_it(
    pg: Database,
) -> None:
    async with pg.sessions() as sending, pg.sessions() as counting, pg.sessions() as later:
        await hold(sending, counting=False)

        with pytest.raises(DBAPIError, match="lock timeout"):
            await hold(counting, counting=True, wait_ms=200)
        await counting.rollback()

        await sending.commit()
        await hold(counting, counting=True, wait_ms=200)
        with pytest.raises(DBAPIError, match="lock timeout"):
            await hold(later, counting=False, wait_ms=200)
        await later.rollback()
        await counting.commit()


async def test_batches_that_do_not_count_go_side_by_side(pg: Database) -> None:
    async with pg.sessions() as first, pg.sessions() as second:
        await hold(first, counting=False)
        await hold(second, counting=False, wait_ms=200)  # no timeout: the lock is shared
        await first.commit()
        await second.commit()
