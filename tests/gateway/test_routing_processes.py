"""Two `switchboard serve` processes on one PostgreSQL and one Redis route as one, and losing
one of them mid-run loses nothing.

1,000 concurrent inbounds from 300 senders go to both processes; 20 agents hold their
consoles on either, accept or reject each offer at random and resolve what they take. Half
way through, one process is killed (SIGKILL): its callers retry on the other (the same
external id, so a retry of something already stored is a no-op), its agents reconnect there.
Throughout and afterwards: no agent over capacity, at most one pending offer per ticket;
afterwards: every inbound stored, every ticket either taken or waiting in its queue, every
offer made to a connected agent received by it, the counters equal to the offers settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from gateway.agents import NewAgent, create_agent
from routing.capacity import Capacity
from tests.helpers import empty_postgres
from tests.processes import GatewayProcess
from timeline.db import Database, session_factory
from timeline.models import (
    OPEN_STATUSES,
    Offer,
    OfferStatus,
    QueueDay,
    Ticket,
    TimelineEvent,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300)]

INBOUNDS = 1000
SENDERS = 300
AGENTS = 20
CAPACITY = 3
ROUTING = """
[[queues]]
name = "sales"
offer_timeout_seconds = 2
misses_before_away = 1000
strategy = "round_robin"

[[rules]]
name = "texts"
queue = "sales"
when = { channel = "sms" }
"""


class Console:
    """An agent at its console: accepts most offers, rejects some, resolves what it takes;
    reconnects to the surviving gateway when its own dies."""

    def __init__(self, agent: dict[str, Any], gateways: list[GatewayProcess], home: int, seed: int):
        self.agent = agent
        self.gateways = gateways
        self.home = home
        self.random = random.Random(seed)
        self.received: set[int] = set()
        self.disconnected = False
        self.connected = asyncio.Event()
        self._resolving: set[asyncio.Task[None]] = set()

    async def run(self, http: aiohttp.ClientSession) -> None:
        while True:
            gateway = self.gateways[self.home]
            if not gateway.alive:
                # Both dead (someone else killed ours too) must fail the test, not spin here.
                assert self.gateways[0].alive, "the surviving gateway died"
                self.home, self.disconnected = 0, True
                continue
            with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                await self._session(http, gateway)
            await asyncio.sleep(0.05)

    async def _session(self, http: aiohttp.ClientSession, gateway: GatewayProcess) -> None:
        url = f"{gateway.url}/ws/agent?token={self.agent['token']}"
        async with http.ws_connect(url) as ws:
            await ws.send_json({"type": "presence", "state": "available"})
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                data = message.json()
                if data["type"] == "presence":
                    self.connected.set()
                elif data["type"] == "offer":
                    self.received.add(data["id"])
                    verdict = "accept" if self.random.random() < 0.8 else "reject"
                    await ws.send_json({"type": verdict, "id": data["id"]})
                elif data["type"] == "offer_accepted":
                    resolving = asyncio.create_task(self._resolve(http, gateway, data["ticket_id"]))
                    self._resolving.add(resolving)
                    resolving.add_done_callback(self._resolving.discard)

    async def _resolve(
        self, http: aiohttp.ClientSession, gateway: GatewayProcess, ticket: int
    ) -> None:
        await asyncio.sleep(self.random.random() * 0.05)
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            async with http.patch(
                f"{gateway.url}/api/v1/tickets/{ticket}",
                json={"status": "resolved"},
                headers={"Authorization": f"Bearer {self.agent['token']}"},
            ):
                pass


async def _agents(database: Database) -> list[dict[str, Any]]:
    made = []
    for n in range(AGENTS):
        new = NewAgent(
            name=f"Agent {n}",
            email=f"agent{n}@example.com",
            password="long enough",
            capacity=Capacity(total=CAPACITY),
        )
        agent, token = await database.run(create_agent, new)
        made.append({"id": agent.id, "token": token})
    return made


def _violations(session: Any) -> list[str]:
    """Agents over capacity, tickets with two owners, open tickets nobody holds nor queues."""
    load: Counter[int] = Counter()
    for agent_id, n in session.execute(
        select(Ticket.assignee_id, func.count())
        .where(Ticket.assignee_id.is_not(None), Ticket.status.in_(OPEN_STATUSES))
        .group_by(Ticket.assignee_id)
    ):
        load[agent_id] += n
    pending: Counter[int] = Counter()
    for agent_id, ticket_id in session.execute(
        select(Offer.agent_id, Offer.ticket_id).where(Offer.status == OfferStatus.PENDING)
    ):
        load[agent_id] += 1
        pending[ticket_id] += 1
    problems = [f"agent {a} holds {n}" for a, n in load.items() if n > CAPACITY]
    problems += [f"ticket {t} offered {n} times" for t, n in pending.items() if n > 1]
    for ticket in session.execute(select(Ticket)).scalars():
        if ticket.assignee_id is not None and pending[ticket.id]:
            problems.append(f"ticket {ticket.id} held and offered")
        unheld = ticket.status in OPEN_STATUSES and ticket.assignee_id is None
        if unheld and (ticket.waiting_since is None or ticket.queue != "sales"):
            problems.append(f"ticket {ticket.id} forgotten")
    return problems


async def test_two_processes_route_as_one_and_a_killed_one_loses_nothing(
    postgres_database: str, redis_url: str, tmp_path: Path
) -> None:
    await empty_postgres(postgres_database)
    routing = tmp_path / "routing.toml"
    routing.write_text(ROUTING, encoding="utf-8")
    env = {
        **os.environ,
        "SWITCHBOARD_DATABASE_URL": postgres_database,
        "SWITCHBOARD_REDIS_URL": redis_url,
        "SWITCHBOARD_ROUTING_FILE": str(routing),
        "SWITCHBOARD_LOG_LEVEL": "WARNING",
    }
    gateways = [GatewayProcess(env, tmp_path / f"gateway-{n}.log") for n in range(2)]
    database = Database(postgres_database)
    samples: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:
            for gateway in gateways:
                await gateway.ready(http)
            team = await _agents(database)
            consoles = [Console(a, gateways, n % 2, seed=n) for n, a in enumerate(team)]
            desks = [asyncio.create_task(c.run(http)) for c in consoles]
            for console in consoles:
                await asyncio.wait_for(console.connected.wait(), 30)

            watching = asyncio.create_task(_watch(database, samples))
            stored = await _send_all(http, gateways, team[0]["token"])
            await _settle(database)
            watching.cancel()
            for desk in desks:
                desk.cancel()
            await asyncio.gather(watching, *desks, return_exceptions=True)

        async with database.reading() as session:
            final = await session.run_sync(_violations)
            events = set((await session.execute(select(TimelineEvent.external_id))).scalars().all())
            offers = list((await session.execute(select(Offer))).scalars())
            (day,) = (await session.execute(select(QueueDay))).scalars().all()
    finally:
        for gateway in gateways:
            gateway.stop()
        await database.dispose()

    assert samples == [] and final == []
    assert stored == {f"m-{i}" for i in range(INBOUNDS)}, "every inbound answered 202"
    assert stored <= events, "nothing answered 202 was lost"
    by_agent: dict[int, set[int]] = defaultdict(set)
    for offer in offers:
        by_agent[offer.agent_id].add(offer.id)
    for console in consoles:
        if not console.disconnected:  # its console was connected throughout
            assert by_agent[console.agent["id"]] <= console.received, "every offer arrived"
    accepted = sum(1 for o in offers if o.status == OfferStatus.ACCEPTED)
    assert day.answered == accepted and day.abandoned == 0
    assert accepted > 0 and any(o.status == OfferStatus.REJECTED for o in offers)


async def _send_all(
    http: aiohttp.ClientSession, gateways: list[GatewayProcess], token: str
) -> set[str]:
    """All inbounds, concurrently, alternating between the gateways; kill the second half way."""
    stored: set[str] = set()
    gate = asyncio.Semaphore(64)
    sent = 0

    async def send(i: int) -> None:
        nonlocal sent
        payload = {
            "channel": "sms",
            "from": f"+4917{i % SENDERS:08d}",
            "to": "+4930123456",
            "external_id": f"m-{i}",
            "body": f"message {i}",
        }
        async with gate:
            for attempt in range(50):
                gateway = gateways[(i + attempt) % 2]
                if not gateway.alive:
                    continue
                with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                    async with http.post(
                        f"{gateway.url}/api/v1/inbound",
                        json=payload,
                        headers={"Authorization": f"Bearer {token}"},
                    ) as response:
                        if response.status == 202:
                            stored.add(payload["external_id"])
                            break
                await asyncio.sleep(0.05)
            sent += 1
            if sent == INBOUNDS // 2:
                gateways[1].kill()

    await asyncio.gather(*(send(i) for i in range(INBOUNDS)))
    return stored


async def _watch(database: Database, samples: list[str]) -> None:
    """The invariants, checked from outside while everything runs, each time on one snapshot
    of the database (REPEATABLE READ), so the queries agree with each other."""
    snapshots = session_factory(
        database.engine.execution_options(isolation_level="REPEATABLE READ")
    )
    while True:
        async with snapshots() as session, session.begin():
            samples.extend(await session.run_sync(_violations))
        await asyncio.sleep(0.2)


async def _settle(database: Database) -> None:
    """Until nothing waits any more (or only what every agent declined)."""
    for _ in range(600):
        async with database.reading() as session:
            waiting = (
                await session.execute(select(func.count()).where(Ticket.waiting_since.is_not(None)))
            ).scalar_one()
            pending = (
                await session.execute(
                    select(func.count()).where(Offer.status == OfferStatus.PENDING)
                )
            ).scalar_one()
        if waiting == 0 and pending == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{waiting} tickets still waiting")
