"""The routing configuration cache (`gateway.dispatch.ConfigCache`): read once however many
ask at once, and never keeps a read that may predate a change it was told of."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest

from gateway.dispatch import ConfigCache
from routing.config import RoutingConfig, save_queue
from routing.queues import QueueConfig
from timeline.db import Database
from timeline.models import utcnow


class HeldReads:
    """The real database, counting the cache's reads; a read's answer can be held back after
    the read itself is done (`hold(n)` for the n-th read, counted from 1)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.reads = 0
        self.done: dict[int, asyncio.Event] = {}
        self._held: dict[int, asyncio.Event] = {}
        self.failing = False

    def hold(self, n: int) -> asyncio.Event:
        self.done[n] = asyncio.Event()
        self._held[n] = asyncio.Event()
        return self._held[n]

    async def read(self, work: Callable[..., Any], *args: Any) -> Any:
        self.reads += 1
        n = self.reads
        if self.failing:
            raise ConnectionError("the database is away")
        found = await self._db.read(work, *args)
        if n in self._held:
            self.done[n].set()
            await self._held[n].wait()
        return found


@pytest.fixture
def reads(db: Database) -> HeldReads:
    return HeldReads(db)


@pytest.fixture
def cache(reads: HeldReads) -> ConfigCache:
    return ConfigCache(cast(Database, reads))


async def add_queue(db: Database, name: str) -> None:
    await db.run(save_queue, QueueConfig.parse({"name": name}), utcnow())


async def test_many_callers_at_once_share_one_read(reads: HeldReads, cache: ConfigCache) -> None:
    configs = await asyncio.gather(*(cache.get() for _ in range(20)))
    assert reads.reads == 1
    assert all(config is configs[0] for config in configs)
    assert await cache.get() is configs[0]  # within the time to live: no read at all
    assert reads.reads == 1


async def test_a_read_begun_before_an_invalidation_is_not_kept(
    db: Database, reads: HeldReads, cache: ConfigCache
) -> None:
    stale_answer = reads.hold(1)
    before = asyncio.create_task(cache.get())
    await reads.done[1].wait()  # read, not yet answered: it cannot know of "vip"

    await add_queue(db, "vip")
    cache.invalidate()
    after = await cache.get()  # a read of its own, answered first
    stale_answer.set()
    stale: RoutingConfig = await before

    assert "vip" not in stale.queues and "vip" in after.queues
    kept = await cache.get()
    assert "vip" in kept.queues
    assert reads.reads == 2


async def test_a_failed_read_is_tried_again_by_the_next_caller(
    db: Database, reads: HeldReads, cache: ConfigCache
) -> None:
    reads.failing = True
    with pytest.raises(ConnectionError):
        await cache.get()
    reads.failing = False
    await add_queue(db, "billing")
    assert "billing" in (await cache.get()).queues
    assert reads.reads == 2


async def test_a_caller_giving_up_does_not_cancel_the_read_of_the_others(
    reads: HeldReads, cache: ConfigCache
) -> None:
    answer = reads.hold(1)
    impatient = asyncio.create_task(cache.get())
    patient = asyncio.create_task(cache.get())
    await reads.done[1].wait()
    impatient.cancel()
    answer.set()
    assert isinstance(await patient, RoutingConfig)
    assert impatient.cancelled()
    assert reads.reads == 1
