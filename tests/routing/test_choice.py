"""Which agent a queue's strategy picks, skills with levels, the sticky agent, and priority
ageing: pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from routing.capacity import Capacity
from routing.choice import Candidate, choose_agent, urgency
from routing.queues import QueueConfig, Strategy

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def agent(agent_id: int, *, total: int = 4, idle_min: int = 0, offered_min: int = 0,
          skills: dict[str, int] | None = None, **load: int) -> Candidate:  # fmt: skip
    return Candidate(
        agent_id,
        Capacity(total=total),
        load,
        skills or {},
        idle_since=T0 + timedelta(minutes=idle_min),
        last_offered_at=T0 + timedelta(minutes=offered_min),
    )


def queue(strategy: Strategy, **fields: object) -> QueueConfig:
    return QueueConfig.parse({"name": "q", "strategy": strategy, **fields})


def test_longest_idle_takes_the_agent_idle_the_longest() -> None:
    agents = [agent(1, idle_min=5), agent(2, idle_min=1, sms=2), agent(3, idle_min=3)]
    assert choose_agent(queue(Strategy.LONGEST_IDLE), "sms", agents) == 2


def test_least_occupied_compares_load_with_capacity() -> None:
    # 2 of 10 (20 %) is less occupied than 1 of 2 (50 %).
    agents = [agent(1, total=2, sms=1), agent(2, total=10, sms=2)]
    assert choose_agent(queue(Strategy.LEAST_OCCUPIED), "sms", agents) == 2


def test_round_robin_takes_the_agent_offered_the_longest_ago() -> None:
    agents = [agent(1, offered_min=9), agent(2, offered_min=4), agent(3, offered_min=7)]
    assert choose_agent(queue(Strategy.ROUND_ROBIN), "sms", agents) == 2


def test_round_robin_goes_round() -> None:
    agents = {i: agent(i) for i in (1, 2, 3)}
    picked = []
    for minute in range(6):
        chosen = choose_agent(queue(Strategy.ROUND_ROBIN), "sms", list(agents.values()))
        assert chosen is not None
        picked.append(chosen)
        agents[chosen] = agents[chosen].plus_one("sms", T0 + timedelta(minutes=minute + 1))
    assert picked == [1, 2, 3, 1, 2, 3]


def test_skills_need_their_minimum_levels() -> None:
    billing_3 = queue(Strategy.LONGEST_IDLE, skills={"billing": 3, "german": 1})
    agents = [
        agent(1, skills={"billing": 2, "german": 5}),  # level too low
        agent(2, skills={"billing": 4}),  # no German
        agent(3, idle_min=30, skills={"billing": 3, "german": 1}),
    ]
    assert choose_agent(billing_3, "sms", agents) == 3


def test_nobody_over_capacity_nobody_who_declined() -> None:
    agents = [agent(1, total=1, sms=1), agent(2), agent(3, idle_min=1)]
    assert choose_agent(queue(Strategy.LONGEST_IDLE), "sms", agents, excluded={2}) == 3
    assert choose_agent(queue(Strategy.LONGEST_IDLE), "sms", agents, excluded={2, 3}) is None


def test_the_sticky_agent_wins_when_it_can_take_the_ticket() -> None:
    agents = [agent(1), agent(2, sms=3)]
    assert choose_agent(queue(Strategy.LONGEST_IDLE), "sms", agents, sticky=2) == 2


def test_a_sticky_agent_that_is_full_or_unqualified_is_passed_over() -> None:
    agents = [agent(1), agent(2, total=1, sms=1), agent(3, skills={})]
    skilled = queue(Strategy.LONGEST_IDLE, skills={"x": 1})
    assert choose_agent(queue(Strategy.LONGEST_IDLE), "sms", agents, sticky=2) == 1
    assert choose_agent(skilled, "sms", agents, sticky=3) is None


def test_priority_ageing_lets_a_low_ticket_overtake_after_waiting() -> None:
    q = queue(Strategy.LONGEST_IDLE, ageing_seconds=60)
    fresh_urgent = urgency(q, "urgent", 0)  # 2 levels up
    assert urgency(q, "low", 150) < fresh_urgent  # -1 + 2.5 = 1.5
    assert urgency(q, "low", 181) > fresh_urgent  # -1 + 3.02 > 2


@pytest.mark.parametrize(("priority", "expected"), [(0, 0.0), (5, 5.0)])
def test_a_queues_priority_counts_in_levels(priority: int, expected: float) -> None:
    assert urgency(queue(Strategy.LONGEST_IDLE, priority=priority), "normal", 0) == expected
