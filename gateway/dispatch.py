"""Routing outside the ingest path: when an agent frees capacity or comes available."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from gateway.bus import SUPERVISORS_TOPIC, Bus
from gateway.pops import PopRequest, StoredPop, publish_pops, store_pops
from routing.assignment import AssignmentRequest, assign_ticket, fill_agent
from timeline.db import Database
from timeline.models import Ticket, utcnow


class Dispatcher:
    def __init__(self, db: Database, bus: Bus) -> None:
        self._db = db
        self._bus = bus

    async def offer_waiting(self, agent_id: int) -> list[int]:
        """Give the agent the oldest waiting tickets it has room for; returns their ids."""
        async with self._db.transaction() as session:
            ticket_ids = await session.run_sync(fill_agent, agent_id, utcnow())
            pops = await session.run_sync(assigned_pops, dict.fromkeys(ticket_ids, agent_id))
        await self._announce(pops)
        return ticket_ids

    async def route(self, ticket_id: int, excluded: int | None = None) -> int | None:
        """Assign one waiting ticket if any agent (but `excluded`) has room; returns the agent."""
        async with self._db.transaction() as session:
            ticket = await session.get(Ticket, ticket_id)
            if ticket is None or ticket.assignee_id is not None:
                return None
            request = AssignmentRequest(ticket_id, ticket.channel, excluded=excluded)
            agent_id = await session.run_sync(assign_ticket, request, utcnow())
            pops = await session.run_sync(assigned_pops, {ticket_id: agent_id}) if agent_id else []
        await self._announce(pops)
        return agent_id

    async def announce_assignment(
        self, session: AsyncSession, agent_id: int, ticket_id: int
    ) -> StoredPop:
        """Store the pop for a manual assignment; the caller publishes it after its commit."""
        (pop,) = await session.run_sync(assigned_pops, {ticket_id: agent_id})
        return pop

    async def publish(self, pops: list[StoredPop]) -> None:
        await self._announce(pops)

    async def _announce(self, pops: list[StoredPop]) -> None:
        await publish_pops(self._bus, pops)
        for pop in pops:
            ticket = pop.message.get("ticket") or {}
            await self._bus.publish(
                SUPERVISORS_TOPIC,
                {
                    "type": "queue_update",
                    "queue": "default",
                    "ticket_id": ticket.get("id"),
                    "assignee_id": pop.agent_id,
                },
            )


def assigned_pops(session: Session, assignments: Mapping[int, int]) -> list[StoredPop]:
    """Store the pops telling agents they now hold tickets (`{ticket id: agent id}`)."""
    if not assignments:
        return []
    query = select(Ticket).where(Ticket.id.in_(assignments)).order_by(Ticket.id)
    tickets = list(session.execute(query).scalars())
    return store_pops(
        session,
        [PopRequest(assignments[t.id], "assigned", t.channel, t.contact_id, t) for t in tickets],
    )
