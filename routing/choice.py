"""Who gets a ticket, and which waiting ticket goes first: pure rules, no database.

`routing.assignment` locks and loads the candidates, then asks these functions.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from routing.capacity import Capacity
from routing.queues import QueueConfig, Strategy

# How far a ticket's own priority lifts it, in queue priority levels.
TICKET_PRIORITY_RANK = {"low": -1, "normal": 0, "high": 1, "urgent": 2}
NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(slots=True)
class Candidate:
    """An available agent as routing sees it. `load` counts open tickets and pending offers.

    Not changed once built (`plus_one` makes a new one), but not frozen either: routing builds
    a hundred for every decision, and a frozen dataclass's `__init__` costs three times as
    much."""

    agent_id: int
    capacity: Capacity
    load: Mapping[str, int] = field(default_factory=dict)
    skills: Mapping[str, int] = field(default_factory=dict)
    idle_since: datetime = NEVER  # the later of becoming available and taking a ticket
    last_offered_at: datetime = NEVER

    @property
    def open_tickets(self) -> int:
        return sum(self.load.values())

    def qualifies(self, queue: QueueConfig) -> bool:
        return all(self.skills.get(skill, 0) >= level for skill, level in queue.skills.items())

    def has_room(self, channel: str) -> bool:
        return self.capacity.allows(self.load, channel)

    def plus_one(self, channel: str, now: datetime) -> Candidate:
        load = dict(self.load)
        load[channel] = load.get(channel, 0) + 1
        return Candidate(
            self.agent_id, self.capacity, load, self.skills, self.idle_since, last_offered_at=now
        )


def choose_agent(
    queue: QueueConfig,
    channel: str,
    candidates: Sequence[Candidate],
    *,
    excluded: Collection[int] = (),
    sticky: int | None = None,
) -> int | None:
    """The agent for one ticket: qualified, with room on the channel, not `excluded` (who
    declined it already); the contact's `sticky` agent if it is one of them, else by the
    queue's strategy. Ties go to the lowest id, so the choice is the same on every process."""
    fitting = [
        c
        for c in candidates
        if c.agent_id not in excluded and c.qualifies(queue) and c.has_room(channel)
    ]
    if not fitting:
        return None
    if sticky is not None and any(c.agent_id == sticky for c in fitting):
        return sticky
    if queue.strategy is Strategy.LONGEST_IDLE:
        best = min(fitting, key=lambda c: (c.idle_since, c.open_tickets, c.agent_id))
    elif queue.strategy is Strategy.ROUND_ROBIN:
        best = min(fitting, key=lambda c: (c.last_offered_at, c.agent_id))
    else:
        best = min(fitting, key=lambda c: (_occupancy(c), c.open_tickets, c.agent_id))
    return best.agent_id


def _occupancy(candidate: Candidate) -> float:
    """Open work over total capacity: five of ten is as occupied as one of two."""
    capacity = candidate.capacity
    total = capacity.total if capacity.total is not None else sum(capacity.channels.values())
    return candidate.open_tickets / total if total else 1.0


def urgency(queue: QueueConfig, ticket_priority: str, waited_seconds: float) -> float:
    """Which waiting ticket an agent gets first: the queue's priority plus the ticket's, plus
    one level per `ageing_seconds` waited, so a low-priority ticket is never starved."""
    rank = TICKET_PRIORITY_RANK.get(ticket_priority, 0)
    return queue.priority + rank + max(0.0, waited_seconds) / queue.ageing_seconds
