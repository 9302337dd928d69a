"""The routing engine under random interleavings (hypothesis, stateful): inbounds, presence
changes, accepts, rejects, timeouts, hang-ups, resolutions and overflow, against the real
store on SQLite. After every step:

- no agent holds more than its capacity (open tickets plus pending offers, per channel and
  in total);
- a ticket has at most one owner: one pending offer, or one assignee, never both;
- every waiting ticket is in exactly one, configured queue, and every open ticket without an
  agent is waiting;
- the queue counters equal a recount from the tickets themselves.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import create_engine, event, insert, select
from sqlalchemy.orm import Session

from gateway.agents import skill_levels
from gateway.routing_api import change_ticket
from routing import assignment
from routing.assignment import OfferGone, RouteRequest
from routing.capacity import Capacity
from routing.config import RoutingConfig
from routing.queues import QueueConfig
from timeline import store
from timeline.models import (
    OPEN_STATUSES,
    Agent,
    AgentSkill,
    Base,
    Contact,
    Offer,
    OfferStatus,
    Presence,
    QueueDay,
    Ticket,
    TicketStatus,
)

SALES = QueueConfig.parse(
    {
        "name": "sales",
        "strategy": "round_robin",
        "offer_timeout_seconds": 20,
        "misses_before_away": 2,
        "fallback_queue": "support",
        "max_wait_seconds": 90,
        "sla_seconds": 30,
    }
)
SUPPORT = QueueConfig.parse(
    {"name": "support", "strategy": "least_occupied", "skills": {"tech": 2}, "sla_seconds": 60}
)
CONFIG = RoutingConfig({"sales": SALES, "support": SUPPORT})
CAPACITIES = ["1", "2", "sms=2,voice=1", "email=1,sms=1"]
SKILLS = [["tech:2"], ["tech:1"], ["tech:3"], []]
CHANNELS = ["sms", "email", "voice"]
START = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


class RoutingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = create_engine("sqlite://")
        event.listen(self.engine, "connect", lambda c, _: c.execute("PRAGMA foreign_keys=ON"))
        Base.metadata.create_all(self.engine)
        self.now = START
        self.queues_seen: dict[int, set[str]] = defaultdict(set)
        with self.unit() as session:
            self.agents = store.insert_rows(
                session,
                Agent,
                [
                    {"name": f"Agent {n}", "email": f"agent{n}@example.com",
                     "password_hash": "-", "capacity": Capacity.parse(CAPACITIES[n]).to_json(),
                     "presence_since": START}
                    for n in range(4)
                ],
            )  # fmt: skip
            session.execute(
                insert(AgentSkill),
                [
                    {"agent_id": agent_id, "skill": skill, "level": level}
                    for agent_id, skills in zip(self.agents, SKILLS, strict=True)
                    for skill, level in skill_levels(skills).items()
                ],
            )
            (self.contact,) = store.insert_rows(session, Contact, [{"name": "Customer"}])

    def teardown(self) -> None:
        self.engine.dispose()

    @contextmanager
    def unit(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    # --- what happens ---------------------------------------------------------------------

    @rule(channel=st.sampled_from(CHANNELS), queue=st.sampled_from(["sales", "support"]))
    def inbound(self, channel: str, queue: str) -> None:
        with self.unit() as session:
            (ticket_id,) = store.insert_rows(
                session,
                Ticket,
                [{"contact_id": self.contact, "channel": channel, "queue": queue,
                  "created_at": self.now, "updated_at": self.now}],
            )  # fmt: skip
            request = RouteRequest(ticket_id, channel, queue, self.contact)
            waiting = assignment.enqueue(session, CONFIG, [request], self.now)
            assignment.route(session, CONFIG, waiting, self.now)

    @rule(
        agent=st.integers(0, 3),
        state=st.sampled_from([Presence.AVAILABLE, Presence.AWAY, Presence.OFFLINE]),
    )
    def presence(self, agent: int, state: Presence) -> None:
        with self.unit() as session:
            assignment.set_presence(session, CONFIG, self.agents[agent], state, self.now)

    @rule(agent=st.integers(0, 3), wrap_up=st.integers(0, 60))
    def call_answered_and_hung_up(self, agent: int, wrap_up: int) -> None:
        """CTI: busy on the call, then timed after-call work."""
        agent_id = self.agents[agent]
        with self.unit() as session:
            assignment.set_presence(session, CONFIG, agent_id, Presence.BUSY, self.now)
        with self.unit() as session:
            until = self.now + timedelta(seconds=wrap_up)
            assignment.set_presence(
                session, CONFIG, agent_id, Presence.AFTER_CALL_WORK, self.now, until
            )

    @precondition(lambda self: self.pending())
    @rule(pick=st.integers(0, 100), accepting=st.booleans())
    def answer_an_offer(self, pick: int, accepting: bool) -> None:
        offers = self.pending()
        offer_id, agent_id = offers[pick % len(offers)]
        with self.unit() as session:
            try:
                if accepting:
                    assignment.accept(session, CONFIG, offer_id, agent_id, self.now)
                else:
                    assignment.reject(session, CONFIG, offer_id, agent_id, self.now)
            except OfferGone:  # timed out: the clock passed its expiry
                session.rollback()

    @rule(pick=st.integers(0, 100))
    def someone_else_answers_an_offer(self, pick: int) -> None:
        """Only the offered agent may settle an offer."""
        offers = self.pending()
        if not offers:
            return
        offer_id, agent_id = offers[pick % len(offers)]
        intruder = next(a for a in self.agents if a != agent_id)
        with self.unit() as session:
            try:
                assignment.accept(session, CONFIG, offer_id, intruder, self.now)
                raise AssertionError("another agent took someone's offer")
            except OfferGone:
                pass

    @rule(seconds=st.sampled_from([1, 10, 25, 60, 100]))
    def time_passes(self, seconds: int) -> None:
        """Timers fire: offers expire, after-call work ends, tickets overflow."""
        self.now += timedelta(seconds=seconds)
        with self.unit() as session:
            for timer in assignment.claim_due(session, self.now):
                assignment.fire(session, CONFIG, timer, self.now)

    @precondition(lambda self: self.open_tickets())
    @rule(pick=st.integers(0, 100))
    def resolve(self, pick: int) -> None:
        tickets = self.open_tickets()
        ticket_id = tickets[pick % len(tickets)]
        with self.unit() as session:
            change_ticket(session, CONFIG, ticket_id, {"status": "resolved"}, self.now)

    # --- what must always hold ------------------------------------------------------------

    @invariant()
    def nobody_over_capacity(self) -> None:
        with self.unit() as session:
            load: dict[int, Counter[str]] = defaultdict(Counter)
            for agent_id, channel in session.execute(
                select(Ticket.assignee_id, Ticket.channel).where(
                    Ticket.assignee_id.is_not(None), Ticket.status.in_(OPEN_STATUSES)
                )
            ):
                load[agent_id][channel] += 1
            for agent_id, channel in session.execute(
                select(Offer.agent_id, Offer.channel).where(Offer.status == OfferStatus.PENDING)
            ):
                load[agent_id][channel] += 1
            for n, agent_id in enumerate(self.agents):
                capacity = Capacity.parse(CAPACITIES[n])
                total = capacity.total or sum(capacity.channels.values())
                assert sum(load[agent_id].values()) <= total, (agent_id, load[agent_id])
                for channel, limit in capacity.channels.items():
                    assert load[agent_id][channel] <= limit, (agent_id, load[agent_id])

    @invariant()
    def one_owner_per_ticket_and_every_waiting_ticket_in_one_queue(self) -> None:
        with self.unit() as session:
            pending = Counter(
                session.execute(
                    select(Offer.ticket_id).where(Offer.status == OfferStatus.PENDING)
                ).scalars()
            )
            for ticket in session.execute(select(Ticket)).scalars():
                self.queues_seen[ticket.id].add(ticket.queue)
                assert pending[ticket.id] <= 1
                if ticket.assignee_id is not None:
                    assert pending[ticket.id] == 0
                    assert ticket.waiting_since is None
                if ticket.status in OPEN_STATUSES and ticket.assignee_id is None:
                    assert ticket.waiting_since is not None, "an open ticket nobody holds waits"
                    assert ticket.queue in CONFIG.queues
                if ticket.status not in OPEN_STATUSES:
                    assert ticket.waiting_since is None and pending[ticket.id] == 0

    @invariant()
    def no_ticket_waits_beside_an_agent_with_room(self) -> None:
        """Issue 6: every waiting ticket nobody is offered finds no available agent who may
        take it (skills, room on its channel counting pending offers, not declined by them
        in this queue); whatever freed that room should have offered it the ticket."""
        with self.unit() as session:
            load: dict[int, Counter[str]] = defaultdict(Counter)
            held = select(Ticket.assignee_id, Ticket.channel).where(
                Ticket.assignee_id.is_not(None), Ticket.status.in_(OPEN_STATUSES)
            )
            offered = select(Offer.agent_id, Offer.channel).where(
                Offer.status == OfferStatus.PENDING
            )
            for agent_id, channel in [*session.execute(held), *session.execute(offered)]:
                load[agent_id][channel] += 1
            available = {
                a.id: a
                for a in session.execute(
                    select(Agent).where(Agent.presence == Presence.AVAILABLE)
                ).scalars()
            }
            skills: dict[int, dict[str, int]] = defaultdict(dict)
            for row in session.execute(select(AgentSkill)).scalars():
                skills[row.agent_id][row.skill] = row.level
            declined = {
                (ticket, agent, queue)
                for ticket, agent, queue in session.execute(
                    select(Offer.ticket_id, Offer.agent_id, Offer.queue).where(
                        Offer.status.in_([OfferStatus.REJECTED, OfferStatus.EXPIRED])
                    )
                )
            }
            on_offer = set(
                session.execute(
                    select(Offer.ticket_id).where(Offer.status == OfferStatus.PENDING)
                ).scalars()
            )
            waiting = session.execute(
                select(Ticket).where(Ticket.waiting_since.is_not(None), Ticket.id.not_in(on_offer))
            ).scalars()
            for ticket in waiting:
                queue = CONFIG.queue(ticket.queue)
                for agent_id, agent in available.items():
                    may = (
                        (ticket.id, agent_id, ticket.queue) not in declined
                        and all(skills[agent_id].get(k, 0) >= v for k, v in queue.skills.items())
                        and Capacity.from_json(agent.capacity).allows(
                            load[agent_id], ticket.channel
                        )
                    )
                    assert not may, f"ticket {ticket.id} waits beside agent {agent_id} with room"

    @invariant()
    def statistics_equal_a_recount(self) -> None:
        with self.unit() as session:
            tickets = list(session.execute(select(Ticket)).scalars())
            days = {d.queue: d for d in session.execute(select(QueueDay)).scalars()}
        for name, queue in CONFIG.queues.items():
            here = [t for t in tickets if t.queue == name]
            answered = [t for t in here if t.assigned_at is not None]
            waits = [(t.assigned_at - t.created_at).total_seconds() for t in answered]
            resolved = [t for t in here if t.status == TicketStatus.RESOLVED]
            handled = [t for t in resolved if t.assigned_at is not None]
            expected = {
                "offered": sum(1 for seen in self.queues_seen.values() if name in seen),
                "answered": len(answered),
                "answered_in_sla": sum(1 for w in waits if w <= queue.sla_seconds),
                "abandoned": len(resolved) - len(handled),
                "handled": len(handled),
                "wait_seconds": sum(waits),
                "handle_seconds": sum(
                    (t.resolved_at - t.assigned_at).total_seconds() for t in handled
                ),
            }
            day = days.get(name)
            counted = {key: getattr(day, key) if day else 0 for key in expected}
            assert counted == expected, name

    # --- helpers --------------------------------------------------------------------------

    def pending(self) -> list[tuple[int, int]]:
        with self.unit() as session:
            rows = session.execute(
                select(Offer.id, Offer.agent_id)
                .where(Offer.status == OfferStatus.PENDING)
                .order_by(Offer.id)
            )
            return [(offer_id, agent_id) for offer_id, agent_id in rows]

    def open_tickets(self) -> list[int]:
        with self.unit() as session:
            query = select(Ticket.id).where(Ticket.status.in_(OPEN_STATUSES)).order_by(Ticket.id)
            return list(session.execute(query).scalars())


RoutingMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_routing_engine_invariants = RoutingMachine.TestCase
