"""Room that comes free is used at once, on both databases: an agent whose offer is
rejected, times out or is withdrawn (the ticket closed, or the agent away and back) takes
the next waiting ticket in the same step, never the one it declined. Without this, tickets
would sit waiting beside agents with room until some ticket is resolved (issue 6: no
customer forgotten in a queue)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.agents import NewAgent, create_agent
from gateway.routing_api import change_ticket
from routing import assignment
from routing.assignment import Routed, RouteRequest
from routing.capacity import Capacity
from routing.config import RoutingConfig
from routing.queues import QueueConfig
from timeline import store
from timeline.db import Database
from timeline.models import Offer, OfferStatus, Presence, Ticket, utcnow

CONFIG = RoutingConfig(
    {
        "default": QueueConfig.parse(
            {"name": "default", "offer_timeout_seconds": 30, "misses_before_away": 5}
        )
    }
)


@dataclass(frozen=True)
class Floor:
    """Anna and Bernd (room for one each) hold an offer each; one more ticket waits."""

    anna: int
    bernd: int
    annas_offer: int
    annas_ticket: int
    bernds_ticket: int
    left_waiting: int
    now: datetime


def _floor(session: Session) -> Floor:
    now = utcnow()
    agents = []
    for name in ("anna", "bernd"):
        new = NewAgent(name=name, email=f"{name}@example.com", password="long enough",
                       capacity=Capacity(total=1))  # fmt: skip
        agent, _ = create_agent(session, new)
        agent.presence = Presence.AVAILABLE
        agents.append(agent.id)
    since = [now - timedelta(seconds=30 - i) for i in range(3)]  # oldest first
    rows = [{"channel": "sms", "queue": "default", "waiting_since": s} for s in since]
    tickets = store.insert_rows(session, Ticket, rows)
    requests = [RouteRequest(t, "sms", "default", waiting_since=s)
                for t, s in zip(tickets, since, strict=True)]  # fmt: skip
    routed = assignment.route(session, CONFIG, requests, now)
    offered = {o.agent_id: o for o in routed.offers}
    assert set(offered) == set(agents), "the two oldest tickets are offered, one each"
    (left,) = set(tickets) - {o.ticket_id for o in routed.offers}
    anna, bernd = offered[agents[0]], offered[agents[1]]
    return Floor(agents[0], agents[1], anna.id, anna.ticket_id, bernd.ticket_id, left, now)


def _pending(session: Session) -> set[tuple[int, int]]:
    query = select(Offer.ticket_id, Offer.agent_id).where(Offer.status == OfferStatus.PENDING)
    return {(ticket, agent) for ticket, agent in session.execute(query)}


async def _after(db: Database, step: Callable[[Session, Floor], Routed]) -> tuple[Floor, Routed]:
    floor = await db.run(_floor)
    routed = await db.run(step, floor)
    return floor, routed


async def _anna_gets_the_other_ticket(
    db: Database, step: Callable[[Session, Floor], Routed]
) -> None:
    """`step` frees Anna's room; she is offered the ticket left waiting, and the one she had
    waits (Bernd is full; she declined it or it is closed)."""
    floor, routed = await _after(db, step)
    assert [(o.ticket_id, o.agent_id) for o in routed.offers] == [(floor.left_waiting, floor.anna)]
    assert await db.read(_pending) == {
        (floor.left_waiting, floor.anna),
        (floor.bernds_ticket, floor.bernd),
    }


async def test_an_agent_who_rejects_an_offer_is_offered_the_next_waiting_ticket(
    db: Database,
) -> None:
    def reject(session: Session, floor: Floor) -> Routed:
        return assignment.reject(session, CONFIG, floor.annas_offer, floor.anna, floor.now)

    await _anna_gets_the_other_ticket(db, reject)


async def test_an_agent_whose_offer_times_out_is_offered_the_next_waiting_ticket(
    db: Database,
) -> None:
    def expire(session: Session, floor: Floor) -> Routed:
        return assignment.expire(session, CONFIG, floor.annas_offer, floor.now)

    await _anna_gets_the_other_ticket(db, expire)


async def test_an_agent_whose_offered_ticket_is_resolved_is_offered_the_next(db: Database) -> None:
    def resolve(session: Session, floor: Floor) -> Routed:
        news = change_ticket(session, CONFIG, floor.annas_ticket, {"status": "resolved"}, floor.now)
        offered = {m["id"] for m in news.offers}
        return Routed(offers=[o for o in assignment.pending_offers(session, floor.anna)
                              if o.id in offered])  # fmt: skip

    await _anna_gets_the_other_ticket(db, resolve)


async def test_an_agent_away_and_back_is_offered_the_oldest_waiting_ticket(db: Database) -> None:
    def away_and_back(session: Session, floor: Floor) -> Routed:
        away = assignment.set_presence(session, CONFIG, floor.anna, Presence.AWAY, floor.now)
        assert away.offers == [], "bernd is full: her ticket waits"
        return assignment.set_presence(session, CONFIG, floor.anna, Presence.AVAILABLE, floor.now)

    floor, routed = await _after(db, away_and_back)
    assert [(o.ticket_id, o.agent_id) for o in routed.offers] == [(floor.annas_ticket, floor.anna)]
    assert await db.read(_pending) == {
        (floor.annas_ticket, floor.anna),
        (floor.bernds_ticket, floor.bernd),
    }


async def test_an_agent_whose_offer_times_out_too_often_goes_away_and_takes_nothing(
    db: Database,
) -> None:
    strict = RoutingConfig(
        {"default": QueueConfig.parse({"name": "default", "misses_before_away": 1})}
    )

    def expire(session: Session, floor: Floor) -> Routed:
        return assignment.expire(session, strict, floor.annas_offer, floor.now)

    floor, routed = await _after(db, expire)
    assert routed.offers == [] and routed.presence == {floor.anna: Presence.AWAY}
    assert not any(a == floor.anna for _, a in await db.read(_pending))
