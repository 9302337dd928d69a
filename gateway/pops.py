"""Screen-pops: the contact card an agent sees the moment something arrives for them.

A pop is stored in the same transaction that decided it, then published after the commit; an
agent who was not connected receives it on reconnect (see `gateway.ws`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.bus import Bus, agent_topic
from gateway.serialize import JSON, TicketLike, contact_json, event_preview, ticket_summary
from timeline import store
from timeline.models import Contact, Identity

RECENT_EVENTS_ON_CARD = 5
OPEN_TICKETS_ON_CARD = 10


@dataclass(frozen=True, slots=True)
class StoredPop:
    agent_id: int
    message: JSON


@dataclass(frozen=True, slots=True)
class PopRequest:
    agent_id: int
    reason: str
    channel: str
    contact_id: int | None
    ticket: TicketLike | None
    call: JSON | None = None


def contact_cards(session: Session, contact_ids: Collection[int]) -> dict[int, JSON]:
    """Name, identities, tags, open tickets and the last interactions across every channel.

    Four queries for any number of contacts: pops are built for a whole batch at once.
    """
    if not contact_ids:
        return {}
    contacts = (session.execute(select(Contact).where(Contact.id.in_(contact_ids)))).scalars()
    identities: dict[int, list[Identity]] = defaultdict(list)
    for identity in store.identities_of(session, contact_ids):
        identities[identity.contact_id].append(identity)
    open_tickets = store.open_tickets_of(session, contact_ids)
    recent = store.recent_events_of(session, contact_ids, limit=RECENT_EVENTS_ON_CARD)
    return {
        contact.id: {
            **contact_json(contact, identities[contact.id]),
            "open_tickets": [
                ticket_summary(t) for t in open_tickets.get(contact.id, [])[:OPEN_TICKETS_ON_CARD]
            ],
            "recent": [event_preview(e) for e in recent.get(contact.id, [])],
        }
        for contact in contacts
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


def store_pops(session: Session, requests: Sequence[PopRequest]) -> list[StoredPop]:
    """Build and keep the pops of `requests`; the caller publishes them after its commit."""
    if not requests:
        return []
    cards = contact_cards(session, {r.contact_id for r in requests if r.contact_id})
    payloads = [
        {
            "type": "screen_pop",
            "reason": r.reason,
            "channel": r.channel,
            "contact": cards.get(r.contact_id) if r.contact_id else None,
            "ticket": ticket_summary(r.ticket) if r.ticket is not None else None,
            "call": r.call,
        }
        for r in requests
    ]
    for payload in payloads:
        payload["contact"] = payload["contact"] or unknown_caller_card()
    ids = store.add_pops(
        session,
        [{"agent_id": r.agent_id, "payload": p} for r, p in zip(requests, payloads, strict=True)],
    )
    return [
        StoredPop(r.agent_id, {**p, "id": pop_id})
        for r, p, pop_id in zip(requests, payloads, ids, strict=True)
    ]


async def publish_pops(bus: Bus, pops: list[StoredPop]) -> None:
    for pop in pops:
        await bus.publish(agent_topic(pop.agent_id), pop.message)
