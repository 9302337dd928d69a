"""The routing engine's store functions in worked examples, on a fixed clock: every statistic
against hand-computed values, overflow, the sticky agent, priority ageing, misses making an
agent away, after-call work ending by its timer, and presence history."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, insert, select
from sqlalchemy.orm import Session

from gateway.agents import skill_levels
from gateway.routing_api import change_ticket
from routing import assignment, stats
from routing.assignment import DECLINE_MEMORY, Routed, RouteRequest
from routing.capacity import Capacity
from routing.config import load_config, save_queue
from routing.queues import QueueConfig
from timeline import store
from timeline.models import (
    Agent,
    AgentSkill,
    Base,
    Contact,
    Offer,
    Presence,
    PresenceSpell,
    QueueDay,
    RoutingTimer,
    Ticket,
    TimerKind,
)

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
SWEEP_BATCH = 20


class Desk:
    """A routing store on SQLite with a hand-moved clock."""

    def __init__(self, engine: Engine, *queues: dict[str, Any]) -> None:
        self.engine = engine
        self.now = T0
        self.swept_to: assignment.SweepPlace | None = None
        with self.unit() as session:
            for queue in queues:
                save_queue(session, QueueConfig.parse(queue), self.now)
            (self.contact,) = store.insert_rows(session, Contact, [{"name": "Customer"}])
        with self.unit() as session:
            self.config = load_config(session)

    def unit(self) -> Any:
        session = Session(self.engine, expire_on_commit=False)
        return _Unit(session)

    def agent(self, name: str, capacity: str = "3", skills: list[str] | None = None) -> int:
        with self.unit() as session:
            (agent_id,) = store.insert_rows(
                session,
                Agent,
                [{"name": name, "email": f"{name}@example.com", "password_hash": "-",
                  "capacity": Capacity.parse(capacity).to_json(), "presence_since": self.now}],
            )  # fmt: skip
            levels = skill_levels(skills or [])
            if levels:
                session.execute(
                    insert(AgentSkill),
                    [{"agent_id": agent_id, "skill": s, "level": n} for s, n in levels.items()],
                )
        return agent_id

    def presence(self, agent_id: int, state: Presence, until: datetime | None = None) -> Routed:
        with self.unit() as session:
            return assignment.set_presence(session, self.config, agent_id, state, self.now, until)

    def inbound(
        self, queue: str, channel: str = "sms", priority: str = "normal", contact: int | None = None
    ) -> tuple[int, Routed]:
        with self.unit() as session:
            (ticket_id,) = store.insert_rows(
                session,
                Ticket,
                [{"contact_id": contact or self.contact, "channel": channel, "queue": queue,
                  "priority": priority, "created_at": self.now, "updated_at": self.now}],
            )  # fmt: skip
            request = RouteRequest(ticket_id, channel, queue, contact or self.contact, priority)
            waiting = assignment.enqueue(session, self.config, [request], self.now)
            return ticket_id, assignment.route(session, self.config, waiting, self.now)

    def sweep(self) -> Routed:
        """What the dispatcher's sweep does: the next 20 of the tickets waiting placed again,
        going round them all."""
        with self.unit() as session:
            places = assignment.stragglers(
                session, self.config, self.now, SWEEP_BATCH, self.now, self.swept_to
            )
            self.swept_to = places[-1] if len(places) == SWEEP_BATCH else None
            return assignment.reroute(session, self.config, [i for _, i in places], self.now)

    def later(self, seconds: float) -> Routed:
        self.now += timedelta(seconds=seconds)
        routed = Routed()
        with self.unit() as session:
            for timer in assignment.claim_due(session, self.now):
                routed.merge(assignment.fire(session, self.config, timer, self.now))
        return routed

    def accept(self, offer_id: int, agent_id: int) -> int:
        with self.unit() as session:
            return assignment.accept(session, self.config, offer_id, agent_id, self.now)

    def resolve(self, ticket_id: int) -> None:
        with self.unit() as session:
            change_ticket(session, self.config, ticket_id, {"status": "resolved"}, self.now)

    def timers(self, kind: TimerKind) -> list[datetime]:
        with self.unit() as session:
            query = select(RoutingTimer.due_at).where(RoutingTimer.kind == kind)
            return [due.replace(tzinfo=UTC) for due in session.execute(query).scalars()]

    def ticket(self, ticket_id: int) -> Ticket:
        with self.unit() as session:
            ticket = session.get(Ticket, ticket_id)
            assert ticket is not None
            return ticket

    def agent_row(self, agent_id: int) -> Agent:
        with self.unit() as session:
            agent = session.get(Agent, agent_id)
            assert agent is not None
            return agent

    def figures(self, queue: str) -> dict[str, Any]:
        with self.unit() as session:
            config = self.config.queue(queue)
            day = stats.today(session, [config], self.now).get(queue)
            return stats.figures(config, day, stats.waiting(session).get(queue), {}, self.now)


class _Unit:
    def __init__(self, session: Session) -> None:
        self.session = session

    def __enter__(self) -> Session:
        self.session.begin()
        return self.session

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self.session.commit()
        else:
            self.session.rollback()
        self.session.close()


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


SALES = {"name": "sales", "offer_timeout_seconds": 30, "sla_seconds": 20}


def test_every_statistic_against_hand_computed_values(engine: Engine) -> None:
    desk = Desk(engine, SALES)
    anna = desk.agent("anna", capacity="5")
    desk.presence(anna, Presence.AVAILABLE)

    first, routed = desk.inbound("sales")  # offered at 09:00:00
    desk.later(10)
    desk.accept(routed.offers[0].id, anna)  # answered after 10 s: within the 20 s target
    desk.presence(anna, Presence.AWAY)
    second, _ = desk.inbound("sales")  # 09:00:10, waits
    third, _ = desk.inbound("sales")  # 09:00:10, waits
    desk.later(50)
    (offer,) = desk.presence(anna, Presence.AVAILABLE).offers[:1]  # 09:01:00
    assert offer.ticket_id == second
    desk.accept(offer.id, anna)  # answered after 50 s: outside the target
    desk.resolve(third)  # abandoned at 09:01:00, while still waiting (an offer was pending)
    desk.later(120)
    desk.resolve(first)  # handled: held from 09:00:10 to 09:03:00 = 170 s
    desk.inbound("sales")  # 09:03:00; anna has room: offered to her, still waiting
    desk.later(15)

    figures = desk.figures("sales")
    assert figures["now"] == {"waiting": 1, "longest_wait_seconds": 15.0, "agents": {}}
    assert figures["today"] == {
        "day": "2026-11-25",
        "offered": 4,
        "answered": 2,
        "answered_in_sla": 1,
        "abandoned": 1,
        "handled": 1,
        "service_level": round(1 / 3, 4),  # in SLA / (answered + abandoned)
        "asa_seconds": 30.0,  # (10 + 50) / 2
        "aht_seconds": 170.0,
        "abandonment_rate": 0.25,  # 1 of 4 offered
    }


def test_a_ticket_waiting_its_queues_maximum_overflows_to_the_fallback(engine: Engine) -> None:
    desk = Desk(
        engine,
        {"name": "sales", "fallback_queue": "support", "max_wait_seconds": 60},
        {"name": "support"},
    )
    ticket_id, _ = desk.inbound("sales")
    desk.later(59)
    assert desk.ticket(ticket_id).queue == "sales"

    desk.later(1)

    assert desk.ticket(ticket_id).queue == "support"
    assert desk.figures("support")["today"]["offered"] == 1
    assert desk.figures("support")["now"]["longest_wait_seconds"] == 60.0, "the wait goes on"


def test_an_overflowed_ticket_goes_to_an_agent_of_the_fallback_queue(engine: Engine) -> None:
    desk = Desk(
        engine,
        {"name": "sales", "skills": {"french": 1}, "fallback_queue": "support",
         "max_wait_seconds": 60},
        {"name": "support"},
    )  # fmt: skip
    bernd = desk.agent("bernd")
    desk.presence(bernd, Presence.AVAILABLE)
    ticket_id, routed = desk.inbound("sales")
    assert not routed.assigned, "bernd speaks no French"

    routed = desk.later(60)

    assert routed.assigned == {ticket_id: bernd}


@pytest.mark.parametrize(("pause", "expected"), [(60, "bernd"), (601, "anna")])
def test_the_sticky_agent_gets_the_contacts_next_ticket_within_the_window(
    engine: Engine, pause: int, expected: str
) -> None:
    desk = Desk(engine, {"name": "sales", "sticky_seconds": 600})  # least occupied
    agents = {"anna": desk.agent("anna"), "bernd": desk.agent("bernd")}
    desk.presence(agents["bernd"], Presence.AVAILABLE)
    first, routed = desk.inbound("sales")
    desk.inbound("sales", contact=store_contact(desk))  # bernd keeps this one open
    desk.resolve(first)
    desk.later(pause)
    desk.presence(agents["anna"], Presence.AVAILABLE)  # less occupied than bernd

    second, routed = desk.inbound("sales")

    assert routed.assigned == {second: agents[expected]}


def test_priority_ageing_serves_a_long_waiting_low_ticket_before_a_fresh_urgent_one(
    engine: Engine,
) -> None:
    desk = Desk(engine, {"name": "sales", "ageing_seconds": 60})
    anna = desk.agent("anna", capacity="1")
    old_low, _ = desk.inbound("sales", priority="low")
    desk.later(60)
    fresh_urgent, _ = desk.inbound("sales", priority="urgent")
    desk.later(60)
    # Ageing lifts both alike: low (-1) trails urgent (+2) by 3 levels = 180 s of waiting.
    # Urgent came 60 s later: 120 s short of catching up, so the urgent one goes first.
    assert desk.presence(anna, Presence.AVAILABLE).assigned == {fresh_urgent: anna}
    desk.presence(anna, Presence.AWAY)
    desk.resolve(fresh_urgent)
    desk.later(61)
    second_urgent, _ = desk.inbound("sales", priority="urgent")  # 181 s after the low one
    desk.later(10)

    assert desk.presence(anna, Presence.AVAILABLE).assigned == {old_low: anna}
    assert desk.ticket(second_urgent).assignee_id is None


def test_offers_that_time_out_go_on_and_make_the_agent_away_after_the_limit(
    engine: Engine,
) -> None:
    desk = Desk(engine, {**SALES, "misses_before_away": 2, "strategy": "longest_idle"})
    anna, bernd = desk.agent("anna"), desk.agent("bernd")
    desk.presence(anna, Presence.AVAILABLE)
    desk.later(1)
    desk.presence(bernd, Presence.AVAILABLE)
    first, routed = desk.inbound("sales")
    assert [o.agent_id for o in routed.offers] == [anna]

    routed = desk.later(30)  # anna's first miss: on to bernd
    assert [(o.ticket_id, o.agent_id) for o in routed.offers] == [(first, bernd)]
    assert desk.agent_row(anna).presence == Presence.AVAILABLE

    _, routed = desk.inbound("sales")
    assert [o.agent_id for o in routed.offers] == [anna]
    desk.later(30)  # anna's second miss, bernd's first

    assert desk.agent_row(anna).presence == Presence.AWAY
    assert desk.agent_row(bernd).presence == Presence.AVAILABLE


def test_a_rejected_offer_goes_to_the_next_agent_not_back_while_the_decline_is_fresh(
    engine: Engine,
) -> None:
    desk = Desk(engine, SALES)
    anna, bernd = desk.agent("anna"), desk.agent("bernd")
    desk.presence(anna, Presence.AVAILABLE)
    ticket_id, routed = desk.inbound("sales")
    with desk.unit() as session:
        routed = assignment.reject(session, desk.config, routed.offers[0].id, anna, desk.now)
    assert routed.offers == []
    routed = desk.presence(bernd, Presence.AVAILABLE)
    assert [(o.ticket_id, o.agent_id) for o in routed.offers] == [(ticket_id, bernd)]
    with desk.unit() as session:
        routed = assignment.reject(session, desk.config, routed.offers[0].id, bernd, desk.now)
    assert routed.offers == [] and desk.ticket(ticket_id).waiting_since is not None

    desk.now += DECLINE_MEMORY - timedelta(seconds=1)
    assert desk.sweep().offers == []
    # Every agent declined it a while ago: the customer must not wait beside idle agents.
    desk.now += timedelta(seconds=2)
    assert [(o.ticket_id, o.agent_id) for o in desk.sweep().offers] == [(ticket_id, anna)]


def test_the_sweep_looks_past_tickets_waiting_for_their_closed_queue(engine: Engine) -> None:
    """At night the oldest waiting tickets are a closed queue's; the sweep must still reach a
    ticket of an open queue that every agent declined a while ago."""
    desk = Desk(engine, SALES, OFFICE)
    anna = desk.agent("anna")
    desk.now = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)  # Tuesday evening: the office is closed
    for _ in range(25):
        desk.inbound("office")
    desk.presence(anna, Presence.AVAILABLE)
    ticket_id, routed = desk.inbound("sales")
    with desk.unit() as session:
        assignment.reject(session, desk.config, routed.offers[0].id, anna, desk.now)
    desk.now += DECLINE_MEMORY + timedelta(seconds=1)
    assert [(o.ticket_id, o.agent_id) for o in desk.sweep().offers] == [(ticket_id, anna)]


def test_the_sweep_goes_round_past_tickets_no_agent_can_take(engine: Engine) -> None:
    """The oldest waiting tickets ask for a skill nobody has; the sweep, a batch at a time,
    still reaches a ticket behind them that every agent declined a while ago, and then
    begins again with the oldest."""
    desk = Desk(engine, SALES, {"name": "legal", "skills": {"law": 1}})
    anna = desk.agent("anna")
    desk.presence(anna, Presence.AVAILABLE)
    unplaceable = [desk.inbound("legal")[0] for _ in range(SWEEP_BATCH + 5)]
    desk.now += timedelta(seconds=1)
    ticket_id, routed = desk.inbound("sales")
    with desk.unit() as session:
        assignment.reject(session, desk.config, routed.offers[0].id, anna, desk.now)
    desk.now += DECLINE_MEMORY + timedelta(seconds=1)

    assert desk.sweep().offers == []  # the 20 oldest: nobody can take them
    assert desk.swept_to == (desk.ticket(unplaceable[SWEEP_BATCH - 1]).waiting_since,
                             unplaceable[SWEEP_BATCH - 1])  # fmt: skip
    assert [(o.ticket_id, o.agent_id) for o in desk.sweep().offers] == [(ticket_id, anna)]
    assert desk.swept_to is None  # a short batch: the next sweep begins with the oldest


def test_an_agent_coming_back_gets_the_ticket_it_declined_once_the_decline_is_old(
    engine: Engine,
) -> None:
    desk = Desk(engine, SALES)
    anna = desk.agent("anna")
    desk.presence(anna, Presence.AVAILABLE)
    ticket_id, routed = desk.inbound("sales")
    with desk.unit() as session:
        assignment.reject(session, desk.config, routed.offers[0].id, anna, desk.now)
    desk.presence(anna, Presence.AWAY)
    assert desk.presence(anna, Presence.AVAILABLE).offers == []
    desk.now += DECLINE_MEMORY + timedelta(seconds=1)
    desk.presence(anna, Presence.AWAY)
    routed = desk.presence(anna, Presence.AVAILABLE)
    assert [(o.ticket_id, o.agent_id) for o in routed.offers] == [(ticket_id, anna)]


def test_after_call_work_ends_by_its_timer_and_keeps_a_presence_history(engine: Engine) -> None:
    desk = Desk(engine, {"name": "support"})
    anna = desk.agent("anna")
    desk.presence(anna, Presence.AVAILABLE)
    desk.later(5)
    desk.presence(anna, Presence.BUSY)
    desk.later(100)
    desk.presence(anna, Presence.AFTER_CALL_WORK, until=desk.now + timedelta(seconds=30))
    waiting, _ = desk.inbound("support")
    desk.later(29)
    assert desk.agent_row(anna).presence == Presence.AFTER_CALL_WORK

    routed = desk.later(1)

    assert desk.agent_row(anna).presence == Presence.AVAILABLE
    assert routed.assigned == {waiting: anna}, "back from wrap-up, she takes what waits"
    with desk.unit() as session:
        spells = session.execute(
            select(PresenceSpell.state, PresenceSpell.since, PresenceSpell.until)
            .where(PresenceSpell.agent_id == anna)
            .order_by(PresenceSpell.id)
        ).all()
    assert [(s, (a - T0).seconds, b and (b - T0).seconds) for s, a, b in spells] == [
        ("available", 0, 5),
        ("busy", 5, 105),
        ("after_call_work", 105, 135),
        ("available", 135, None),
    ]


def test_counters_are_per_local_day_of_the_queue(engine: Engine) -> None:
    desk = Desk(engine, {"name": "tokyo", "timezone": "Asia/Tokyo"})
    desk.now = datetime(2026, 11, 25, 14, 59, tzinfo=UTC)  # 23:59 in Tokyo
    desk.inbound("tokyo")
    desk.later(60)  # 00:00 on the 26th in Tokyo
    desk.inbound("tokyo")
    with desk.unit() as session:
        days = {d.day: d.offered for d in session.execute(select(QueueDay)).scalars()}
    assert days == {"2026-11-25": 1, "2026-11-26": 1}


def store_contact(desk: Desk) -> int:
    with desk.unit() as session:
        (contact_id,) = store.insert_rows(session, Contact, [{"name": "Someone else"}])
    return contact_id


def test_one_pending_offer_per_ticket_is_the_databases_rule(engine: Engine) -> None:
    desk = Desk(engine, SALES)
    anna, bernd = desk.agent("anna"), desk.agent("bernd")
    desk.presence(anna, Presence.AVAILABLE)
    ticket_id, _ = desk.inbound("sales")
    with pytest.raises(Exception, match="UNIQUE"), desk.unit() as session:
        store.insert_rows(
            session,
            Offer,
            [{"ticket_id": ticket_id, "agent_id": bernd, "queue": "sales", "channel": "sms",
              "status": "pending", "created_at": desk.now, "expires_at": desk.now}],
        )  # fmt: skip


OFFICE = {
    "name": "office",
    "offer_timeout_seconds": 30,
    "hours": {day: [["09:00", "17:00"]] for day in ("mon", "tue", "wed", "thu", "fri")},
    "after_hours": "callback",
}


def test_tickets_that_waited_in_a_closed_queue_are_offered_when_it_opens(engine: Engine) -> None:
    desk = Desk(engine, OFFICE)
    anna = desk.agent("anna", capacity="1")
    desk.presence(anna, Presence.AVAILABLE)
    desk.now = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)  # Tuesday evening: closed
    first, routed = desk.inbound("office")
    desk.later(300)
    second, again = desk.inbound("office")
    assert not routed.offers and not again.offers, "closed: the tickets wait"
    assert desk.timers(TimerKind.QUEUE_OPENS) == [T0], "one timer, at nine on Wednesday"

    assert not desk.later((T0 - desk.now).total_seconds() - 1).offers, "a second early"
    routed = desk.later(1)

    assert [(o.ticket_id, o.agent_id) for o in routed.offers] == [(first, anna)]
    assert desk.ticket(second).waiting_since is not None, "anna has room for one"
    assert desk.timers(TimerKind.QUEUE_OPENS) == []


def test_a_queue_that_opens_with_nobody_available_leaves_its_tickets_to_the_agents(
    engine: Engine,
) -> None:
    desk = Desk(engine, OFFICE)
    desk.now = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)
    ticket_id, _ = desk.inbound("office")
    desk.later((T0 - desk.now).total_seconds())
    anna = desk.agent("anna")

    routed = desk.presence(anna, Presence.AVAILABLE)

    assert [o.ticket_id for o in routed.offers] == [ticket_id]


def test_a_closed_queue_with_an_automatic_reply_sets_one_reply_per_ticket(engine: Engine) -> None:
    desk = Desk(engine, {**OFFICE, "after_hours": "auto_reply"})
    desk.now = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)  # Saturday
    first, _ = desk.inbound("office")
    second, _ = desk.inbound("office")
    desk.now = T0
    desk.inbound("office")  # open: no reply

    with desk.unit() as session:
        query = select(RoutingTimer.subject_id).where(
            RoutingTimer.kind == TimerKind.AFTER_HOURS_REPLY
        )
        assert sorted(session.execute(query).scalars()) == [first, second]
