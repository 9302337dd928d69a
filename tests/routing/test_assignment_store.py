"""Assignment against the real databases: the guards that no ticket is ever assigned twice
and no agent filled over capacity by a choice made on a stale read."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.agents import NewAgent, create_agent
from routing import assignment
from routing.assignment import DECLINE_MEMORY, Routed, RouteRequest, route
from routing.capacity import Capacity
from routing.config import RoutingConfig
from routing.queues import QueueConfig
from timeline import store
from timeline.db import Database
from timeline.models import (
    Agent,
    Contact,
    Offer,
    OfferStatus,
    Presence,
    RoutingTimer,
    Ticket,
    TimerKind,
    utcnow,
)

OFFERING = RoutingConfig(
    {"default": QueueConfig.parse({"name": "default", "offer_timeout_seconds": 30})}
)


def _agent(session: Session, name: str, capacity: int = 5) -> int:
    agent, _ = create_agent(
        session,
        NewAgent(
            name=name,
            email=f"{name}@example.com",
            password="long enough",
            capacity=Capacity(total=capacity),
        ),
    )
    agent.presence = Presence.AVAILABLE
    return agent.id


def _ticket(session: Session, assignee: int | None) -> int:
    waiting_since = None if assignee else utcnow()
    row = {"channel": "sms", "assignee_id": assignee, "waiting_since": waiting_since}
    (ticket_id,) = store.insert_rows(session, Ticket, [row])
    return ticket_id


async def test_a_ticket_someone_took_meanwhile_is_not_assigned_again(database_url: str) -> None:
    database = Database(database_url)
    await database.upgrade()
    try:
        anna = await database.run(_agent, "anna")
        bernd = await database.run(_agent, "bernd")
        taken = await database.run(_ticket, bernd)
        free = await database.run(_ticket, None)

        requests = [RouteRequest(taken, "sms", "default"), RouteRequest(free, "sms", "default")]
        routed = await database.run(route, RoutingConfig(), requests, utcnow())
        assigned = routed.assigned

        holders = dict(
            await database.read(lambda s: s.execute(select(Ticket.id, Ticket.assignee_id)).all())
        )
        assert holders[taken] == bernd, "the earlier holder keeps it"
        assert assigned == {free: holders[free]}
        assert holders[free] in (anna, bernd)
    finally:
        await database.dispose()


@pytest.mark.parametrize("queue", [RoutingConfig(), OFFERING], ids=["assigned", "offered"])
async def test_an_agent_another_batch_filled_after_the_choice_is_not_overfilled(
    database_url: str, monkeypatch: pytest.MonkeyPatch, queue: RoutingConfig
) -> None:
    """Candidates are read without locks: a choice made on a read from before another batch
    gave the agent its last free place is not carried out (PostgreSQL: the agent's row
    changed since; SQLite: its load counted again), and after choosing again from the same
    stale read the ticket gets a reroute timer instead."""
    database = Database(database_url)
    await database.upgrade()
    try:
        anna = await database.run(_agent, "anna", 1)
        first = await database.run(_ticket, None)
        waiting = await database.run(_ticket, None)
        request = [RouteRequest(waiting, "sms", "default")]
        stale = await database.read(assignment._candidates, queue, request)
        routed = await database.run(route, queue, [RouteRequest(first, "sms", "default")], utcnow())
        assert _placed(routed) == {first: anna}, "another batch gives anna her last place"
        monkeypatch.setattr(assignment, "_candidates", lambda *_: stale)

        routed = await database.run(route, queue, request, utcnow())

        assert _placed(routed) == {}
        timers = await database.read(lambda s: s.execute(select(RoutingTimer)).scalars().all())
        reroutes = [(t.kind, t.subject_id) for t in timers if t.kind == TimerKind.REROUTE]
        assert reroutes == [(TimerKind.REROUTE, waiting)]
        monkeypatch.undo()
        await database.run(_resolve, first)
        routed = await database.run(_sweep, queue)
        assert _placed(routed) == {waiting: anna}, "routed again once the timer fired"
    finally:
        await database.dispose()


def _placed(routed: Routed) -> dict[int, int]:
    return {**routed.assigned, **{o.ticket_id: o.agent_id for o in routed.offers}}


def _resolve(session: Session, ticket_id: int) -> None:
    """Resolved and, if it was offered, the offer withdrawn: either way anna is free again."""
    session.execute(update(Ticket).where(Ticket.id == ticket_id).values(status="resolved"))
    assignment.withdraw_ticket_offers(session, [ticket_id], utcnow())


def _sweep(session: Session, config: RoutingConfig) -> Routed:
    routed = Routed()
    for timer in assignment.claim_due(session, utcnow()):
        if timer.kind == TimerKind.REROUTE:
            routed.merge(assignment.fire(session, config, timer, utcnow()))
    return routed


SALES = RoutingConfig(
    {
        "sales": QueueConfig.parse(
            {
                "name": "sales",
                "offer_timeout_seconds": 30,
                "sticky_seconds": 3600,
                "strategy": "longest_idle",
            }
        )
    }
)


async def test_a_ticket_entering_its_queue_goes_to_the_sticky_agent_and_not_who_declined_it(
    database_url: str,
) -> None:
    """What `enqueue` reads as the ticket enters (PostgreSQL: in the same statement) steers
    the choice as `route`'s own read would: anna, idle the longest, gets a new contact's
    ticket, but bernd the one whose contact he served ten minutes ago and the one anna
    declined in this queue; a ticket already offered is not offered again. A decline older
    than `DECLINE_MEMORY` no longer counts: a ticket every agent once declined is not left
    waiting for ever."""
    database = Database(database_url)
    await database.upgrade()
    try:
        anna, bernd, now = (
            await database.run(_agent, "anna"),
            await database.run(_agent, "bernd"),
            utcnow(),
        )
        await database.run(
            _idle_since, {anna: now - timedelta(hours=2), bernd: now - timedelta(hours=1)}
        )
        regular, new, declined, offered, forgiven = await database.run(_contacts, 5)
        await database.run(_history, regular, bernd, now - timedelta(minutes=10))
        tickets = {
            c: await database.run(_ticket_of, c)
            for c in (regular, new, declined, offered, forgiven)
        }
        await database.run(_offer, tickets[declined], anna, OfferStatus.REJECTED)
        await database.run(_offer, tickets[offered], bernd, OfferStatus.PENDING)
        long_ago = now - DECLINE_MEMORY - timedelta(seconds=1)
        await database.run(_offer, tickets[forgiven], anna, OfferStatus.EXPIRED, long_ago)

        routed = await database.run(_enter_and_route, [tickets[c] for c in tickets], [*tickets])

        assert _placed(routed) == {
            tickets[new]: anna,
            tickets[regular]: bernd,
            tickets[declined]: bernd,
            tickets[forgiven]: anna,
        }
    finally:
        await database.dispose()


def _idle_since(session: Session, since: dict[int, datetime]) -> None:
    for agent_id, moment in since.items():
        session.execute(update(Agent).where(Agent.id == agent_id).values(presence_since=moment))


def _contacts(session: Session, n: int) -> list[int]:
    return store.insert_rows(session, Contact, [{"name": f"Customer {i}"} for i in range(n)])


def _history(session: Session, contact: int, agent: int, at: datetime) -> None:
    row = {"contact_id": contact, "channel": "sms", "status": "resolved", "assignee_id": agent,
           "assigned_at": at, "queue": "sales"}  # fmt: skip
    store.insert_rows(session, Ticket, [row])


def _ticket_of(session: Session, contact: int) -> int:
    (ticket_id,) = store.insert_rows(session, Ticket, [{"contact_id": contact, "channel": "sms"}])
    return ticket_id


def _offer(
    session: Session,
    ticket: int,
    agent: int,
    status: OfferStatus,
    decided_at: datetime | None = None,
) -> None:
    """An offer of `ticket` to `agent`; one no longer pending was decided now, or then."""
    expires = utcnow() + timedelta(minutes=1)
    if status != OfferStatus.PENDING:
        decided_at = decided_at or utcnow()
    row = {"ticket_id": ticket, "agent_id": agent, "queue": "sales", "channel": "sms",
           "status": status, "created_at": utcnow(), "expires_at": expires,
           "decided_at": decided_at}  # fmt: skip
    store.insert_rows(session, Offer, [row])


def _enter_and_route(session: Session, tickets: list[int], contacts: list[int]) -> Routed:
    requests = [RouteRequest(t, "sms", "sales", c) for t, c in zip(tickets, contacts, strict=True)]
    now = utcnow()
    return route(session, SALES, assignment.enqueue(session, SALES, requests, now), now)


async def test_the_sweep_goes_round_all_waiting_tickets_a_batch_at_a_time(
    database_url: str,
) -> None:
    """`stragglers` from past the last sweep's place, in order of waiting (ties by id), on
    both databases' comparison of (waiting since, id)."""
    database = Database(database_url)
    await database.upgrade()
    try:
        waited = utcnow() - timedelta(minutes=5)

        def waiting(session: Session) -> list[int]:
            # Waited 0, 1, 1, 2, 2 s after the first: a tie across each end of a batch of two.
            rows = [
                {"channel": "sms", "waiting_since": waited + timedelta(seconds=(n + 1) // 2)}
                for n in range(5)
            ]
            return store.insert_rows(session, Ticket, rows)

        tickets = await database.run(waiting)
        now = utcnow()
        seen: list[list[int]] = []
        after: assignment.SweepPlace | None = None
        for _ in range(3):
            places = await database.read(assignment.stragglers, OFFERING, now, 2, now, after)
            seen.append([ticket_id for _, ticket_id in places])
            after = places[-1] if places else None
        assert seen == [tickets[0:2], tickets[2:4], tickets[4:5]]
    finally:
        await database.dispose()
