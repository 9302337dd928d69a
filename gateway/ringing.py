"""The ring first: a ringing call's card goes out before the call is written.

Ring-to-pop is what an agent feels; the call's transaction (journal, contact, timeline
event, pops, callback tickets) is what the writer does for everything, and it may have a
queue in front of it. So the ring of a new inbound call is read, not written: who is calling
(the contact's card as it stands, or a new caller's number), whom to ring, and ids reserved
for the call record, its timeline event and the pops (`timeline.store.reserve_ids_past`). The
pops are published at once; the writer then stores the call under those ids and the pops it
still rings, and takes back (`pop_withdrawn`) any it does not — a duplicate ring, a call
already over, a caller the blocklist refuses. Should the process die in between, the PBX
gets no answer and the card is not replayed: what was shown was never stored.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, String, bindparam, exists, func, literal_column, null, or_, select
from sqlalchemy.orm import Session

from gateway.pops import RECENT_EVENTS_ON_CARD, StoredPop, contact_cards, unknown_caller_card
from gateway.serialize import JSON, iso, ticket_summary
from gateway.settings import Settings
from routing.assignment import available_agents
from routing.config import RoutingConfig
from routing.contacts import identity_of
from routing.identity import IdentityKey, normalise_phone
from routing.queues import DEFAULT_QUEUE
from timeline import store
from timeline.db import Database
from timeline.events import Address, CallPhase, CallSignal, Direction, EventKind
from timeline.models import (
    Agent,
    Call,
    CallState,
    Identity,
    ScreenPop,
    TimelineEvent,
)

CHANNEL = "voice"
RING_REASON = "incoming_call"


@dataclass(frozen=True, slots=True)
class Rung:
    """What went out before the commit: the ids the writer must store the call under."""

    call_id: int
    event_id: int
    pops: list[StoredPop]

    @property
    def pop_ids(self) -> set[int]:
        return {pop.message["id"] for pop in self.pops}


async def ring_first(
    db: Database,
    settings: Settings,
    config: Callable[[], Awaitable[RoutingConfig]],
    signal: CallSignal,
) -> Rung | None:
    """The pops of a new inbound call's ring, with the ids they promise; None when the ring
    is not the first news of the call, rings nobody, or the caller is blocked.

    A new caller rung by name, the common case, takes one statement (`Database.rows_here`):
    whether the call is known, the caller's contact, the agents named, and on SQLite where
    the tables' ids stand. A known caller's card and the available agents of a queue are
    read in a session of their own. The routing configuration (`config()`, a cached copy
    reloaded every second) is asked for only to ring a queue: a ring naming its agents
    never waits for a reload."""
    if signal.phase is not CallPhase.RINGING or signal.direction is not Direction.INBOUND:
        return None
    identity = identity_of(customer(signal), settings.default_region)
    if is_blocked(signal.caller.raw, identity.value if identity else None, settings):
        return None
    names = sorted({reference(name) for name in signal.agents} - {""})
    if signal.agents and not names:
        return None
    # Places for the names in powers of two (the last name repeated): a handful of
    # statements for any number of names.
    places = 1 << (len(names) - 1).bit_length() if names else 0
    parameters = {
        "provider": signal.provider,
        "call_id": signal.call_id,
        "kind": identity.kind if identity else None,
        "value": identity.value if identity else None,
        **{f"name_{n}": names[min(n, len(names) - 1)] for n in range(places)},
    }
    sqlite = db.sqlite_file is not None
    rows = await db.rows_here(_lookup(places, sqlite), parameters)
    known, contact_id, *largest = rows[0][:-1]
    if known:
        return None
    if names:
        agents = sorted(row[-1] for row in rows if row[-1] is not None)
    elif signal.ring_available:
        agents = await db.read_here(_available, await config(), signal.queue)
    else:
        agents = []
    if not agents:
        return None
    wanted = [(Call, 1), (TimelineEvent, 1), (ScreenPop, len(agents))]
    reserved: Sequence[Sequence[int]]
    if sqlite:
        reserved = store.reserve_ids_past(
            db.sqlite_file,
            [(model, top, n) for (model, n), top in zip(wanted, largest, strict=True)],
        )
    else:
        reserved = await db.read_here(store.reserve_ids_of, wanted)
    (call_id,), (event_id,), pop_ids = reserved
    if contact_id is None:
        card, ticket = _new_caller_card(signal, identity, event_id), None
    else:
        card, ticket = await db.read_here(_known_card, signal, contact_id, event_id)
    message: JSON = {
        "type": "screen_pop",
        "reason": RING_REASON,
        "channel": CHANNEL,
        "contact": card,
        "ticket": ticket,
        "call": ringing_call(signal, call_id),
    }
    pops = [StoredPop(a, {**message, "id": p}) for a, p in zip(agents, pop_ids, strict=True)]
    return Rung(call_id, event_id, pops)


@functools.cache
def _lookup(names: int, sqlite: bool) -> Select[Any]:
    """Built once per number of places for names: whether the call is stored already, the caller's
    contact, on SQLite the largest ids of the tables a ring reserves ids in, and (one row
    each, or one row of NULL) the agents named by name, extension or e-mail."""
    named = [bindparam(f"name_{n}", type_=String) for n in range(names)]
    largest = [
        select(func.max(model.id)).scalar_subquery()
        for model in (Call, TimelineEvent, ScreenPop)
        if sqlite
    ]
    lookup = select(
        exists().where(
            Call.provider == bindparam("provider"), Call.call_id == bindparam("call_id")
        ),
        select(Identity.contact_id)
        .where(Identity.kind == bindparam("kind"), Identity.value == bindparam("value"))
        .scalar_subquery(),
        *largest,
        Agent.id if names else null(),
    )
    if not names:
        return lookup
    one_row = select(literal_column("1").label("one")).subquery()
    matches = or_(
        *(func.lower(column).in_(named) for column in (Agent.name, Agent.extension, Agent.email))
    )
    return lookup.select_from(one_row).outerjoin(Agent, matches)


def _available(session: Session, config: RoutingConfig, queue: str | None) -> list[int]:
    return available_agents(session, config.queue(queue or DEFAULT_QUEUE))


def _known_card(
    session: Session, signal: CallSignal, contact_id: int, event_id: int
) -> tuple[JSON, JSON | None]:
    """A known caller's card as the writer will have it: this call first in its history."""
    card = contact_cards(session, {contact_id})[contact_id]
    card["recent"] = [_call_preview(signal, event_id), *card["recent"]][:RECENT_EVENTS_ON_CARD]
    open_ticket = store.open_ticket_by_contact(session, {contact_id}).get(contact_id)
    return card, ticket_summary(open_ticket) if open_ticket else None


def _new_caller_card(signal: CallSignal, identity: IdentityKey | None, event_id: int) -> JSON:
    if identity is None:
        return unknown_caller_card()
    name = (customer(signal).name or "").strip() or identity.value
    return new_caller_card(identity, name[:200], _call_preview(signal, event_id))


def new_caller_card(identity: IdentityKey, name: str, this_call: JSON) -> JSON:
    """A caller not yet a contact: the writer makes it one with this number."""
    return {
        "id": None,
        "name": name,
        "identities": [{"kind": identity.kind, "value": identity.value}],
        "tags": [],
        "attributes": {},
        "merged_into_id": None,
        "created_at": None,
        "open_tickets": [],
        "recent": [this_call],
    }


def _call_preview(signal: CallSignal, event_id: int) -> JSON:
    return {
        "id": event_id,
        "channel": CHANNEL,
        "direction": signal.direction,
        "kind": EventKind.CALL,
        "body": "Incoming call",
        "ticket_id": None,
        "occurred_at": iso(signal.occurred_at),
    }


def ringing_call(signal: CallSignal, call_id: int) -> JSON:
    """The `call` part of a ringing call's pop, as `pop_call` gives it once stored."""
    return {
        "id": signal.call_id,
        "record_id": call_id,
        "from": signal.caller.raw,
        "to": signal.callee,
        "state": CallState.RINGING,
    }


def pop_call(call: Call) -> JSON:
    """The `call` part of a screen-pop (DESIGN.md contract)."""
    return {
        "id": call.call_id,
        "record_id": call.id,
        "from": call.from_number,
        "to": call.to_number,
        "state": call.state,
    }


def customer(signal: CallSignal) -> Address:
    """The customer's side of the call: the caller inbound, the callee outbound."""
    if signal.direction is Direction.INBOUND:
        return signal.caller
    return Address("phone", signal.callee)


def is_blocked(raw: str, e164: str | None, settings: Settings) -> bool:
    """Caller-ID blocking as Zammad does it: numbers or prefixes from the settings."""
    for entry in settings.cti_blocked:
        prefix = normalise_phone(entry, settings.default_region) or entry.replace(" ", "")
        if (e164 and e164.startswith(prefix)) or raw.replace(" ", "").startswith(prefix):
            return True
    return False


def reference(name: str) -> str:
    return name.strip().lower()


def named_ids(named: dict[str, list[Agent]], references: Sequence[str]) -> list[int]:
    return sorted({agent.id for name in references for agent in named.get(reference(name), [])})
