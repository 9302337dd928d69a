"""The wallboard's history: one sample per queue and minute, shared by every process.

The app's own sampler writes the current minute; these tests sample minutes in the past, so
the two never meet.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.keys import DATABASE
from gateway.wallboard import take_sample
from tests.helpers import Agents, bearer, inbound
from timeline.models import QueueSample, Role, utcnow


async def test_a_sample_per_queue_and_minute_whoever_takes_it(
    client: TestClient, agents: Agents
) -> None:
    boss = await agents.add("Sam Supervisor", role=Role.SUPERVISOR)
    for n in range(3):
        await client.post("/api/v1/inbound", json=inbound(f"w{n}", sender=f"+4917{n:08d}"),
                          headers=bearer(boss))  # fmt: skip
    database = client.server.app[DATABASE]
    then = utcnow().replace(second=10, microsecond=0) - timedelta(minutes=30)

    first = await database.run(take_sample, then)
    second = await database.run(take_sample, then + timedelta(seconds=20))  # another process
    later = await database.run(take_sample, then + timedelta(minutes=1))
    response = await client.get("/api/v1/queue-history?hours=1", headers=bearer(boss))

    assert (first, second, later) == (1, 0, 1)
    history = (await response.json())["queues"]["default"]
    ours = [s for s in history if s["at"] <= (then + timedelta(minutes=1)).isoformat()]
    assert [sample["waiting"] for sample in ours] == [3, 3]
    assert ours[0]["at"] == then.replace(second=0).isoformat()


async def test_samples_older_than_two_days_are_dropped(client: TestClient, agents: Agents) -> None:
    boss = await agents.add("Sam Supervisor", role=Role.SUPERVISOR)
    await client.post("/api/v1/inbound", json=inbound("w"), headers=bearer(boss))
    database = client.server.app[DATABASE]
    now = utcnow()

    ancient, recent = now - timedelta(days=3), now - timedelta(minutes=10)
    await database.run(take_sample, ancient)
    await database.run(take_sample, recent)
    async with database.reading() as session:
        kept = (await session.execute(select(QueueSample.at))).scalars().all()

    assert ancient.replace(second=0, microsecond=0) not in kept
    assert recent.replace(second=0, microsecond=0) in kept


async def test_only_supervisors_read_the_history(client: TestClient, agents: Agents) -> None:
    anna = await agents.add("Anna")

    response = await client.get("/api/v1/queue-history", headers=bearer(anna))

    assert response.status == 403
