"""Routing over HTTP: queues with live figures, routing rules, agents with presence and load,
and ticket changes (status, priority, assignee, queue) that keep the engine's invariants."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from gateway import agents
from gateway.api import authenticate, path_id, read_json_object
from gateway.dispatch import Announcement, announcement, assigned_pops
from gateway.errors import ApiError, bad_request, not_found
from gateway.keys import DATABASE, DISPATCHER
from gateway.serialize import agent_json, ticket_json
from routing import assignment, stats
from routing.assignment import Routed, RouteRequest
from routing.capacity import Capacity
from routing.config import RoutingConfig, load_config, save_queue
from routing.queues import DEFAULT_QUEUE, InvalidQueue, QueueConfig
from routing.rules import InvalidRule, Rule
from timeline.models import (
    OPEN_STATUSES,
    TICKET_PRIORITIES,
    Agent,
    AgentSkill,
    Offer,
    OfferStatus,
    Role,
    RoutingRule,
    Ticket,
    TicketStatus,
    TimerKind,
    utcnow,
)

routes = web.RouteTableDef()
SUPERVISING = (Role.SUPERVISOR, Role.ADMIN)


# --- queues ---------------------------------------------------------------------------------


def queue_figures(session: Session, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Each queue's configuration with its live and today's figures (no table scans: the
    counters, the waiting index, and the agents)."""
    now = utcnow()
    config = load_config(session)
    waiting = stats.waiting(session)
    # The default queue is always shown: an empty queue is news on a wallboard, too.
    every = set(config.queues) | set(waiting) | {DEFAULT_QUEUE}
    wanted = sorted(every) if names is None else names
    queues = [config.queue(name) for name in wanted]
    days = stats.today(session, queues, now)
    roster = _roster(session)
    return [
        {
            **queue.to_json(),
            "configured": queue.name in config.queues,
            "open": queue.is_open(now),
            **stats.figures(
                queue,
                days.get(queue.name),
                waiting.get(queue.name),
                Counter(presence for skills, presence in roster if _fits(skills, queue)),
                now,
            ),
        }
        for queue in queues
    ]


def _roster(session: Session) -> list[tuple[dict[str, int], str]]:
    skills: dict[int, dict[str, int]] = defaultdict(dict)
    for agent_id, skill, level in session.execute(
        select(AgentSkill.agent_id, AgentSkill.skill, AgentSkill.level)
    ):
        skills[agent_id][skill] = level
    return [
        (skills[agent_id], presence)
        for agent_id, presence in session.execute(select(Agent.id, Agent.presence))
    ]


def _fits(skills: dict[str, int], queue: QueueConfig) -> bool:
    return all(skills.get(name, 0) >= level for name, level in queue.skills.items())


@routes.get("/api/v1/queues")
async def list_queues(request: web.Request) -> web.Response:
    await authenticate(request)
    queues = await request.app[DATABASE].read(queue_figures)
    return web.json_response({"queues": queues})


@routes.get("/api/v1/queues/{name}")
async def get_queue(request: web.Request) -> web.Response:
    await authenticate(request)
    (queue,) = await request.app[DATABASE].read(queue_figures, [request.match_info["name"]])
    return web.json_response(queue)


@routes.post("/api/v1/queues")
async def create_queue(request: web.Request) -> web.Response:
    (await authenticate(request)).require(*SUPERVISING)
    queue = _queue(await read_json_object(request))
    return web.json_response(await _save_queue(request, queue), status=201)


@routes.patch("/api/v1/queues/{name}")
async def patch_queue(request: web.Request) -> web.Response:
    (await authenticate(request)).require(*SUPERVISING)
    name = request.match_info["name"]
    changes = await read_json_object(request)
    config = await request.app[DATABASE].read(load_config)
    if name not in config.queues:
        raise not_found("queue")
    queue = _queue({**config.queues[name].to_json(), **changes, "name": name})
    return web.json_response(await _save_queue(request, queue))


def _queue(data: dict[str, Any]) -> QueueConfig:
    try:
        return QueueConfig.parse(data)
    except InvalidQueue as error:
        raise bad_request("invalid_queue", str(error)) from None


async def _save_queue(request: web.Request, queue: QueueConfig) -> dict[str, Any]:
    await request.app[DATABASE].run(save_queue, queue, utcnow())
    request.app[DISPATCHER].config.invalidate()
    (saved,) = await request.app[DATABASE].read(queue_figures, [queue.name])
    return saved


# --- routing rules --------------------------------------------------------------------------


def _rule_json(rule: RoutingRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "position": rule.position,
        "name": rule.name,
        "queue": rule.queue,
        "when": rule.conditions,
    }


def _rules(session: Session) -> list[dict[str, Any]]:
    query = select(RoutingRule).order_by(RoutingRule.position, RoutingRule.id)
    return [_rule_json(r) for r in session.execute(query).scalars()]


def _parse_rule(data: dict[str, Any]) -> tuple[Rule, int | None]:
    position = data.get("position")
    if position is not None and (not isinstance(position, int) or isinstance(position, bool)):
        raise bad_request("invalid_rule", "'position' must be a whole number.")
    try:
        return Rule.parse(data), position
    except InvalidRule as error:
        raise bad_request("invalid_rule", str(error)) from None


@routes.get("/api/v1/routing-rules")
async def list_rules(request: web.Request) -> web.Response:
    await authenticate(request)
    return web.json_response({"rules": await request.app[DATABASE].read(_rules)})


@routes.post("/api/v1/routing-rules")
async def create_rule(request: web.Request) -> web.Response:
    (await authenticate(request)).require(*SUPERVISING)
    rule, position = _parse_rule(await read_json_object(request))

    def add(session: Session) -> dict[str, Any]:
        last = session.execute(select(func.max(RoutingRule.position))).scalar_one()
        row = RoutingRule(
            position=position if position is not None else (last or 0) + 1,
            name=rule.name,
            queue=rule.queue,
            conditions=dict(rule.when),
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return _rule_json(row)

    created = await request.app[DATABASE].run(add)
    request.app[DISPATCHER].config.invalidate()
    return web.json_response(created, status=201)


@routes.patch("/api/v1/routing-rules/{id}")
async def patch_rule(request: web.Request) -> web.Response:
    (await authenticate(request)).require(*SUPERVISING)
    rule_id = path_id(request)
    data = await read_json_object(request)

    def change(session: Session) -> dict[str, Any]:
        row = session.get(RoutingRule, rule_id)
        if row is None:
            raise not_found("routing rule")
        merged = {"name": row.name, "queue": row.queue, "when": row.conditions, **data}
        rule, position = _parse_rule(merged)
        row.name, row.queue, row.conditions = rule.name, rule.queue, dict(rule.when)
        row.position = position if position is not None else row.position
        return _rule_json(row)

    changed = await request.app[DATABASE].run(change)
    request.app[DISPATCHER].config.invalidate()
    return web.json_response(changed)


@routes.delete("/api/v1/routing-rules/{id}")
async def delete_rule(request: web.Request) -> web.Response:
    (await authenticate(request)).require(*SUPERVISING)
    rule_id = path_id(request)

    def remove(session: Session) -> int:
        result = session.execute(delete(RoutingRule).where(RoutingRule.id == rule_id))
        return int(getattr(result, "rowcount", 0))

    if not await request.app[DATABASE].run(remove):
        raise not_found("routing rule")
    request.app[DISPATCHER].config.invalidate()
    return web.Response(status=204)


# --- agents ---------------------------------------------------------------------------------


def agents_with_load(session: Session) -> list[dict[str, Any]]:
    """Every agent with presence, skill levels, capacity and load per channel (open tickets
    and pending offers)."""
    rows = list(session.execute(select(Agent).order_by(Agent.id)).scalars())
    load: dict[int, Counter[str]] = defaultdict(Counter)
    for agent_id, channel, n in session.execute(
        select(Ticket.assignee_id, Ticket.channel, func.count())
        .where(Ticket.assignee_id.is_not(None), Ticket.status.in_(OPEN_STATUSES))
        .group_by(Ticket.assignee_id, Ticket.channel)
    ):
        if agent_id is not None:
            load[agent_id][channel] += n
    offered: dict[int, int] = dict(
        session.execute(  # type: ignore[arg-type]
            select(Offer.agent_id, func.count())
            .where(Offer.status == OfferStatus.PENDING)
            .group_by(Offer.agent_id)
        ).all()
    )
    levels: dict[int, dict[str, int]] = defaultdict(dict)
    for agent_id, skill, level in session.execute(
        select(AgentSkill.agent_id, AgentSkill.skill, AgentSkill.level)
    ):
        levels[agent_id][skill] = level
    return [
        {
            **agent_json(a),
            "skill_levels": levels[a.id],
            "capacity": Capacity.from_json(a.capacity).to_json(),
            "load": dict(load[a.id]),
            "open_tickets": sum(load[a.id].values()),
            "pending_offers": offered.get(a.id, 0),
        }
        for a in rows
    ]


@routes.get("/api/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    (await authenticate(request)).require(*SUPERVISING)
    return web.json_response({"agents": await request.app[DATABASE].read(agents_with_load)})


@routes.patch("/api/v1/agents/{id}")
async def patch_agent(request: web.Request) -> web.Response:
    """Presence by API: the agent itself, or a supervisor for anyone."""
    principal = await authenticate(request)
    agent_id = path_id(request)
    if agent_id != principal.agent_id:
        principal.require(*SUPERVISING)
    data = await read_json_object(request)
    if set(data) != {"presence"}:
        raise bad_request("invalid_payload", "Only 'presence' can be changed here.")
    state = agents.parse_presence(data["presence"])
    async with request.app[DATABASE].reading() as session:
        if await session.get(Agent, agent_id) is None:
            raise not_found("agent")
    await request.app[DISPATCHER].set_presence(agent_id, state)
    async with request.app[DATABASE].reading() as session:
        agent = await session.get(Agent, agent_id)
    assert agent is not None
    return web.json_response(agent_json(agent))


# --- tickets --------------------------------------------------------------------------------


@routes.patch("/api/v1/tickets/{id}")
async def patch_ticket(request: web.Request) -> web.Response:
    """Status, priority, assignee and (supervisors) queue; capacity is never exceeded, and
    capacity freed is offered to waiting tickets at once."""
    principal = await authenticate(request)
    ticket_id = path_id(request)
    changes = _ticket_changes(await read_json_object(request))
    if "queue" in changes:
        principal.require(*SUPERVISING)
    dispatcher = request.app[DISPATCHER]
    config = await dispatcher.config.get()
    news = await request.app[DATABASE].run(change_ticket, config, ticket_id, changes, utcnow())
    await dispatcher.publish(news)
    async with request.app[DATABASE].reading() as session:
        updated = await session.get(Ticket, ticket_id)
    assert updated is not None, "tickets are never deleted"
    return web.json_response(ticket_json(updated))


def _ticket_changes(data: dict[str, Any]) -> dict[str, Any]:
    unknown = set(data) - {"status", "assignee_id", "priority", "queue"}
    if unknown:
        raise bad_request("invalid_payload", f"Cannot change {', '.join(sorted(unknown))} here.")
    if "status" in data and data["status"] not in TicketStatus.__members__.values():
        raise bad_request("invalid_status", f"Status must be one of {', '.join(TicketStatus)}.")
    if "priority" in data and data["priority"] not in TICKET_PRIORITIES:
        raise bad_request(
            "invalid_priority", f"Priority must be one of {', '.join(TICKET_PRIORITIES)}."
        )
    if "assignee_id" in data:
        value = data["assignee_id"]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise bad_request("invalid_assignee", "assignee_id must be an agent id or null.")
    if "queue" in data and (not isinstance(data["queue"], str) or not data["queue"].strip()):
        raise bad_request("invalid_queue", "queue must be a queue's name.")
    return data


def change_ticket(
    session: Session, config: RoutingConfig, ticket_id: int, changes: dict[str, Any], now: datetime
) -> Announcement:
    """One ticket change in one transaction; what to publish. Agents it frees room for (the
    holder who lost it, those whose offer of it was withdrawn) take waiting tickets in the
    same transaction, so a crash between the change and the filling cannot leave room idle."""
    assignment.exclusive(session)
    ticket = session.execute(
        select(Ticket).where(Ticket.id == ticket_id).with_for_update()
    ).scalar_one_or_none()
    if ticket is None:
        raise not_found("ticket")
    holder, routed, manual = ticket.assignee_id, Routed(), {}
    freed: list[int] = []
    if "priority" in changes:
        ticket.priority = changes["priority"]
    if "queue" in changes:
        routed.merge(assignment.move(session, config, ticket, changes["queue"].strip(), now))
    if "status" in changes:
        freed += _set_status(session, config, ticket, changes["status"], now)
    if "assignee_id" in changes and changes["assignee_id"] != holder:
        wanted = changes["assignee_id"]
        ticket.assignee_id = None
        if wanted is not None:
            freed += _assign_by_hand(session, config, ticket, wanted, now)
            manual = {ticket.id: wanted}
    ticket.updated_at = now
    session.flush()
    if ticket.assignee_id is None and ticket.status in OPEN_STATUSES:
        routed.merge(_wait(session, config, ticket, now, excluded=holder))
    keeps = ticket.assignee_id == holder and ticket.status in OPEN_STATUSES
    if holder is not None and not keeps:
        freed.append(holder)
    routed.merge(assignment.fill_agents(session, config, freed, now, skip=[ticket.id]))
    news = announcement(session, routed)
    news.pops.extend(assigned_pops(session, manual))
    news.queues.add(ticket.queue)
    return news


def _wait(
    session: Session, config: RoutingConfig, ticket: Ticket, now: datetime, excluded: int | None
) -> Routed:
    """An open ticket without an agent waits in its queue (entering it if it was not) and is
    placed at once if someone has room; not with the agent who just handed it back."""
    request = RouteRequest(ticket.id, ticket.channel, ticket.queue, ticket.contact_id,
                           ticket.priority, waiting_since=ticket.waiting_since)  # fmt: skip
    if ticket.waiting_since is None:
        (request,) = assignment.enqueue(session, config, [request], now)
        ticket.waiting_since = now
    session.flush()
    return assignment.route(session, config, [request], now, excluded=excluded)


def _set_status(
    session: Session, config: RoutingConfig, ticket: Ticket, status: str, now: datetime
) -> list[int]:
    """Resolving stamps the time and settles the figures; reopening keeps the agent only if
    it still has room. The agents whose offer of it was withdrawn."""
    if status == ticket.status:
        return []
    freed: list[int] = []
    reopening = ticket.status not in OPEN_STATUSES and status in OPEN_STATUSES
    if status in (TicketStatus.RESOLVED, TicketStatus.CLOSED):
        if ticket.status in OPEN_STATUSES:
            freed = assignment.closed(session, config, ticket, now)
        ticket.status = status
        ticket.resolved_at = ticket.resolved_at or now
        return freed
    ticket.status = status
    ticket.resolved_at = None
    if reopening and ticket.assignee_id is not None:
        holder, ticket.assignee_id = ticket.assignee_id, None
        session.flush()
        found = assignment.agent_load(session, holder)
        if found is not None and found[0].allows(found[1], ticket.channel):
            ticket.assignee_id = holder
    return freed


def _assign_by_hand(
    session: Session, config: RoutingConfig, ticket: Ticket, agent_id: int, now: datetime
) -> list[int]:
    """A force-assignment skips the offer and the agent's presence, never its capacity
    (checked under its lock). A waiting ticket counts as answered. The agents whose offer
    of it was withdrawn."""
    freed = assignment.withdraw_ticket_offers(session, [ticket.id], now)
    session.flush()
    found = assignment.agent_load(session, agent_id)
    if found is None:
        raise bad_request("invalid_assignee", f"There is no agent {agent_id}.")
    capacity, load = found
    if ticket.status in OPEN_STATUSES and not capacity.allows(load, ticket.channel):
        raise ApiError(
            409,
            "agent_at_capacity",
            f"Agent {agent_id} has no room for another {ticket.channel} ticket.",
        )
    if ticket.waiting_since is not None:
        stats.record(
            session, [stats.answered(config.queue(ticket.queue), ticket.waiting_since, now)]
        )
        assignment.cancel(session, TimerKind.OVERFLOW, [ticket.id])
    ticket.assignee_id = agent_id
    ticket.assigned_at = now
    ticket.waiting_since = None
    if ticket.status == TicketStatus.NEW:
        ticket.status = TicketStatus.OPEN
    return freed
