"""Assignment against the real databases: the guard that no ticket is ever assigned twice."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.agents import NewAgent, create_agent
from routing.assignment import RouteRequest, route
from routing.capacity import Capacity
from routing.config import RoutingConfig
from timeline import store
from timeline.db import Database
from timeline.models import Presence, Ticket, utcnow


def _agent(session: Session, name: str) -> int:
    agent, _ = create_agent(
        session,
        NewAgent(
            name=name,
            email=f"{name}@example.com",
            password="long enough",
            capacity=Capacity(total=5),
        ),
    )
    agent.presence = Presence.AVAILABLE
    return agent.id


def _ticket(session: Session, assignee: int | None) -> int:
    (ticket_id,) = store.insert_rows(session, Ticket, [{"channel": "sms", "assignee_id": assignee}])
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
