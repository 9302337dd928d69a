"""Assignment against the real databases: the guards that no ticket is ever assigned twice
and no agent filled over capacity by a choice made on a stale read."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.agents import NewAgent, create_agent
from routing import assignment
from routing.assignment import Routed, RouteRequest, route
from routing.capacity import Capacity
from routing.choice import Candidate
from routing.config import RoutingConfig
from timeline import store
from timeline.db import Database
from timeline.models import Presence, RoutingTimer, Ticket, TimerKind, utcnow


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


async def test_an_agent_another_batch_filled_after_the_choice_is_not_overfilled(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Candidates are read without locks: the chosen agent's load is counted again under its
    lock, and a ticket whose agent filled up meanwhile gets a reroute timer instead."""
    database = Database(database_url)
    await database.upgrade()
    try:
        anna = await database.run(_agent, "anna", 1)
        held = await database.run(_ticket, anna)
        waiting = await database.run(_ticket, None)
        stale = Candidate(anna, Capacity(total=1), load={})  # as read before `held` landed
        monkeypatch.setattr(assignment, "_candidates", lambda *_: [stale])

        request = [RouteRequest(waiting, "sms", "default")]
        routed = await database.run(route, RoutingConfig(), request, utcnow())

        assert routed.assigned == {}
        timers = await database.read(lambda s: s.execute(select(RoutingTimer)).scalars().all())
        assert [(t.kind, t.subject_id) for t in timers] == [(TimerKind.REROUTE, waiting)]
        monkeypatch.undo()
        await database.run(_resolve, held)
        routed = await database.run(_sweep)
        assert routed.assigned == {waiting: anna}, "routed again once the timer fired"
    finally:
        await database.dispose()


def _resolve(session: Session, ticket_id: int) -> None:
    session.execute(update(Ticket).where(Ticket.id == ticket_id).values(status="resolved"))


def _sweep(session: Session) -> Routed:
    routed = Routed()
    for timer in assignment.claim_due(session, utcnow()):
        routed.merge(assignment.fire(session, RoutingConfig(), timer, utcnow()))
    return routed
