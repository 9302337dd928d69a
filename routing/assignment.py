"""The routing engine's store side: queue tickets, offer or assign them, settle offers.

Atomicity, also across processes on one PostgreSQL: locks are always taken in one order —
an offer, then tickets (by id), then agents (by id) — so two transactions never deadlock on
each other. Routing locks the tickets it places, reads the agents it may choose from with
their load (open tickets plus pending offers) and lets every choice count towards the next;
it claims a chosen agent only if the agent's row is unchanged since that read (every offer
and assignment updates it), under the row's lock, so no agent is ever over capacity. An agent that
comes free takes waiting tickets with `SKIP LOCKED`, so it never waits for a ticket someone
else is placing. The partial unique index on pending offers is the last guard: one ticket is
never offered to two agents at once, and an assignment only lands where nobody holds the
ticket yet. SQLite has a single writer, which serialises all of this by itself.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cache, lru_cache
from typing import Any, cast

from sqlalchemy import (
    CTE,
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    CompoundSelect,
    Connection,
    CursorResult,
    DateTime,
    Float,
    Integer,
    Result,
    Select,
    String,
    Table,
    Update,
    all_,
    and_,
    any_,
    bindparam,
    case,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key
from sqlalchemy.types import NullType

from routing import presence, stats
from routing.capacity import DEFAULT_CAPACITY, Capacity
from routing.choice import NEVER, Candidate, choose_agent, urgency
from routing.config import RoutingConfig
from routing.queues import AfterHours, QueueConfig, Strategy
from timeline.bulk import driver_rows
from timeline.models import (
    OPEN_STATUSES,
    Agent,
    AgentSkill,
    Offer,
    OfferStatus,
    Presence,
    RoutingTimer,
    Ticket,
    TicketStatus,
    TimerKind,
)

# PostgreSQL advisory lock (any fixed number) taken first by every routing transaction.
_ROUTING_LOCK = 7_254_006
_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
# An ingest batch also plans its statements once per connection (`shared`).
_SHARED_LOCK = text(
    "SELECT pg_advisory_xact_lock_shared(:key), "
    "set_config('plan_cache_mode', 'force_generic_plan', true)"
)

# How many of the oldest waiting tickets an agent who comes free looks through.
_FILL_WINDOW = 50
# How often a routing step chooses again, from a fresh read, for tickets whose chosen agent
# another batch changed first; after that the sweeper routes them (a `reroute` timer).
_ATTEMPTS = 3
# How many waiting tickets a queue that opens places in one transaction.
_OPENING_BATCH = 200


def _literals(statuses: Sequence[str]) -> list[ColumnElement[str]]:
    """Statuses as literals in the SQL, not bound values: SQLAlchemy renders an IN of bound
    values again at every execution, and PostgreSQL uses a partial index (of open tickets,
    `ix_tickets_open_assignee`; of pending offers, `uq_offers_pending_ticket`) only for a
    condition it can see implies the index's — in a generic plan (`shared`), never for a
    bound value."""
    return [literal_column(repr(str(status)), String) for status in statuses]


_DECLINED = _literals((OfferStatus.REJECTED, OfferStatus.EXPIRED))
# How long a rejected or missed offer keeps its ticket from that agent (in that queue). For
# ever would forget a customer whom every agent of the queue once declined or let time out
# (a busy minute, agents away from their desks): the ticket would wait beside idle agents.
DECLINE_MEMORY = timedelta(seconds=60)
_OPEN = _literals(OPEN_STATUSES)
(_PENDING,) = _literals((OfferStatus.PENDING,))
(_AVAILABLE,) = _literals((Presence.AVAILABLE,))


class OfferGone(Exception):
    """The offer was already accepted, rejected, withdrawn or timed out, or is not yours."""


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """A waiting ticket to place. `waiting_since` None: it enters its queue now."""

    ticket_id: int
    channel: str
    queue: str
    contact_id: int | None = None
    priority: str = "normal"
    preferred: int | None = None  # who held it before it was reopened
    waiting_since: datetime | None = None
    # What `enqueue` read while it put the ticket in its queue; None: `route` reads it.
    entered: Entered | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Entered:
    """What PostgreSQL told `enqueue` in the statement that put the ticket in its queue (and
    so locked it), so that `route` need not ask again: whether it may be placed (nobody
    holds it, it is open, no offer pending), who declined it in this queue (within
    `DECLINE_MEMORY`), and its contact's last agent since the longest sticky window began,
    with when; and the candidates for its queue."""

    placeable: bool
    declined: frozenset[int]
    last_agent: int | None
    last_at: datetime | None
    # The candidates for the open queues of the tickets that entered with it, read in the
    # same statement (one round trip fewer); `route` chooses among them first. None: the
    # queues were closed.
    seen: _Seen | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class OfferMade:
    id: int
    ticket_id: int
    agent_id: int
    queue: str
    channel: str
    expires_at: datetime


@dataclass(slots=True)
class Routed:
    """What a routing step decided: direct assignments `{ticket: agent}` and offers made."""

    assigned: dict[int, int] = field(default_factory=dict)
    offers: list[OfferMade] = field(default_factory=list)
    queues: set[str] = field(default_factory=set)  # queues whose figures changed
    presence: dict[int, Presence] = field(default_factory=dict)  # agents' new states

    def merge(self, other: Routed) -> Routed:
        self.assigned.update(other.assigned)
        self.offers.extend(other.offers)
        self.queues |= other.queues
        self.presence.update(other.presence)
        return self


# --- who may route at the same time --------------------------------------------------------


def exclusive(session: Session) -> None:
    """First thing in a routing step outside the ingest path (an offer settled, a presence
    changed, a timer fired, a ticket changed by hand): such steps lock an agent or an offer
    before the agents they choose among, so two of them, or one and an ingest batch, could
    each wait for the other. On PostgreSQL they take turns across processes (an advisory lock,
    fair: PostgreSQL queues it); SQLite has one writer anyway."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_LOCK, {"key": _ROUTING_LOCK})


def shared(session: Session) -> None:
    """First thing in an ingest batch: batches run side by side (they lock contacts, tickets,
    then agents in id order, all in the same order), but not beside an exclusive step.

    In the same round trip the rest of the transaction is set to use generic plans of its
    (prepared) statements: PostgreSQL otherwise plans the routing decision's two statements
    afresh at every execution, which took longer than running them (0.4-0.6 ms and 0.2-0.4
    ms), since their generic plans look dearer to it than they are (it guesses ten rows for
    each array unnested). Their plans do not depend on the values bound: the statuses and
    presences that select partial indexes are literals in the SQL (`_literals`)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_SHARED_LOCK, {"key": _ROUTING_LOCK})


# --- entering a queue and being placed ------------------------------------------------------


def enqueue(
    session: Session, config: RoutingConfig, requests: Sequence[RouteRequest], now: datetime
) -> list[RouteRequest]:
    """Tickets enter their queues now: counted as offered, overflow timers set."""
    if not requests:
        return []
    entered: dict[int, Entered] = {}
    if session.get_bind().dialect.name == "postgresql":
        entered = _enter(session, config, requests, now)
    else:
        session.execute(
            update(_tickets())
            .where(_tickets().c.id == bindparam("ticket"))
            .values(waiting_since=now, queue=bindparam("queue_name")),
            [{"ticket": r.ticket_id, "queue_name": r.queue} for r in requests],
        )
    _entered(session, config, requests, now)
    return [_waiting(r, now, entered.get(r.ticket_id)) for r in requests]


def _entered(
    session: Session, config: RoutingConfig, requests: Sequence[RouteRequest], now: datetime
) -> None:
    """What tickets entering their queues set going: counted as offered, overflow timers, the
    after-hours reply."""
    stats.record(session, [stats.offered(config.queue(r.queue), now) for r in requests])
    _schedule_overflow(session, config, [(r.ticket_id, r.queue) for r in requests], now)
    _after_hours(session, config, requests, now)


def enter_and_route(
    session: Session, config: RoutingConfig, requests: Sequence[RouteRequest], now: datetime
) -> Routed:
    """`route(enqueue(…))`: new tickets enter their queues and are placed at once.

    On PostgreSQL one ticket entering an open queue that offers (a new conversation: the
    decision routing makes most) takes a single statement, `_entering_and_offering`: the
    ticket enters its queue, the agent is chosen in SQL as `choose_agent` chooses, claimed as
    `_reserve` claims, and offered the ticket. One round trip and no Python over a hundred
    candidates, where the general way takes two with the choice between them. When the
    agent chosen changed after the statement's snapshot (another transaction offered them
    something first), the ticket goes the general way from there."""
    alone = _offered_alone(session, config, requests, now)
    if alone is None:
        return route(session, config, enqueue(session, config, requests, now), now)
    queue = config.queue(alone.queue)
    expires_at = now + queue.offer_timeout()
    session.flush()  # the placeability below reads the ticket as this transaction left it
    params = {
        "ids": [alone.ticket_id],
        "queues": [alone.queue],
        "now": now,
        "since": now - timedelta(seconds=queue.sticky_seconds),
        "declines_since": now - DECLINE_MEMORY,
        "channel": alone.channel,
        "queue": alone.queue,
        "expires_at": expires_at,
        "status": OfferStatus.PENDING,
        "preferred": alone.preferred,
        "sticky": queue.sticky_seconds > 0,
        **_skill_params(_asked_skills([queue])),
    }
    statement = _entering_and_offering(queue.strategy, len(queue.skills))
    row = driver_rows(session, statement, params).first()  # None: no such ticket
    _entered(session, config, [alone], now)
    routed = Routed(queues={alone.queue})
    if row is None:
        return routed
    placeable, declined, last_agent, last_at, chosen, offer_id = row
    if offer_id is not None:
        made = OfferMade(offer_id, alone.ticket_id, chosen, alone.queue, alone.channel, expires_at)
        routed.offers.append(made)
    elif chosen is not None:  # raced: chosen again from a fresh read
        entered = Entered(placeable, frozenset(declined), last_agent, last_at)
        routed.merge(route(session, config, [_waiting(alone, now, entered)], now))
    return routed


def _offered_alone(
    session: Session, config: RoutingConfig, requests: Sequence[RouteRequest], now: datetime
) -> RouteRequest | None:
    """The one request `enter_and_route` places in one statement, if that is what it has."""
    if len(requests) != 1 or session.get_bind().dialect.name != "postgresql":
        return None
    queue = config.queue(requests[0].queue)
    return requests[0] if queue.offers() and queue.is_open(now) else None


@lru_cache(maxsize=64)
def _entering_and_offering(strategy: Strategy, skills: int) -> Select[Any]:
    """`enter_and_route`'s statement for a queue of this strategy asking this many skills:
    `_entering`, then the candidates (`_candidate_query`) of which those with room on the
    channel who have not declined the ticket, the sticky agent first, else in the strategy's
    order (`choose_agent`), then the first claimed and offered as in `_reserving`.

    One row: the ticket's placeability, who declined it, its contact's last agent and when,
    the agent chosen (None: not placeable, or nobody has room) and the offer (None: not
    made, the agent chosen changed since the snapshot)."""
    entered = _entering().cte("entered")
    asked = [_has_skill(True, f"0_{j}") for j in range(skills)]
    sticky = func.coalesce(
        bindparam("preferred", type_=BigInteger),
        case((bindparam("sticky", type_=Boolean), entered.c.last_agent)),
    )
    choosing = _choosing_among_all if strategy is Strategy.LEAST_OCCUPIED else _choosing_in_order
    chosen = choosing(strategy, entered, sticky, asked).limit(1).cte("chosen")
    claimed = (
        select(Agent.id)
        .join(chosen, Agent.id == chosen.c.id)
        .where(Agent.presence == _AVAILABLE, chosen.c.version == _ROW_VERSION)
        .with_for_update(of=Agent)
        .cte("claimed")
    )
    offered = _offering(
        select(
            entered.c.id, claimed.c.id, bindparam("queue", type_=String),
            bindparam("channel", type_=String),
            bindparam("expires_at", type_=DateTime(timezone=True)),
        ).select_from(entered.join(claimed, true()))
    )  # fmt: skip
    return select(
        entered.c.placeable,
        entered.c.declined,
        entered.c.last_agent,
        entered.c.last_at,
        select(chosen.c.id).scalar_subquery(),
        select(offered.made.c.id).scalar_subquery(),
    ).add_cte(*offered.ctes)


def _choosing_among_all(
    strategy: Strategy, entered: CTE, sticky: ColumnElement[Any], asked: list[Any]
) -> Select[Any]:
    """The candidates who may take the ticket, in `choose_agent`'s order, every one's load
    worked out first: least occupied sorts by it."""
    # Both materialised, so that each agent's open tickets are looked up, its capacity parsed
    # and its load worked out once, not again in every expression below that uses them.
    stored = Agent.capacity.cast(JSONB).label("limits")
    read = (
        _candidate_query(True, _ROW_VERSION.label("version"), stored)
        .where(Agent.presence == _AVAILABLE, *asked)
        .order_by(None)
        .cte("read")
        .prefix_with("MATERIALIZED")
    )
    loaded = _with_load(read).cte("loaded").prefix_with("MATERIALIZED")
    return (
        select(loaded.c.id, loaded.c.version)
        .join(entered, entered.c.placeable)
        .where(loaded.c.id != all_(entered.c.declined), *_room(loaded.c))
        .order_by(
            func.coalesce(loaded.c.id == sticky, false()).desc(),
            *_strategy_order(strategy, loaded),
            loaded.c.id,
        )
    )


def _choosing_in_order(
    strategy: Strategy, entered: CTE, sticky: ColumnElement[Any], asked: list[Any]
) -> Select[Any]:
    """The candidates who may take the ticket, in `choose_agent`'s order, when that sorts by
    a time (longest idle, round robin): sorted by it first, their loads are then looked up
    one agent at a time until one has room, which the first usually has. Longest idle's ties
    on the time go by the load: PostgreSQL sorts each tie again (an incremental sort), so
    only the agents of the first ties are looked up."""
    first = func.coalesce(Agent.id == sticky, false()).label("first")
    if strategy is Strategy.LONGEST_IDLE:
        when = func.greatest(Agent.presence_since, Agent.last_assigned_at).label("when")
    else:
        when = Agent.last_offered_at.label("when")
    ordered = (
        select(
            Agent.id, _ROW_VERSION.label("version"), Agent.capacity.cast(JSONB).label("limits"),
            when, first,
        )
        .join(entered, entered.c.placeable)
        .where(Agent.presence == _AVAILABLE, Agent.id != all_(entered.c.declined), *asked)
        .order_by(first.desc(), when.asc().nulls_first(), Agent.id)
        .subquery("ordered")
    )  # fmt: skip
    held = (
        select(Ticket.channel)
        .where(Ticket.assignee_id == ordered.c.id, Ticket.status.in_(_OPEN))
        .correlate(ordered)
    )
    offered = (
        select(Offer.channel)
        .where(Offer.agent_id == ordered.c.id, Offer.status == _PENDING)
        .correlate(ordered)
    )
    # OFFSET 0 keeps PostgreSQL from inlining the lookups into every expression using them.
    load = (
        select(_load(func.array(held.scalar_subquery()), func.array(offered.scalar_subquery())))
        .offset(literal_column("0"))
        .lateral("load")
    )
    loaded = _load_columns(load.c.load, ordered.c.limits)
    tie = [loaded["open"]] if strategy is Strategy.LONGEST_IDLE else []
    return (
        select(ordered.c.id, ordered.c.version)
        .join(load, true())
        .where(*_room(loaded))
        .order_by(ordered.c.first.desc(), ordered.c.when.asc().nulls_first(), *tie, ordered.c.id)
    )


def _enter(
    session: Session, config: RoutingConfig, requests: Sequence[RouteRequest], now: datetime
) -> dict[int, Entered]:
    """PostgreSQL: the tickets enter their queues in one statement that also reads what
    `_placeable` would and the candidates of the open queues among them (two round trips
    fewer per decision); what it read, by ticket."""
    session.flush()  # the placeability below reads the tickets as this transaction left them
    longest = max(config.queue(r.queue).sticky_seconds for r in requests)
    params = {
        "ids": [r.ticket_id for r in requests],
        "queues": [r.queue for r in requests],
        "now": now,
        "since": now - timedelta(seconds=longest),
        "declines_since": now - DECLINE_MEMORY,
    }
    open_queues = [q for q in _queues(config, requests) if q.is_open(now)]
    if not open_queues:
        rows = driver_rows(session, _entering(), params)
        return {
            ticket_id: Entered(placeable, frozenset(declined), last_agent, last_at)
            for ticket_id, placeable, declined, last_agent, last_at in rows
        }
    asked = _asked_skills(open_queues)
    query = _entering_with_candidates(tuple(len(skills) for skills in asked))
    entered: list[tuple[int, bool, list[int], int | None, datetime | None]] = []
    candidate_rows = []
    for row in driver_rows(session, query, {**params, **_skill_params(asked)}):
        if row[0] is None:  # a ticket's row: the candidates' columns are empty
            entered.append(row[-5:])
        else:
            candidate_rows.append(row)
    seen = _read_candidates(candidate_rows, open_queues, postgres=True)
    return {
        ticket_id: Entered(placeable, frozenset(declined), last_agent, last_at, seen)
        for ticket_id, placeable, declined, last_agent, last_at in entered
    }


@lru_cache(maxsize=256)
def _entering_with_candidates(shape: tuple[int, ...]) -> CompoundSelect[Any]:
    """`_entering` and `_candidates_query` in one statement: the candidates' rows, then one
    row per ticket that entered (in the last five columns; the others empty)."""
    entered = _entering().cte("entered")
    candidates = _candidates_query(True, shape).order_by(None)
    width = len(candidates.selected_columns)
    statement: CompoundSelect[Any] = union_all(
        candidates.add_columns(*(null() for _ in entered.c)),
        select(*(null() for _ in range(width)), *entered.c),
    )
    return statement.add_cte(entered)


@cache
def _entering() -> Update:
    """`_enter`'s statement, built once: the tickets' ids and queues arrive as arrays."""
    entering = (
        func.unnest(
            bindparam("ids", type_=ARRAY(BigInteger)), bindparam("queues", type_=ARRAY(String))
        )
        .table_valued("id", "queue")
        .render_derived()
    )
    earlier = aliased(Offer)
    declined = select(earlier.agent_id).where(
        earlier.ticket_id == Ticket.id,
        earlier.queue == entering.c.queue,
        earlier.status.in_(_DECLINED),
        earlier.decided_at > bindparam("declines_since"),
    )
    placeable = and_(Ticket.assignee_id.is_(None), Ticket.status.in_(_OPEN), ~_pending_offer())
    table = _tickets()
    return (
        update(table)
        .where(table.c.id == entering.c.id)
        .values(waiting_since=bindparam("now"), queue=entering.c.queue)
        .returning(
            table.c.id,
            placeable.label("placeable"),
            func.array(declined.scalar_subquery()).label("declined"),
            *_last_agent(),
        )
    )


def _with_load(read: CTE) -> Select[Any]:
    """The rows of `read` (`_candidate_query`'s, the capacity as JSONB in `limits`) with each
    agent's load and capacity (`_load_columns`)."""
    load = _load(read.c.held, read.c.channels)
    return select(*read.c, *_load_columns(load, read.c.limits).values())


def _load(held: ColumnElement[Any], offered: ColumnElement[Any]) -> ColumnElement[Any]:
    """The channels of an agent's open tickets and pending offers, as one array `load`."""
    none: ColumnElement[Any] = literal_column("'{}'::varchar[]")
    return func.array_cat(held, func.coalesce(offered, none)).label("load")


def _load_columns(
    load: ColumnElement[Any], limits: ColumnElement[Any]
) -> dict[str, ColumnElement[Any]]:
    """An agent's load and capacity as `Capacity.allows` weighs them, from the channels of its
    work (`_load`) and its stored capacity (JSONB) read as `Capacity.from_json` reads it:
    `open` (open tickets and pending offers, on every channel), `total` (how many of those
    the agent may have), `on_channel` (those on the bound `channel`) and `channel_limit`
    (how many the agent may have there; NULL: no limit of its own)."""
    channel = bindparam("channel", type_=String)
    per_channel = func.jsonb_each_text(limits["channels"]).table_valued("key", "value")
    # A total of its own, else the sum of the channels' limits, else the default: JSON null
    # and an absent key are both NULL here, and no channel limits sum to NULL.
    capped = func.coalesce(
        limits["total"].astext.cast(Integer),
        select(func.sum(per_channel.c.value.cast(Integer))).scalar_subquery(),
        DEFAULT_CAPACITY.total,
    )
    columns = {
        "open": func.cardinality(load),
        "total": capped,
        "on_channel": func.cardinality(func.array_positions(load, channel)),
        "channel_limit": limits["channels"][channel].astext.cast(Integer),
    }
    return {name: column.label(name) for name, column in columns.items()}


def _room(loaded: Any) -> list[ColumnElement[bool]]:
    """`Capacity.allows` over `_load_columns`: room in total and on the channel."""
    return [
        loaded["open"] < loaded["total"],
        or_(
            loaded["channel_limit"].is_(None),
            loaded["on_channel"] < loaded["channel_limit"],
        ),
    ]


def _strategy_order(strategy: Strategy, loaded: CTE) -> list[Any]:
    """`choose_agent`'s order for the strategy, before the agent's id (`_with_load`'s rows)."""
    if strategy is Strategy.LONGEST_IDLE:
        idle_since = func.greatest(loaded.c.presence_since, loaded.c.last_assigned_at)
        return [idle_since, loaded.c.open]
    if strategy is Strategy.ROUND_ROBIN:
        return [loaded.c.last_offered_at.asc().nulls_first()]
    share = loaded.c.open.cast(Float) / loaded.c.total.cast(Float)
    return [case((loaded.c.total == 0, 1.0), else_=share), loaded.c.open]


def _after_hours(
    session: Session, config: RoutingConfig, requests: Sequence[RouteRequest], now: datetime
) -> None:
    """A closed queue that answers by itself (`auto_reply`): a timer due now, which the
    gateway's sweeper turns into the reply through the outbox, in its own transaction."""
    replying = [
        r.ticket_id
        for r in requests
        if config.queue(r.queue).after_hours is AfterHours.AUTO_REPLY
        and not config.queue(r.queue).is_open(now)
    ]
    schedule(session, [(TimerKind.AFTER_HOURS_REPLY, ticket_id, now) for ticket_id in replying])


def _waiting(request: RouteRequest, now: datetime, entered: Entered | None) -> RouteRequest:
    return RouteRequest(
        request.ticket_id,
        request.channel,
        request.queue,
        request.contact_id,
        request.priority,
        request.preferred,
        now,
        entered,
    )


def route(
    session: Session,
    config: RoutingConfig,
    requests: Sequence[RouteRequest],
    now: datetime,
    excluded: int | None = None,
) -> Routed:
    """Place waiting tickets, the most urgent first: an offer, or an assignment in queues that
    do not ask. A ticket nobody can take now waits; an agent coming free takes it later.
    `excluded` just handed these tickets back and is not given them again at once.

    The candidates are read without locks and chosen among in memory; a choice is reserved
    only if the chosen agent's row is still the one read (`_reserve`), which is what keeps
    every agent within capacity. A choice that another ingest batch changed first (two
    batches run side by side on PostgreSQL) is made again at once from a fresh read, a few
    times; then the sweeper routes it again (a `reroute` timer), so no ticket is left waiting
    beside an agent with room."""
    routed = Routed(queues={r.queue for r in requests})
    waiting = _placeable(session, config, requests, now)
    read = _read_on_entering(waiting.requests)
    for _ in range(_ATTEMPTS):
        if not waiting.requests:
            return routed
        seen = read or _candidates(session, config, waiting.requests)
        read = None
        plan = _plan(config, waiting, seen.candidates, now, excluded)
        if not plan:
            return routed
        done, raced = _reserve(session, config, plan, seen, now)
        routed.merge(done)
        waiting = replace(waiting, requests=raced)
    schedule(session, [(TimerKind.REROUTE, r.ticket_id, now) for r in waiting.requests])
    return routed


def _read_on_entering(requests: Sequence[RouteRequest]) -> _Seen | None:
    """The candidates `enqueue` read for all of these tickets (one read: they entered
    together), if it did; nothing has changed the agents since in this transaction, and the
    reservation makes sure no other did (`_reserve`)."""
    reads = {id(r.entered.seen): r.entered.seen for r in requests if r.entered is not None}
    if len(reads) != 1 or any(r.entered is None for r in requests):
        return None
    return next(iter(reads.values()))


@dataclass(frozen=True, slots=True)
class _Waiting:
    """Tickets that may be placed now, with who declined each (per queue) and their contacts'
    sticky agents."""

    requests: list[RouteRequest]
    declined: Mapping[tuple[int, str], set[int]]
    sticky: Mapping[int, int]


def _plan(
    config: RoutingConfig,
    waiting: _Waiting,
    candidates: Mapping[int, Candidate],
    now: datetime,
    excluded: int | None,
) -> dict[RouteRequest, int]:
    """`{ticket: agent}` in order of urgency, each choice counting towards the next."""
    fitting = dict(candidates)
    plan: dict[RouteRequest, int] = {}
    for request in sorted(waiting.requests, key=lambda r: -_urgency(config, r, now)):
        agent_id = choose_agent(
            config.queue(request.queue),
            request.channel,
            list(fitting.values()),
            excluded=waiting.declined.get((request.ticket_id, request.queue), set())
            | ({excluded} if excluded is not None else set()),
            sticky=request.preferred or waiting.sticky.get(request.ticket_id),
        )
        if agent_id is not None:
            plan[request] = agent_id
            fitting[agent_id] = fitting[agent_id].plus_one(request.channel, now)
    return plan


def _reserve(
    session: Session,
    config: RoutingConfig,
    plan: Mapping[RouteRequest, int],
    seen: _Seen,
    now: datetime,
) -> tuple[Routed, list[RouteRequest]]:
    """Carry out the part of the plan whose agents are as they were read; the requests whose
    agent changed since (raced), to choose for again.

    PostgreSQL: every routing step that adds to an agent's load (an offer, an assignment)
    updates the agent's row in the same transaction, so an agent whose row version (`xmin`)
    is still the one read with its load has no load the read missed. The reservation checks
    that version under the row lock, in the same statement that makes the offers: one round
    trip, where locking and counting again took three. SQLite has a single writer, so its
    read cannot be stale; there the chosen agents' load is still counted again (`_confirm`)."""
    if seen.versions is None:
        plan, raced = _confirm(session, plan, seen.candidates, now)
        return _carry_out(session, config, plan, now), raced
    routed = _carry_out(session, config, plan, now, seen.versions)
    placed = routed.assigned.keys() | {o.ticket_id for o in routed.offers}
    return routed, [r for r in plan if r.ticket_id not in placed]


def _confirm(
    session: Session,
    plan: Mapping[RouteRequest, int],
    candidates: Mapping[int, Candidate],
    now: datetime,
) -> tuple[dict[RouteRequest, int], list[RouteRequest]]:
    """Lock the chosen agents and count their load again: the part of the plan that still
    fits, and the requests whose agent left or filled up since it was read."""
    locked = _lock_available(session, set(plan.values()))
    loads = _loads(session, locked)
    fresh = {a: replace(candidates[a], load=loads[a]) for a in locked}
    kept: dict[RouteRequest, int] = {}
    raced: list[RouteRequest] = []
    for request, agent_id in plan.items():
        agent = fresh.get(agent_id)
        if agent is None or not agent.has_room(request.channel):
            raced.append(request)
            continue
        kept[request] = agent_id
        fresh[agent_id] = agent.plus_one(request.channel, now)
    return kept, raced


def _urgency(config: RoutingConfig, request: RouteRequest, now: datetime) -> float:
    waited = (now - request.waiting_since).total_seconds() if request.waiting_since else 0.0
    return urgency(config.queue(request.queue), request.priority, waited)


def _placeable(
    session: Session, config: RoutingConfig, requests: Sequence[RouteRequest], now: datetime
) -> _Waiting:
    """Those still waiting (locked, in id order), without a pending offer, in an open queue;
    in the same statement who declined them and the contact's last agent (sticky window).
    For tickets that `enqueue` just put in their queue on PostgreSQL, what it read then."""
    closed = {r.queue for r in requests if not config.queue(r.queue).is_open(now)}
    _await_opening(session, config, closed, now)
    requests = [r for r in requests if r.queue not in closed]
    windows = {r.ticket_id: config.queue(r.queue).sticky_seconds for r in requests}
    free: set[int] = set()
    declined: dict[tuple[int, str], set[int]] = defaultdict(set)
    sticky: dict[int, int] = {}

    def last_agent(ticket_id: int, agent_id: int | None, at: datetime | None) -> None:
        window = timedelta(seconds=windows[ticket_id])
        if window and agent_id is not None and at is not None and at >= now - window:
            sticky[ticket_id] = agent_id

    for request in requests:
        entered = request.entered
        if entered is not None and entered.placeable:
            free.add(request.ticket_id)
            declined[(request.ticket_id, request.queue)].update(entered.declined)
            last_agent(request.ticket_id, entered.last_agent, entered.last_at)
    unread = sorted(r.ticket_id for r in requests if r.entered is None)
    if unread:
        longest = max(windows[ticket_id] for ticket_id in unread)
        query = _placeable_query(sticky=longest > 0)
        params: dict[str, Any] = {"ids": unread, "declines_since": now - DECLINE_MEMORY}
        if longest:
            params["since"] = now - timedelta(seconds=longest)
        for ticket_id, agent_id, queue, *last in session.execute(query, params):
            free.add(ticket_id)
            if agent_id is not None:
                declined[(ticket_id, queue)].add(agent_id)
            if last:
                last_agent(ticket_id, *last)
    return _Waiting([r for r in requests if r.ticket_id in free], declined, sticky)


def _await_opening(
    session: Session, config: RoutingConfig, queues: Collection[str], now: datetime
) -> None:
    """Tickets wait in these closed queues: a timer for each queue's next opening, unless one
    as early is set already (two processes may both set one; a second firing finds nothing
    left to do)."""
    ids = {config.ids[name]: name for name in queues if name in config.ids}
    if not ids:
        return
    query = (
        select(RoutingTimer.subject_id, func.min(RoutingTimer.due_at))
        .where(RoutingTimer.kind == TimerKind.QUEUE_OPENS, RoutingTimer.subject_id.in_(ids))
        .group_by(RoutingTimer.subject_id)
    )
    set_for = {queue_id: due for queue_id, due in session.execute(query)}
    timers = []
    for queue_id, name in ids.items():
        opening = config.queue(name).next_opening(now)
        if opening is not None and (queue_id not in set_for or set_for[queue_id] > opening):
            timers.append((TimerKind.QUEUE_OPENS, queue_id, opening))
    schedule(session, timers)


def opened(session: Session, config: RoutingConfig, queue_id: int, now: datetime) -> Routed:
    """A queue's hours began: the tickets that waited in it are placed, the longest waiting
    first. While all of a batch find agents, the next batch follows at the next sweep."""
    name = config.queue_named_by(queue_id)
    if name is None:
        return Routed()
    query = (
        select(Ticket.id, Ticket.channel, Ticket.queue, Ticket.contact_id, Ticket.priority,
               Ticket.waiting_since)
        .where(
            Ticket.queue == name,
            Ticket.waiting_since.is_not(None),
            Ticket.assignee_id.is_(None),
            Ticket.status.in_(_OPEN),
            ~_pending_offer(),
        )
        .order_by(Ticket.waiting_since, Ticket.id)
        .limit(_OPENING_BATCH + 1)
    )  # fmt: skip
    waiting = [RouteRequest(*row[:5], waiting_since=row[5]) for row in session.execute(query)]
    batch = waiting[:_OPENING_BATCH]
    routed = route(session, config, batch, now)
    if len(waiting) > len(batch) and len(routed.offers) + len(routed.assigned) == len(batch):
        schedule(session, [(TimerKind.QUEUE_OPENS, queue_id, now)])
    return routed


@cache
def _placeable_query(sticky: bool) -> Select[Any]:
    """`_placeable`'s statement, built once (the hot path): `ids`, and `since` when a queue
    has a sticky window, are bound at each execution."""
    earlier = aliased(Offer)
    return (
        select(Ticket.id, earlier.agent_id, earlier.queue, *(_last_agent() if sticky else ()))
        .outerjoin(
            earlier,
            (earlier.ticket_id == Ticket.id)
            & earlier.status.in_(_DECLINED)
            & (earlier.decided_at > bindparam("declines_since")),
        )
        .where(
            Ticket.id.in_(bindparam("ids", expanding=True)),
            Ticket.assignee_id.is_(None),
            Ticket.status.in_(_OPEN),
            ~_pending_offer(),
        )
        .order_by(Ticket.id)
        .with_for_update(of=Ticket)
    )


def _last_agent() -> list[Any]:
    """Who last took one of the ticket's contact's tickets since `since`, and when."""
    earlier = aliased(Ticket)
    last = (
        select(earlier.assignee_id)
        .where(
            earlier.contact_id == Ticket.contact_id,
            earlier.assignee_id.is_not(None),
            earlier.assigned_at >= bindparam("since"),
        )
        .order_by(earlier.assigned_at.desc(), earlier.id.desc())
        .limit(1)
    )
    return [
        last.scalar_subquery().label("last_agent"),
        last.with_only_columns(earlier.assigned_at).scalar_subquery().label("last_at"),
    ]


def _pending_offer() -> Any:
    return exists().where(Offer.ticket_id == Ticket.id, Offer.status == _PENDING)


def _carry_out(
    session: Session,
    config: RoutingConfig,
    plan: Mapping[RouteRequest, int],
    now: datetime,
    versions: Mapping[int, str] | None = None,
) -> Routed:
    """Offers, or assignments in queues that do not ask. With `versions` (PostgreSQL, the
    agents' row versions as read), only for agents still available and unchanged since."""
    offering = {r: a for r, a in plan.items() if config.queue(r.queue).offers()}
    direct = {r: a for r, a in plan.items() if r not in offering}
    routed = Routed()
    routed.offers = _make_offers(session, config, offering, now, versions)
    routed.assigned = _assign(session, config, direct, now, versions)
    return routed


def _make_offers(
    session: Session,
    config: RoutingConfig,
    plan: Mapping[RouteRequest, int],
    now: datetime,
    versions: Mapping[int, str] | None,
) -> list[OfferMade]:
    if not plan:
        return []
    expiry = {r: now + config.queue(r.queue).offer_timeout() for r in plan}
    if session.get_bind().dialect.name == "postgresql":
        ids = _reserve_in_one_statement(session, plan, expiry, now, versions)
    else:
        rows = [
            {
                "ticket_id": r.ticket_id,
                "agent_id": agent_id,
                "queue": r.queue,
                "channel": r.channel,
                "status": OfferStatus.PENDING,
                "created_at": now,
                "expires_at": expiry[r],
            }
            for r, agent_id in plan.items()
        ]
        agents = sorted(set(plan.values()))
        returning = insert(Offer).returning(Offer.id, sort_by_parameter_order=True)
        made = session.execute(returning, rows).scalars()
        ids = dict(zip([r.ticket_id for r in plan], made, strict=True))
        due = [(TimerKind.OFFER_EXPIRY, ids[r.ticket_id], expiry[r]) for r in plan]
        schedule(session, due)
        session.execute(update(Agent).where(Agent.id.in_(agents)).values(last_offered_at=now))
    return [
        OfferMade(ids[r.ticket_id], r.ticket_id, agent_id, r.queue, r.channel, expiry[r])
        for r, agent_id in plan.items()
        if r.ticket_id in ids
    ]


def _reserve_in_one_statement(
    session: Session,
    plan: Mapping[RouteRequest, int],
    expiry: Mapping[RouteRequest, datetime],
    now: datetime,
    versions: Mapping[int, str] | None,
) -> dict[int, int]:
    """PostgreSQL: the chosen agents claimed (`_claimed`), then the offers of those claimed,
    their expiry timers and the agents' time of their last offer, all in one statement
    rather than a round trip each on the hot path; `{ticket: offer}` of the offers made."""
    params: dict[str, Any] = {
        "ticket_id": [r.ticket_id for r in plan],
        "agent_id": list(plan.values()),
        "queue": [r.queue for r in plan],
        "channel": [r.channel for r in plan],
        "expires_at": [expiry[r] for r in plan],
        "status": OfferStatus.PENDING,
        "now": now,
        **_claim_params(plan.values(), versions),
    }
    made = driver_rows(session, _reserving(), params)
    return {ticket_id: offer_id for ticket_id, offer_id in made}


def _plain(session: Session) -> Connection:
    """The session's connection, for the hot path's statements after the tickets are locked:
    they give plain rows, so the ORM's own work per statement (autoflush, loading results)
    is left out; nothing is pending to flush between them."""
    return session.connection()


def _claim_params(agent_ids: Collection[int], versions: Mapping[int, str] | None) -> dict[str, Any]:
    """The agents to claim, in id order, each with the row version it must still have (None:
    already locked by this transaction, as `fill_agent` does)."""
    ids = sorted(set(agent_ids))
    seen = [versions.get(a) if versions is not None else None for a in ids]
    return {"claim_ids": ids, "claim_versions": seen}


# PostgreSQL: an agent row's version; every update of the row, whoever makes it, changes it.
_ROW_VERSION = literal_column("agents.xmin::text", String)


def _claimed() -> CTE:
    """The agents of `claim_ids` still available and, where `claim_versions` gives one, at
    that row version, locked in id order (the order every routing step takes agents in).

    Under the lock PostgreSQL checks the conditions again on the newest version of the row
    (READ COMMITTED), so an agent that a batch committing meanwhile offered or assigned
    something to is not claimed."""
    seen = (
        func.unnest(
            bindparam("claim_ids", type_=ARRAY(BigInteger)),
            bindparam("claim_versions", type_=ARRAY(String)),
        )
        .table_valued("id", "version")
        .render_derived()
    )
    return (
        select(Agent.id)
        .join(seen, Agent.id == seen.c.id)
        .where(
            Agent.presence == _AVAILABLE,
            or_(seen.c.version.is_(None), seen.c.version == _ROW_VERSION),
        )
        .order_by(Agent.id)
        .with_for_update(of=Agent)
        .cte("claimed")
    )


@cache
def _reserving() -> Select[Any]:
    """The statement of `_reserve_in_one_statement`, built once: the rows arrive as arrays
    (`unnest`), so that its compiled form is cached (a multi-row VALUES never is)."""
    columns: dict[str, ARRAY[Any]] = {
        "ticket_id": ARRAY(BigInteger),
        "agent_id": ARRAY(BigInteger),
        "queue": ARRAY(String),
        "channel": ARRAY(String),
        "expires_at": ARRAY(DateTime(timezone=True)),
    }
    arrays = [bindparam(name, type_=kind) for name, kind in columns.items()]
    planned = func.unnest(*arrays).table_valued(*columns).render_derived()
    claimed = _claimed()
    offered = _offering(select(*planned.c).where(planned.c.agent_id.in_(select(claimed.c.id))))
    return select(offered.made.c.ticket_id, offered.made.c.id).add_cte(*offered.ctes)


@dataclass(frozen=True, slots=True)
class _Offering:
    made: CTE  # the offers: id, ticket_id, agent_id, expires_at
    ctes: tuple[CTE, ...]  # what else the statement must run: the timers, the agents' stamp


def _offering(planned: Select[Any]) -> _Offering:
    """The offers of `planned`'s rows (ticket, agent, queue, channel, expiry; `status` and
    `now` bound), their expiry timers and the agents' time of their last offer."""
    made = (
        insert(Offer)
        .from_select(
            ["ticket_id", "agent_id", "queue", "channel", "expires_at", "status", "created_at"],
            planned.add_columns(bindparam("status", type_=String), bindparam("now")),
        )
        .returning(Offer.id, Offer.ticket_id, Offer.agent_id, Offer.expires_at)
        .cte("made")
    )
    kind = literal(TimerKind.OFFER_EXPIRY.value, String)
    timers = insert(RoutingTimer).from_select(
        ["kind", "subject_id", "due_at"], select(kind, made.c.id, made.c.expires_at)
    )
    touched = (
        update(Agent)
        .where(Agent.id.in_(select(made.c.agent_id)))
        .values(last_offered_at=bindparam("now"))
    )
    return _Offering(made, (timers.cte("timers"), touched.cte("touched")))


@cache
def _claiming() -> Update:
    """PostgreSQL: claim agents for assignments (`_claimed`) and stamp that they took
    tickets, in one statement; the ids claimed."""
    claimed = _claimed()
    return (
        update(Agent)
        .where(Agent.id.in_(select(claimed.c.id)))
        .values(last_assigned_at=bindparam("now"), missed_offers=0)
        .returning(Agent.id)
    )


def _assign(
    session: Session,
    config: RoutingConfig,
    plan: Mapping[RouteRequest, int],
    now: datetime,
    versions: Mapping[int, str] | None,
) -> dict[int, int]:
    """Give tickets to agents in one statement, only where nobody holds them yet."""
    if not plan:
        return {}
    if versions is not None:
        params = {"now": now, **_claim_params(plan.values(), versions)}
        claimed = set(driver_rows(session, _claiming(), params).scalars())
        plan = {r: a for r, a in plan.items() if a in claimed}
    assigned = set_assignees(session, {r.ticket_id: a for r, a in plan.items()}, now)
    taken = [r for r in plan if r.ticket_id in assigned]
    stats.record(
        session, [stats.answered(config.queue(r.queue), r.waiting_since, now) for r in taken]
    )
    if versions is None:
        _took_tickets(session, set(assigned.values()), now)
    return assigned


def set_assignees(session: Session, plan: Mapping[int, int], now: datetime) -> dict[int, int]:
    """Apply `{ticket: agent}` where nobody holds the ticket yet; the ones that landed.

    That guard is what keeps one ticket from being assigned twice; the tickets it refused
    (taken meanwhile by another process) are left out of the answer.
    """
    if not plan:
        return {}
    table = _tickets()
    values = {
        "assigned_at": now,
        "updated_at": now,
        "status": TicketStatus.OPEN,
        "waiting_since": None,
    }
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
    return dict(plan)


def _took_tickets(session: Session, agent_ids: Collection[int], now: datetime) -> None:
    if agent_ids:
        session.execute(
            update(Agent)
            .where(Agent.id.in_(agent_ids))
            .values(last_assigned_at=now, missed_offers=0)
        )


# --- candidates -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Seen:
    """The candidates as read, by id; on PostgreSQL with their rows' versions, which the
    reservation checks (`_reserve`); None on SQLite."""

    candidates: dict[int, Candidate]
    versions: dict[int, str] | None


def _candidates(session: Session, config: RoutingConfig, requests: Sequence[RouteRequest]) -> _Seen:
    """The available agents who qualify for one of the requests' queues, with their load,
    read without locks (`_reserve` makes sure they did not change)."""
    queues = _queues(config, requests)
    asked = _asked_skills(queues)
    postgres = session.get_bind().dialect.name == "postgresql"
    query = _candidates_query(postgres, tuple(len(skills) for skills in asked))
    rows = _plain(session).execute(query, _skill_params(asked))
    return _read_candidates(rows, queues, postgres)


def _queues(config: RoutingConfig, requests: Sequence[RouteRequest]) -> list[QueueConfig]:
    """The requests' queues, each once, in the order they first appear."""
    return list({r.queue: config.queue(r.queue) for r in requests}.values())


def _asked_skills(queues: Sequence[QueueConfig]) -> list[list[tuple[str, int]]]:
    return [sorted(q.skills.items()) for q in queues]


def _skill_params(asked: Sequence[Sequence[tuple[str, int]]]) -> dict[str, Any]:
    """The skills and levels of `_candidates_query`, bound at each execution."""
    return {
        name: value
        for i, skills in enumerate(asked)
        for j, (skill, level) in enumerate(skills)
        for name, value in ((f"skill_{i}_{j}", skill), (f"level_{i}_{j}", level))
    }


def _read_candidates(rows: Iterable[Any], queues: Sequence[QueueConfig], postgres: bool) -> _Seen:
    """The candidates from the rows of `_candidates_query`, which also say which of the
    queues each qualifies for; its skills are then taken as what those queues ask (each at
    the highest level asked), which is all that choosing among them looks at."""
    skills: dict[tuple[bool, ...], dict[str, int]] = {}
    candidates: dict[int, Candidate] = {}
    versions: dict[int, str] = {}
    fits_from = 7 + postgres
    fits_to = fits_from + len(queues)
    for row in rows:
        fits = tuple(row[fits_from:fits_to])
        if fits not in skills:
            skills[fits] = _asked([q for q, fit in zip(queues, fits, strict=True) if fit])
        candidates[row[0]] = _candidate(row, skills[fits])
        if postgres:
            versions[row[0]] = row[7]
    return _Seen(candidates, versions if postgres else None)


@lru_cache(maxsize=256)
def _candidates_query(postgres: bool, shape: tuple[int, ...]) -> Select[Any]:
    """`_candidates`' statement for queues asking this many skills each, built once: the
    skills and levels are bound at each execution (`skill_<queue>_<n>`, `level_<queue>_<n>`)."""
    fits = [
        and_(true(), *(_has_skill(postgres, f"{i}_{j}") for j in range(count)))
        for i, count in enumerate(shape)
    ]
    # PostgreSQL: the row's version with it (`_reserve`).
    version = [_ROW_VERSION] if postgres else []
    # With one queue (a single decision) every agent read fits it: no need to test again.
    says = fits if len(fits) > 1 else [true()]
    return _candidate_query(postgres, *version, *says).where(
        Agent.presence == _AVAILABLE, or_(*fits)
    )


def _has_skill(postgres: bool, key: str) -> ColumnElement[bool]:
    """PostgreSQL reads `= ANY(ARRAY(…))` as an index lookup of the few ids; for `IN (…)` its
    planner scans every agent (10 times slower with 10,000 agents)."""
    ids = select(AgentSkill.agent_id).where(
        AgentSkill.skill == bindparam(f"skill_{key}"),
        AgentSkill.level >= bindparam(f"level_{key}"),
    )
    if postgres:
        return Agent.id == any_(func.array(ids.scalar_subquery()))
    return Agent.id.in_(ids)


def _asked(queues: Sequence[QueueConfig]) -> dict[str, int]:
    skills: dict[str, int] = {}
    for queue in queues:
        for skill, level in queue.skills.items():
            skills[skill] = max(level, skills.get(skill, 0))
    return skills


def _candidate_query(postgres: bool, *columns: ColumnElement[Any]) -> Select[Any]:
    """One row per agent: what the strategies sort by and the channels of its open tickets
    and of its pending offers (both take up capacity), then `columns`.

    The pending offers are grouped once per statement, not looked up per agent: per agent,
    PostgreSQL tends to scan the whole partial index of pending offers each time (its
    statistics see few of them, and a busy centre has thousands)."""
    held: ColumnElement[Any]
    as_list: ColumnElement[Any]
    channels = select(Ticket.channel).where(
        Ticket.assignee_id == Agent.id, Ticket.status.in_(_OPEN)
    )
    if postgres:  # arrays, which the driver decodes itself, rather than JSON to parse
        held = func.array(channels.scalar_subquery(), type_=NullType())
        as_list = func.array_agg(Offer.channel, type_=NullType())
    else:
        as_json = func.json_group_array(Ticket.channel, type_=JSON)
        held = channels.with_only_columns(as_json).scalar_subquery()
        as_list = func.json_group_array(Offer.channel, type_=JSON)
    offered = (
        select(Offer.agent_id, as_list.label("channels"))
        .where(Offer.status == _PENDING)
        .group_by(Offer.agent_id)
        .subquery("offered")
    )
    return (
        select(
            Agent.id, Agent.capacity.cast(String).label("capacity"), Agent.presence_since,
            Agent.last_assigned_at, Agent.last_offered_at, held.label("held"),
            offered.c.channels, *columns,
        )
        .outerjoin(offered, offered.c.agent_id == Agent.id)
        .order_by(Agent.id)
    )  # fmt: skip


def _candidate(row: Any, skills: Mapping[str, int]) -> Candidate:
    agent_id, capacity, since, assigned, last_offered, held, offered = row[:7]
    load: dict[str, int] = {}
    for channel in (*(held or ()), *(offered or ())):
        load[channel] = load.get(channel, 0) + 1
    return Candidate(
        agent_id,
        _capacity(capacity),
        load,
        skills,
        idle_since=max(since, assigned) if assigned else since,
        last_offered_at=last_offered or NEVER,
    )


@lru_cache(maxsize=256)
def _capacity(stored: str | None) -> Capacity:
    """`Capacity.from_json` of the stored JSON's text, remembered: the agents of a centre
    share a few capacities, and every decision reads a hundred candidates afresh (read as
    text, a row costs a dictionary look-up rather than a JSON parse)."""
    return Capacity.from_json(json.loads(stored) if stored else None)


def _lock_available(session: Session, agent_ids: Collection[int]) -> list[int]:
    """Lock these agents' rows in id order (the order every routing step takes agents in);
    the ones still available."""
    return list(session.execute(_LOCK_AVAILABLE, {"ids": sorted(agent_ids)}).scalars())


_LOCK_AVAILABLE = (
    select(Agent.id)
    .where(Agent.id.in_(bindparam("ids", expanding=True)), Agent.presence == Presence.AVAILABLE)
    .order_by(Agent.id)
    .with_for_update()
)


def _loads(session: Session, ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Open tickets and pending offers per agent and channel: both take up capacity."""
    per_channel: dict[int, dict[str, int]] = {agent_id: {} for agent_id in ids}
    if not ids:
        return per_channel
    rows: Result[Any] = session.execute(_LOADS, {"ids": list(ids)})
    for agent_id, channel in cast(Sequence[tuple[int, str]], rows.all()):
        load = per_channel[agent_id]
        load[channel] = load.get(channel, 0) + 1
    return per_channel


_LOADS: CompoundSelect[Any] = union_all(
    select(Ticket.assignee_id, Ticket.channel).where(
        Ticket.assignee_id.in_(bindparam("ids", expanding=True)),
        Ticket.status.in_(_OPEN),
    ),
    select(Offer.agent_id, Offer.channel).where(
        Offer.agent_id.in_(bindparam("ids", expanding=True)),
        Offer.status == _PENDING,
    ),
)


# --- an agent comes free --------------------------------------------------------------------


def fill_agent(
    session: Session,
    config: RoutingConfig,
    agent_id: int,
    now: datetime,
    skip: Collection[int] = (),
) -> Routed:
    """Give an available agent with room the most urgent waiting tickets it may take (not
    those it declined in their queue within `DECLINE_MEMORY`, nor `skip`: tickets it just
    handed back)."""
    if not _lock_available(session, [agent_id]):
        return Routed()
    postgres = session.get_bind().dialect.name == "postgresql"
    (row,) = session.execute(_candidate_query(postgres).where(Agent.id == agent_id))
    levels = select(AgentSkill.skill, AgentSkill.level).where(AgentSkill.agent_id == agent_id)
    agent = _candidate(row, {skill: level for skill, level in session.execute(levels)})
    unfit = [q.name for q in config.queues.values() if not agent.qualifies(q) or not q.is_open(now)]
    declined = exists().where(
        Offer.ticket_id == Ticket.id,
        Offer.agent_id == agent_id,
        Offer.queue == Ticket.queue,
        Offer.status.in_(_DECLINED),
        Offer.decided_at > now - DECLINE_MEMORY,
    )
    query = (
        select(Ticket.id, Ticket.channel, Ticket.queue, Ticket.contact_id, Ticket.priority,
               Ticket.waiting_since)
        .where(
            Ticket.waiting_since.is_not(None),
            Ticket.assignee_id.is_(None),
            Ticket.status.in_(_OPEN),
            Ticket.queue.not_in(unfit),
            ~_pending_offer(),
            ~declined,
            Ticket.id.not_in(skip),
        )
        .order_by(Ticket.waiting_since, Ticket.id)
        .limit(_FILL_WINDOW)
        .with_for_update(skip_locked=True)
    )  # fmt: skip
    waiting = [RouteRequest(*row[:5], waiting_since=row[5]) for row in session.execute(query)]
    waiting.sort(key=lambda r: -_urgency(config, r, now))
    plan: dict[RouteRequest, int] = {}
    for request in waiting:
        if agent.has_room(request.channel):
            plan[request] = agent_id
            agent = agent.plus_one(request.channel, now)
    routed = _carry_out(session, config, plan, now)
    routed.queues = {r.queue for r in plan}
    return routed


def fill_agents(
    session: Session,
    config: RoutingConfig,
    agent_ids: Collection[int],
    now: datetime,
    skip: Collection[int] = (),
) -> Routed:
    """Room came free for these agents (an offer rejected, timed out or withdrawn, a ticket
    resolved or taken away): each takes waiting tickets in this same transaction, in id
    order (the order agents are locked in), so no ticket waits beside an agent with room."""
    routed = Routed()
    for agent_id in sorted(set(agent_ids)):
        routed.merge(fill_agent(session, config, agent_id, now, skip))
    return routed


# --- offers settled -------------------------------------------------------------------------


def _lock_offer(session: Session, offer_id: int) -> Offer | None:
    return session.execute(
        select(Offer).where(Offer.id == offer_id).with_for_update()
    ).scalar_one_or_none()


def accept(
    session: Session, config: RoutingConfig, offer_id: int, agent_id: int, now: datetime
) -> int:
    """The agent takes the offered ticket; its id. `OfferGone` if that is no longer possible."""
    offer = _lock_offer(session, offer_id)
    if (
        offer is None
        or offer.agent_id != agent_id
        or offer.status != OfferStatus.PENDING
        or offer.expires_at <= now
    ):
        raise OfferGone(offer_id)
    offer.status, offer.decided_at = OfferStatus.ACCEPTED, now
    ticket = session.execute(
        select(Ticket).where(Ticket.id == offer.ticket_id).with_for_update()
    ).scalar_one()
    waited_since = ticket.waiting_since
    if not set_assignees(session, {ticket.id: agent_id}, now):
        raise OfferGone(offer_id)
    stats.record(session, [stats.answered(config.queue(offer.queue), waited_since, now)])
    _took_tickets(session, [agent_id], now)
    cancel(session, TimerKind.OFFER_EXPIRY, [offer_id])
    return ticket.id


def reject(
    session: Session, config: RoutingConfig, offer_id: int, agent_id: int, now: datetime
) -> Routed:
    """The agent declines: the ticket goes to the next agent (not back to this one within
    `DECLINE_MEMORY`), and the room the offer held goes to another waiting ticket."""
    offer = _lock_offer(session, offer_id)
    if offer is None or offer.agent_id != agent_id or offer.status != OfferStatus.PENDING:
        raise OfferGone(offer_id)
    offer.status, offer.decided_at = OfferStatus.REJECTED, now
    cancel(session, TimerKind.OFFER_EXPIRY, [offer_id])
    session.flush()
    routed = reroute(session, config, [offer.ticket_id], now)
    return routed.merge(fill_agent(session, config, agent_id, now))


def expire(session: Session, config: RoutingConfig, offer_id: int, now: datetime) -> Routed:
    """An offer timed out: a miss for the agent (away after the queue's limit), next agent;
    an agent still available gets another waiting ticket for the room the offer held."""
    offer = _lock_offer(session, offer_id)
    if offer is None or offer.status != OfferStatus.PENDING:
        return Routed()
    offer.status, offer.decided_at = OfferStatus.EXPIRED, now
    agent = session.execute(
        select(Agent).where(Agent.id == offer.agent_id).with_for_update()
    ).scalar_one()
    agent.missed_offers += 1
    session.flush()
    routed = reroute(session, config, [offer.ticket_id], now)
    if agent.missed_offers >= config.queue(offer.queue).misses_before_away:
        agent.missed_offers = 0
        routed.merge(set_presence(session, config, agent.id, Presence.AWAY, now))
    else:
        routed.merge(fill_agent(session, config, agent.id, now))
    return routed


def set_presence(
    session: Session,
    config: RoutingConfig,
    agent_id: int,
    state: Presence,
    now: datetime,
    until: datetime | None = None,
) -> Routed:
    """An agent's presence changes (console, API, CTI, timer). Coming available takes waiting
    tickets; leaving hands pending offers on; after-call work ends by itself at `until`."""
    if not presence.change(session, [agent_id], state, now):
        return Routed()
    if state is Presence.AFTER_CALL_WORK and until is not None:
        schedule(session, [(TimerKind.AFTER_CALL_WORK, agent_id, until)])
    if state is Presence.AVAILABLE:
        routed = fill_agent(session, config, agent_id, now)
    else:
        routed = withdraw_offers(session, config, agent_id, now)
    routed.presence[agent_id] = state
    return routed


def withdraw_offers(
    session: Session, config: RoutingConfig, agent_id: int, now: datetime
) -> Routed:
    """An agent left (away, offline): its pending offers go to others, not counted as misses."""
    offers = list(
        session.execute(
            select(Offer)
            .where(Offer.agent_id == agent_id, Offer.status == OfferStatus.PENDING)
            .order_by(Offer.id)
            .with_for_update()
        ).scalars()
    )
    if not offers:
        return Routed()
    for offer in offers:
        offer.status, offer.decided_at = OfferStatus.WITHDRAWN, now
    cancel(session, TimerKind.OFFER_EXPIRY, [o.id for o in offers])
    session.flush()
    return reroute(session, config, [o.ticket_id for o in offers], now)


def reroute(
    session: Session, config: RoutingConfig, ticket_ids: Sequence[int], now: datetime
) -> Routed:
    """Place tickets already waiting again (after a reject, timeout, move or withdrawal)."""
    rows = session.execute(
        select(Ticket.id, Ticket.channel, Ticket.queue, Ticket.contact_id, Ticket.priority,
               Ticket.waiting_since)
        .where(Ticket.id.in_(ticket_ids), Ticket.waiting_since.is_not(None))
    )  # fmt: skip
    requests = [RouteRequest(*row[:5], waiting_since=row[5]) for row in rows]
    return route(session, config, requests, now)


# A waiting ticket's place in the sweep's order: (waiting since, id).
SweepPlace = tuple[datetime, int]


def stragglers(
    session: Session,
    config: RoutingConfig,
    waiting_since: datetime,
    limit: int,
    now: datetime,
    after: SweepPlace | None = None,
) -> list[SweepPlace]:
    """Tickets waiting since before `waiting_since` with no offer pending, in queues open
    `now`, the oldest first, from past `after` when given: their places in that order.

    On PostgreSQL a ticket being placed just as an agent comes free in another transaction
    can find that agent still full, while the agent's look for waiting tickets skips it
    (`SKIP LOCKED`: the placing held it); and a ticket every agent declined waits until its
    declines are older than `DECLINE_MEMORY`. The sweeper places these again now and then, so
    no ticket is left beside an agent with room for longer than that.

    It goes round them all, `limit` at a time (each sweep after the last one's place): the
    oldest are often tickets no agent can take (nobody has the skill, or all are full), and
    a sweep that always began with them would never reach the rest. Tickets in a closed
    queue are left to its opening: at night they would be most of what there is to go round."""
    closed = [name for name, queue in config.queues.items() if not queue.is_open(now)]
    place = tuple_(Ticket.waiting_since, Ticket.id)
    query = (
        select(Ticket.waiting_since, Ticket.id)
        .where(
            Ticket.waiting_since <= waiting_since,
            Ticket.queue.not_in(closed),
            ~_pending_offer(),
        )
        .order_by(Ticket.waiting_since, Ticket.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(place > tuple_(literal(after[0], Ticket.waiting_since.type), after[1]))
    return [(since, ticket_id) for since, ticket_id in session.execute(query) if since]


def pending_offers(session: Session, agent_id: int) -> list[OfferMade]:
    """An agent's open offers, for a console that (re)connects."""
    return _pending(session, Offer.agent_id == agent_id)


def offers_pending_since(session: Session, made_before: datetime) -> list[OfferMade]:
    """Open offers made before a moment: those a process that died between its commit and
    its publish would otherwise leave unseen until they expire."""
    return _pending(session, Offer.created_at <= made_before)


def _pending(session: Session, condition: Any) -> list[OfferMade]:
    rows = session.execute(
        select(Offer).where(condition, Offer.status == OfferStatus.PENDING).order_by(Offer.id)
    ).scalars()
    return [
        OfferMade(o.id, o.ticket_id, o.agent_id, o.queue, o.channel, o.expires_at) for o in rows
    ]


# --- tickets moved or closed by hand --------------------------------------------------------


def move(
    session: Session, config: RoutingConfig, ticket: Ticket, queue: str, now: datetime
) -> Routed:
    """A ticket goes to another queue (a supervisor, or overflow): a pending offer is
    withdrawn, it counts as offered there and is placed anew, keeping how long it waited."""
    if ticket.queue == queue:
        return Routed()
    routed = Routed(queues={ticket.queue, queue})
    freed = withdraw_ticket_offers(session, [ticket.id], now)
    cancel(session, TimerKind.OVERFLOW, [ticket.id])
    ticket.queue = queue
    if ticket.waiting_since is None or ticket.assignee_id is not None:
        return routed.merge(fill_agents(session, config, freed, now))
    stats.record(session, [stats.offered(config.queue(queue), now)])
    _schedule_overflow(session, config, [(ticket.id, queue)], now)
    session.flush()
    routed.merge(reroute(session, config, [ticket.id], now))
    return routed.merge(fill_agents(session, config, freed, now))


def overflow(session: Session, config: RoutingConfig, ticket_id: int, now: datetime) -> Routed:
    """The ticket waited its queue's maximum: on to the fallback queue."""
    ticket = session.execute(
        select(Ticket).where(Ticket.id == ticket_id).with_for_update()
    ).scalar_one_or_none()
    if ticket is None or ticket.waiting_since is None or ticket.assignee_id is not None:
        return Routed()
    fallback = config.queue(ticket.queue).fallback_queue
    return move(session, config, ticket, fallback, now) if fallback else Routed()


def closed(session: Session, config: RoutingConfig, ticket: Ticket, now: datetime) -> list[int]:
    """A ticket was resolved or closed: abandoned if it was still waiting, handled if held.
    The agents whose offer of it was withdrawn (they have room again)."""
    freed: list[int] = []
    if ticket.waiting_since is not None and ticket.assignee_id is None:
        stats.record(session, [stats.abandoned(config.queue(ticket.queue), now)])
        freed = withdraw_ticket_offers(session, [ticket.id], now)
        cancel(session, TimerKind.OVERFLOW, [ticket.id])
    elif ticket.assignee_id is not None:
        stats.record(session, [stats.handled(config.queue(ticket.queue), ticket.assigned_at, now)])
    ticket.waiting_since = None
    return freed


def withdraw_ticket_offers(session: Session, ticket_ids: Sequence[int], now: datetime) -> list[int]:
    """Withdraw the tickets' pending offers; the agents they were made to, whose room is free
    again (the caller fills it: `fill_agents`)."""
    withdrawn = session.execute(
        update(Offer)
        .where(Offer.ticket_id.in_(ticket_ids), Offer.status == OfferStatus.PENDING)
        .values(status=OfferStatus.WITHDRAWN, decided_at=now)
        .returning(Offer.id, Offer.agent_id)
    ).all()
    cancel(session, TimerKind.OFFER_EXPIRY, [offer_id for offer_id, _ in withdrawn])
    return [agent_id for _, agent_id in withdrawn]


# --- timers ---------------------------------------------------------------------------------


def schedule(session: Session, timers: Sequence[tuple[TimerKind, int, datetime]]) -> None:
    if timers:
        session.execute(
            insert(RoutingTimer),
            [{"kind": kind, "subject_id": subject, "due_at": due} for kind, subject, due in timers],
        )


def cancel(session: Session, kind: TimerKind, subject_ids: Collection[int]) -> None:
    if subject_ids:
        session.execute(
            delete(RoutingTimer).where(
                RoutingTimer.kind == kind, RoutingTimer.subject_id.in_(subject_ids)
            )
        )


def any_due(session: Session, now: datetime) -> bool:
    """Whether a timer is due, without locking anything (the sweeper's cheap look first)."""
    query = select(RoutingTimer.id).where(RoutingTimer.due_at <= now).limit(1)
    return session.execute(query).first() is not None


def claim_due(session: Session, now: datetime, limit: int = 100) -> list[RoutingTimer]:
    """Due timers, locked against every other process and deleted: the caller acts on them in
    this same transaction, so each fires once — or, if the process dies first, stays due."""
    timers = list(
        session.execute(
            select(RoutingTimer)
            .where(RoutingTimer.due_at <= now)
            .order_by(RoutingTimer.due_at, RoutingTimer.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if timers:
        session.execute(delete(RoutingTimer).where(RoutingTimer.id.in_([t.id for t in timers])))
    return timers


def fire(session: Session, config: RoutingConfig, timer: RoutingTimer, now: datetime) -> Routed:
    """Act on a claimed timer. Each action checks that it still applies (an offer accepted in
    the meantime does not expire, an agent who chose another state stays in it). After-hours
    replies are the gateway's to send (gateway/dispatch.py)."""
    if timer.kind == TimerKind.OFFER_EXPIRY:
        return expire(session, config, timer.subject_id, now)
    if timer.kind == TimerKind.OVERFLOW:
        return overflow(session, config, timer.subject_id, now)
    if timer.kind == TimerKind.REROUTE:
        return reroute(session, config, [timer.subject_id], now)
    if timer.kind == TimerKind.QUEUE_OPENS:
        return opened(session, config, timer.subject_id, now)
    if timer.kind == TimerKind.AFTER_CALL_WORK:
        agent = session.get(Agent, timer.subject_id)
        if agent is not None and agent.presence == Presence.AFTER_CALL_WORK:
            return set_presence(session, config, agent.id, Presence.AVAILABLE, now)
    return Routed()


def _schedule_overflow(
    session: Session, config: RoutingConfig, tickets: Sequence[tuple[int, str]], now: datetime
) -> None:
    timers = []
    for ticket_id, queue_name in tickets:
        queue = config.queue(queue_name)
        if queue.fallback_queue and queue.max_wait_seconds:
            due = now + timedelta(seconds=queue.max_wait_seconds)
            timers.append((TimerKind.OVERFLOW, ticket_id, due))
    schedule(session, timers)


# --- helpers for other parts ----------------------------------------------------------------


def agent_load(session: Session, agent_id: int) -> tuple[Capacity, dict[str, int]] | None:
    """One agent's capacity and load (offers included), whatever its presence, row locked."""
    row = session.execute(
        select(Agent.capacity).where(Agent.id == agent_id).with_for_update()
    ).one_or_none()
    if row is None:
        return None
    return Capacity.from_json(row[0]), _loads(session, [agent_id])[agent_id]


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


def available_agents(session: Session, queue: QueueConfig) -> list[int]:
    """The available agents with the queue's skills, each at its minimum level: whom a call
    into the queue rings when the PBX names nobody."""
    skills = sorted(queue.skills.items())
    postgres = session.get_bind().dialect.name == "postgresql"
    params = {
        name: value
        for j, (skill, level) in enumerate(skills)
        for name, value in ((f"skill_0_{j}", skill), (f"level_0_{j}", level))
    }
    return list(session.execute(_available_query(postgres, len(skills)), params).scalars())


@lru_cache(maxsize=32)
def _available_query(postgres: bool, skills: int) -> Select[Any]:
    has_skills = (_has_skill(postgres, f"0_{j}") for j in range(skills))
    return (
        select(Agent.id).where(Agent.presence == Presence.AVAILABLE, *has_skills).order_by(Agent.id)
    )


def _tickets() -> Table:
    table = Ticket.__table__
    assert isinstance(table, Table)
    return table
