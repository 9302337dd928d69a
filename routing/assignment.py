"""First assignment policy: one default queue, the available agent with the fewest open tickets.

Atomicity: every assignment first locks the rows of the agents it may assign to (PostgreSQL
`FOR UPDATE`, in id order so two transactions never deadlock; SQLite has a single writer), then
counts their load inside that lock, and finally sets the assignee only where it is still empty.
So concurrent inbounds in one or several processes never push an agent over capacity and
never assign one ticket twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Table, bindparam, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from routing.capacity import Capacity
from timeline.models import OPEN_STATUSES, Agent, Presence, Ticket, TicketStatus

DEFAULT_QUEUE = "default"


@dataclass(frozen=True, slots=True)
class AgentLoad:
    agent_id: int
    capacity: Capacity
    load: Mapping[str, int]

    @property
    def open_tickets(self) -> int:
        return sum(self.load.values())

    def plus_one(self, channel: str) -> AgentLoad:
        load = dict(self.load)
        load[channel] = load.get(channel, 0) + 1
        return AgentLoad(self.agent_id, self.capacity, load)


@dataclass(frozen=True, slots=True)
class _Staffed:
    id: int
    capacity: Any  # the agent's stored capacity (JSON), see `Capacity.from_json`


@dataclass(frozen=True, slots=True)
class AssignmentRequest:
    """A waiting ticket to place; `excluded` just handed it back and must not get it again."""

    ticket_id: int
    channel: str
    preferred: int | None = None
    excluded: int | None = None


def choose_agent(
    candidates: Sequence[AgentLoad], channel: str, preferred: int | None = None
) -> int | None:
    """The candidate with room on `channel` and the fewest open tickets (ties: lowest id).

    A `preferred` agent (who handled a reopened ticket before) wins whenever it has room.
    """
    with_room = [c for c in candidates if c.capacity.allows(c.load, channel)]
    if not with_room:
        return None
    if any(c.agent_id == preferred for c in with_room):
        return preferred
    return min(with_room, key=lambda c: (c.open_tickets, c.agent_id)).agent_id


def _lock_agents(session: Session, agent_ids: Sequence[int] | None) -> list[_Staffed]:
    """The available agents' ids and capacities, their rows locked (columns, not ORM objects:
    this runs for every batch that routes)."""
    query = select(Agent.id, Agent.capacity).where(Agent.presence == Presence.AVAILABLE)
    if agent_ids is not None:
        query = query.where(Agent.id.in_(agent_ids))
    query = query.order_by(Agent.id).with_for_update()
    return [_Staffed(agent_id, capacity) for agent_id, capacity in session.execute(query)]


def _loads(session: Session, agents: Sequence[_Staffed]) -> list[AgentLoad]:
    ids = [a.id for a in agents]
    per_channel: dict[int, dict[str, int]] = defaultdict(dict)
    if ids:
        rows = session.execute(
            select(Ticket.assignee_id, Ticket.channel, func.count())
            .where(Ticket.assignee_id.in_(ids), Ticket.status.in_(OPEN_STATUSES))
            .group_by(Ticket.assignee_id, Ticket.channel)
        )
        for agent_id, channel, n in rows:
            if agent_id is not None:
                per_channel[agent_id][channel] = n
    return [AgentLoad(a.id, Capacity.from_json(a.capacity), per_channel[a.id]) for a in agents]


def agent_load(session: Session, agent_id: int) -> AgentLoad | None:
    """One agent's capacity and load, whatever its presence, with its row locked."""
    query = select(Agent.id, Agent.capacity).where(Agent.id == agent_id).with_for_update()
    agents = [_Staffed(found_id, capacity) for found_id, capacity in session.execute(query)]
    return (_loads(session, agents))[0] if agents else None


def assign_tickets(
    session: Session, requests: Sequence[AssignmentRequest], now: datetime
) -> dict[int, int]:
    """Assign waiting tickets, in order, to the best available agents; unplaced ones wait.

    The agents are locked and counted once for the whole list, and each assignment counts
    towards the next choice, so a batch never overfills an agent either.
    """
    if not requests:
        return {}
    agents = _lock_agents(session, None)
    if not agents:
        return {}
    loads = {load.agent_id: load for load in _loads(session, agents)}
    plan: dict[int, int] = {}
    for request in requests:
        candidates = [load for load in loads.values() if load.agent_id != request.excluded]
        agent_id = choose_agent(candidates, request.channel, request.preferred)
        if agent_id is not None:
            plan[request.ticket_id] = agent_id
            loads[agent_id] = loads[agent_id].plus_one(request.channel)
    return _set_assignees(session, plan, now)


def _set_assignees(session: Session, plan: dict[int, int], now: datetime) -> dict[int, int]:
    """Apply `{ticket: agent}` in one statement, only where nobody holds the ticket yet.

    That guard is what keeps one ticket from being assigned twice; the tickets it refused
    (taken meanwhile by another process) are left out of the answer.
    """
    if not plan:
        return {}
    table = Ticket.__table__
    assert isinstance(table, Table)
    values = {"assigned_at": now, "updated_at": now, "status": TicketStatus.OPEN}
    statement = (
        update(table)
        .where(table.c.id == bindparam("ticket"), table.c.assignee_id.is_(None))
        .values(assignee_id=bindparam("agent"), **values)
    )
    result = session.execute(statement, [{"ticket": t, "agent": a} for t, a in plan.items()])
    updated = cast(CursorResult[Any], result).rowcount
    if updated != len(plan) or not session.get_bind().dialect.supports_sane_multi_rowcount:
        held = session.execute(select(Ticket.id, Ticket.assignee_id).where(Ticket.id.in_(plan)))
        holders = {ticket_id: agent_id for ticket_id, agent_id in held}
        plan = {t: a for t, a in plan.items() if holders.get(t) == a}
    for ticket_id, agent_id in plan.items():
        loaded = session.identity_map.get(identity_key(Ticket, ticket_id))
        if loaded is not None:
            for name, value in {**values, "assignee_id": agent_id}.items():
                set_committed_value(loaded, name, value)
    return plan


def assign_ticket(session: Session, request: AssignmentRequest, now: datetime) -> int | None:
    """Assign one waiting ticket; None leaves it waiting."""
    return (assign_tickets(session, [request], now)).get(request.ticket_id)


def fill_agent(session: Session, agent_id: int, now: datetime) -> list[int]:
    """Give an agent who has room the oldest waiting tickets it may take, up to its capacity."""
    agents = _lock_agents(session, [agent_id])
    if not agents:
        return []
    (agent,) = _loads(session, agents)
    load = dict(agent.load)
    assigned: list[int] = []
    skipped_channels: set[str] = set()
    while True:
        query = (
            select(Ticket.id, Ticket.channel)
            .where(
                Ticket.assignee_id.is_(None),
                Ticket.status.in_(OPEN_STATUSES),
                Ticket.queue == DEFAULT_QUEUE,
                Ticket.channel.not_in(skipped_channels),
            )
            .order_by(Ticket.created_at, Ticket.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        row = (session.execute(query)).one_or_none()
        if row is None:
            return assigned
        ticket_id, channel = row
        if not agent.capacity.allows(load, channel):
            skipped_channels.add(channel)
            if agent.capacity.is_full(load):
                return assigned
            continue
        if _set_assignees(session, {ticket_id: agent_id}, now):
            assigned.append(ticket_id)
            load[channel] = load.get(channel, 0) + 1


def agents_by_reference(session: Session, references: Collection[str]) -> dict[str, list[Agent]]:
    """The agents a PBX names, by name, extension or e-mail (case does not matter).

    Keyed by the lower-cased, stripped reference; each list in id order. One query for
    every reference of a batch of calls.
    """
    wanted = {r.strip().lower() for r in references if r.strip()}
    if not wanted:
        return {}
    query = (
        select(Agent)
        .where(
            func.lower(Agent.name).in_(wanted)
            | func.lower(Agent.extension).in_(wanted)
            | func.lower(Agent.email).in_(wanted)
        )
        .order_by(Agent.id)
    )
    found: dict[str, list[Agent]] = defaultdict(list)
    for agent in session.execute(query).scalars():
        names = {agent.name.lower(), agent.email.lower(), (agent.extension or "").lower()}
        for reference in names & wanted:
            found[reference].append(agent)
    return found


def available_agents(session: Session) -> list[int]:
    query = select(Agent.id).where(Agent.presence == Presence.AVAILABLE).order_by(Agent.id)
    return list(session.execute(query).scalars())
