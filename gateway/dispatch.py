"""Routing outside the ingest path: when an agent frees capacity or comes available."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.bus import SUPERVISORS_TOPIC, Bus
from gateway.pops import StoredPop, contact_card, publish_pops, store_pop
from routing.assignment import assign_ticket, fill_agent
from timeline.db import Database
from timeline.models import Ticket, utcnow


class Dispatcher:
    def __init__(self, db: Database, bus: Bus) -> None:
        self._db = db
        self._bus = bus

    async def offer_waiting(self, agent_id: int) -> list[int]:
        """Give the agent the oldest waiting tickets it has room for; returns their ids."""
        async with self._db.transaction() as session:
            ticket_ids = await fill_agent(session, agent_id, utcnow())
            pops = [await _assigned_pop(session, agent_id, tid) for tid in ticket_ids]
        await self._announce(pops)
        return ticket_ids

    async def route(self, ticket_id: int, excluded: int | None = None) -> int | None:
        """Assign one waiting ticket if any agent (but `excluded`) has room; returns the agent."""
        async with self._db.transaction() as session:
            ticket = await session.get(Ticket, ticket_id)
            if ticket is None or ticket.assignee_id is not None:
                return None
            agent_id = await assign_ticket(
                session, ticket_id, ticket.channel, utcnow(), excluded=excluded
            )
            pops = [await _assigned_pop(session, agent_id, ticket_id)] if agent_id else []
        await self._announce(pops)
        return agent_id

    async def announce_assignment(
        self, session: AsyncSession, agent_id: int, ticket_id: int
    ) -> StoredPop:
        """Store the pop for a manual assignment; the caller publishes it after its commit."""
        return await _assigned_pop(session, agent_id, ticket_id)

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


async def _assigned_pop(session: AsyncSession, agent_id: int, ticket_id: int) -> StoredPop:
    ticket = (await session.execute(select(Ticket).where(Ticket.id == ticket_id))).scalar_one()
    card = await contact_card(session, ticket.contact_id)
    return await store_pop(
        session,
        agent_id=agent_id,
        reason="assigned",
        channel=ticket.channel,
        card=card,
        ticket=ticket,
    )
