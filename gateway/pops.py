"""Screen-pops: the contact card an agent sees the moment something arrives for them.

A pop is stored in the same transaction that decided it, then published after the commit; an
agent who was not connected receives it on reconnect (see `gateway.ws`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.bus import Bus, agent_topic
from gateway.serialize import JSON, contact_json, event_preview, ticket_summary
from timeline import store
from timeline.models import Contact, Ticket

RECENT_EVENTS_ON_CARD = 5


@dataclass(frozen=True, slots=True)
class StoredPop:
    agent_id: int
    message: JSON


async def contact_card(session: AsyncSession, contact_id: int | None) -> JSON:
    """Name, identities, tags, open tickets and the last interactions across every channel."""
    if contact_id is None:
        return unknown_caller_card()
    contact = await session.get(Contact, contact_id)
    if contact is None:
        return unknown_caller_card()
    identities = await store.identities_of(session, [contact_id])
    open_tickets = await store.open_tickets_of(session, contact_id)
    recent = await store.recent_events(session, contact_id, limit=RECENT_EVENTS_ON_CARD)
    return {
        **contact_json(contact, identities),
        "open_tickets": [ticket_summary(t) for t in open_tickets],
        "recent": [event_preview(e) for e in recent],
    }


def unknown_caller_card() -> JSON:
    return {
        "id": None,
        "name": "Unknown caller",
        "identities": [],
        "tags": [],
        "open_tickets": [],
        "recent": [],
    }


async def store_pop(
    session: AsyncSession,
    *,
    agent_id: int,
    reason: str,
    channel: str,
    card: JSON,
    ticket: Ticket | None,
    call: JSON | None = None,
) -> StoredPop:
    payload: dict[str, Any] = {
        "type": "screen_pop",
        "reason": reason,
        "channel": channel,
        "contact": card,
        "ticket": ticket_summary(ticket) if ticket is not None else None,
        "call": call,
    }
    pop_id = await store.store_pop(session, agent_id, payload)
    return StoredPop(agent_id, {**payload, "id": pop_id})


async def publish_pops(bus: Bus, pops: list[StoredPop]) -> None:
    for pop in pops:
        await bus.publish(agent_topic(pop.agent_id), pop.message)
