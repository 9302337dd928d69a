"""On PostgreSQL a new ticket entering an open queue is entered, chosen for and offered in one
statement (`enter_and_route`); the choice there is made in SQL. It must be the very choice
the general way makes (`enqueue`, then `route` with `choose_agent` in Python) in every
centre: capacities in total and per channel, loads of open tickets and pending offers,
skills and levels, declines, the sticky agent, each strategy and its ties."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from routing.assignment import Routed, RouteRequest, enqueue, enter_and_route, route
from routing.config import RoutingConfig
from routing.queues import QueueConfig, Strategy
from timeline import store
from timeline.db import Database
from timeline.models import Agent, AgentSkill, Contact, Offer, OfferStatus, Ticket, utcnow

pytestmark = pytest.mark.postgres

CHANNELS = ("sms", "email", "voice")
CAPACITIES: tuple[dict[str, Any], ...] = (
    {},
    {"total": None, "channels": {}},
    {"total": 0},
    {"total": 1},
    {"total": 2},
    {"total": 4},
    {"channels": {"sms": 1, "email": 3}},
    {"channels": {"voice": 1}},
    {"total": 3, "channels": {"sms": 1}},
    {"total": 2, "channels": {"email": 2, "voice": 1}},
)
CENTRES = 400


@dataclass
class _AgentPlan:
    capacity: dict[str, Any]
    available: bool
    skill_level: int  # 0: without the skill
    idle_minutes: int
    assigned_minutes: int | None
    offered_minutes: int | None
    holding: list[str]  # channels of its open tickets
    resolved: list[str]  # channels of tickets it closed: no load
    offered: list[str]  # channels of its pending offers


@dataclass
class _Centre:
    strategy: Strategy
    asked_level: int  # 0: the queue asks no skill
    sticky_seconds: int
    channel: str
    agents: list[_AgentPlan]
    declined: set[int] = field(default_factory=set)  # agent indexes
    last_agent: int | None = None
    last_minutes: int = 0
    preferred: int | None = None
    offered_already: bool = False  # the ticket has a pending offer: not placeable

    def config(self) -> RoutingConfig:
        queue = QueueConfig.parse(
            {"name": "q", "skills": {"s": self.asked_level} if self.asked_level else {},
             "offer_timeout_seconds": 30, "strategy": self.strategy.value,
             "sticky_seconds": self.sticky_seconds}
        )  # fmt: skip
        return RoutingConfig({"q": queue})


def _random_centre(rng: random.Random) -> _Centre:
    few = [0, 0, 1, 2, 5]  # minutes: ties are common, and broken by the agent's id
    agents = [
        _AgentPlan(
            capacity=rng.choice(CAPACITIES),
            available=rng.random() < 0.85,
            skill_level=rng.choice([0, 1, 2, 3]),
            idle_minutes=rng.choice(few),
            assigned_minutes=rng.choice([None, *few]),
            offered_minutes=rng.choice([None, *few]),
            holding=rng.choices(CHANNELS, k=rng.choice([0, 0, 1, 2])),
            resolved=rng.choices(CHANNELS, k=rng.choice([0, 1])),
            offered=rng.choices(CHANNELS, k=rng.choice([0, 0, 1, 2])),
        )
        for _ in range(rng.randint(1, 8))
    ]
    indexes = range(len(agents))
    return _Centre(
        strategy=rng.choice(list(Strategy)),
        asked_level=rng.choice([0, 1, 2]),
        sticky_seconds=rng.choice([0, 600]),
        channel=rng.choice(CHANNELS),
        agents=agents,
        declined={i for i in indexes if rng.random() < 0.2},
        last_agent=rng.choice([None, *indexes]),
        last_minutes=rng.choice([0, 1, 30]),  # 0: at the very moment of routing
        preferred=rng.choice([None, None, None, *indexes]),
        offered_already=rng.random() < 0.05,
    )


def _set_up(session: Session, centre: _Centre, now: datetime) -> RouteRequest:
    """The centre's agents, their load and history, and the new ticket; its request."""
    minutes = lambda n: None if n is None else now - timedelta(minutes=n)  # noqa: E731
    agent_ids = store.insert_rows(
        session,
        Agent,
        [
            {"name": f"Agent {i}", "email": f"agent{i}@example.com", "password_hash": "-",
             "capacity": plan.capacity, "presence": "available" if plan.available else "away",
             "presence_since": minutes(plan.idle_minutes),
             "last_assigned_at": minutes(plan.assigned_minutes),
             "last_offered_at": minutes(plan.offered_minutes)}
            for i, plan in enumerate(centre.agents)
        ],
    )  # fmt: skip
    skills = [
        {"agent_id": agent_id, "skill": "s", "level": plan.skill_level}
        for agent_id, plan in zip(agent_ids, centre.agents, strict=True)
        if plan.skill_level
    ]
    if skills:
        session.execute(insert(AgentSkill), skills)
    (contact,) = store.insert_rows(session, Contact, [{"name": "Customer"}])
    for agent_id, plan in zip(agent_ids, centre.agents, strict=True):
        _load(session, agent_id, plan, now)
    if centre.last_agent is not None:
        at = now - timedelta(minutes=centre.last_minutes)
        history = {"contact_id": contact, "channel": "sms", "status": "resolved",
                   "assignee_id": agent_ids[centre.last_agent], "assigned_at": at}  # fmt: skip
        store.insert_rows(session, Ticket, [history])
    (ticket,) = store.insert_rows(
        session, Ticket, [{"contact_id": contact, "channel": centre.channel}]
    )
    declined = [agent_ids[i] for i in sorted(centre.declined)]
    _offers(session, [(ticket, agent_id, OfferStatus.REJECTED) for agent_id in declined], now)
    if centre.offered_already:
        _offers(session, [(ticket, agent_ids[-1], OfferStatus.PENDING)], now)
    preferred = agent_ids[centre.preferred] if centre.preferred is not None else None
    return RouteRequest(ticket, centre.channel, "q", contact, preferred=preferred)


def _load(session: Session, agent_id: int, plan: _AgentPlan, now: datetime) -> None:
    held = [{"channel": c, "assignee_id": agent_id, "status": "open"} for c in plan.holding]
    done = [{"channel": c, "assignee_id": agent_id, "status": "resolved"} for c in plan.resolved]
    store.insert_rows(session, Ticket, held + done)
    waiting = store.insert_rows(session, Ticket, [{"channel": c} for c in plan.offered])
    pending = [(ticket, agent_id, OfferStatus.PENDING) for ticket in waiting]
    _offers(session, pending, now, channels=plan.offered)


def _offers(
    session: Session,
    offers: list[tuple[int, int, OfferStatus]],
    now: datetime,
    channels: list[str] | None = None,
) -> None:
    rows = [
        {"ticket_id": ticket, "agent_id": agent_id, "queue": "q",
         "channel": channels[n] if channels else "sms", "status": status, "created_at": now,
         "expires_at": now + timedelta(minutes=1),
         "decided_at": None if status == OfferStatus.PENDING else now}
        for n, (ticket, agent_id, status) in enumerate(offers)
    ]  # fmt: skip
    store.insert_rows(session, Offer, rows)


def _offered_to(routed: Routed) -> int | None:
    assert not routed.assigned, "the queue offers"
    assert len(routed.offers) <= 1
    return routed.offers[0].agent_id if routed.offers else None


def _both_ways(session: Session, centre: _Centre) -> tuple[int | None, int | None]:
    """(whom the general way offers the ticket, whom the one statement offers it), each on
    the same centre: the first is rolled back before the second; the centre is, after."""
    config, now = centre.config(), utcnow()
    centre_made = session.begin_nested()
    try:
        request = _set_up(session, centre, now)
        general = session.begin_nested()
        expected = _offered_to(
            route(session, config, enqueue(session, config, [request], now), now)
        )
        general.rollback()
        return expected, _offered_to(enter_and_route(session, config, [request], now))
    finally:
        centre_made.rollback()


async def test_the_one_statement_offers_the_ticket_to_whom_the_general_way_would(
    pg: Database,
) -> None:
    rng = random.Random(2026)
    outcomes = []
    for n in range(CENTRES):
        centre = _random_centre(rng)
        expected, chosen = await pg.run(_both_ways, centre)
        assert chosen == expected, f"centre {n}: {centre}"
        outcomes.append(expected)
    placed = sum(agent is not None for agent in outcomes)
    assert 0.3 * CENTRES < placed < 0.9 * CENTRES, "centres where someone has room, and not"


async def test_an_agent_given_work_while_the_statement_ran_is_not_overfilled(
    pg: Database, postgres_database: str
) -> None:
    """Anna, idle the longest, is chosen from the statement's snapshot; before she is
    claimed, another transaction offers her the one ticket she has room for. The claim finds
    her row changed, and the ticket goes the general way from a fresh read: to Bernd."""
    centre = _Centre(
        Strategy.LONGEST_IDLE, 0, 0, "sms",
        [_plan(idle_minutes=60), _plan(idle_minutes=30)],
    )  # fmt: skip
    config, now = centre.config(), utcnow()
    request = await pg.run(_set_up, centre, now)
    anna, bernd = await pg.read(lambda s: list(s.scalars(select(Agent.id).order_by(Agent.id))))
    other = await asyncpg.connect(postgres_database.replace("+asyncpg", ""))
    try:
        async with other.transaction():
            (ticket,) = await pg.run(lambda s: store.insert_rows(s, Ticket, [{"channel": "sms"}]))
            await other.execute(
                "INSERT INTO offers (ticket_id, agent_id, queue, channel, status, created_at, "
                "expires_at) VALUES ($1, $2, 'q', 'sms', 'pending', now(), now())",
                ticket, anna,
            )  # fmt: skip
            await other.execute("UPDATE agents SET last_offered_at = now() WHERE id = $1", anna)
            placing = asyncio.create_task(pg.run(enter_and_route, config, [request], now))
            await _waiting_for_a_lock(other)
        routed = await placing
    finally:
        await other.close()

    assert _offered_to(routed) == bernd
    pending = await pg.read(
        lambda s: s.execute(select(Offer.agent_id).where(Offer.status == "pending")).all()
    )
    assert sorted(agent for (agent,) in pending) == [anna, bernd], "one each"


def _plan(idle_minutes: int) -> _AgentPlan:
    return _AgentPlan({"total": 1}, True, 0, idle_minutes, None, None, [], [], [])


async def _waiting_for_a_lock(connection: asyncpg.Connection) -> None:
    for _ in range(500):
        waiting = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the statement never waited for the agent's row")
