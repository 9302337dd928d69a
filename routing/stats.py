"""Queue statistics: counters per queue and local day, bumped by routing events as they
happen (one upsert per batch), never recounted from the tickets.

- offered: a ticket entered the queue (a new contact, a reopened one, an overflow into it)
- answered: an agent took a waiting ticket (accepted an offer, or was assigned it); its wait
  adds to `wait_seconds`, and it counts as `answered_in_sla` within the queue's target
- abandoned: a waiting ticket was resolved or closed before any agent took it
- handled: an agent resolved a ticket it held; the time since it took it adds to
  `handle_seconds`

Derived: service level = answered in SLA / (answered + abandoned); ASA = wait / answered;
AHT = handle time / handled; abandonment rate = abandoned / offered.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from routing.queues import QueueConfig
from timeline.models import QueueDay, Ticket

_PENDING = "switchboard.queue_counters"
COUNTERS = (
    "offered",
    "answered",
    "answered_in_sla",
    "abandoned",
    "wait_seconds",
    "handled",
    "handle_seconds",
)


@dataclass(frozen=True, slots=True)
class Bump:
    queue: QueueConfig
    at: datetime
    counts: Mapping[str, float]


def offered(queue: QueueConfig, at: datetime) -> Bump:
    return Bump(queue, at, {"offered": 1})


def answered(queue: QueueConfig, waiting_since: datetime | None, at: datetime) -> Bump:
    wait = max(0.0, (at - waiting_since).total_seconds()) if waiting_since else 0.0
    in_sla = 1 if wait <= queue.sla_seconds else 0
    return Bump(queue, at, {"answered": 1, "answered_in_sla": in_sla, "wait_seconds": wait})


def abandoned(queue: QueueConfig, at: datetime) -> Bump:
    return Bump(queue, at, {"abandoned": 1})


def handled(queue: QueueConfig, assigned_at: datetime | None, at: datetime) -> Bump:
    seconds = max(0.0, (at - assigned_at).total_seconds()) if assigned_at else 0.0
    return Bump(queue, at, {"handled": 1, "handle_seconds": seconds})


def record(session: Session, bumps: Sequence[Bump]) -> None:
    """Count the bumps; they are written when the transaction commits (`_write_counters`)."""
    if not bumps:
        return
    rows = session.info.setdefault(_PENDING, defaultdict(lambda: dict.fromkeys(COUNTERS, 0)))
    for bump in bumps:
        row = rows[(bump.queue.name, bump.queue.local_day(bump.at).isoformat())]
        for name, value in bump.counts.items():
            row[name] += value


@event.listens_for(Session, "before_commit")
def _write_counters(session: Session) -> None:
    """One upsert for the whole transaction, its rows in (queue, day) order, as the last thing
    before the commit: the counter rows are the most contended ones, so they are locked last
    and for the shortest time, in the same order by every transaction (no deadlocks)."""
    rows = session.info.pop(_PENDING, None)
    if not rows:
        return
    values = [{"queue": q, "day": d, **counts} for (q, d), counts in sorted(rows.items())]
    session.connection().execute(_upsert(session.get_bind().dialect.name), values)


@cache
def _upsert(dialect: str) -> Any:
    """`_write_counters`' statement, built once per dialect: nearly every routing transaction
    ends with it, and building it anew cost a tenth of the writer's time (bench.screenpop)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(QueueDay)
    table = QueueDay.__table__
    return statement.on_conflict_do_update(
        index_elements=["queue", "day"],
        set_={name: table.c[name] + statement.excluded[name] for name in COUNTERS},  # type: ignore[attr-defined]
    )


@event.listens_for(Session, "after_rollback")
def _forget_counters(session: Session) -> None:
    session.info.pop(_PENDING, None)


def today(session: Session, queues: Sequence[QueueConfig], now: datetime) -> dict[str, QueueDay]:
    days = {q.name: q.local_day(now).isoformat() for q in queues}
    if not days:
        return {}
    rows = session.execute(
        select(QueueDay).where(QueueDay.queue.in_(days), QueueDay.day.in_(set(days.values())))
    ).scalars()
    return {row.queue: row for row in rows if days.get(row.queue) == row.day}


def waiting(session: Session) -> dict[str, tuple[int, datetime]]:
    """Per queue: how many tickets wait and since when the oldest (the queue index)."""
    rows = session.execute(
        select(Ticket.queue, func.count(), func.min(Ticket.waiting_since))
        .where(Ticket.waiting_since.is_not(None))
        .group_by(Ticket.queue)
    )
    return {queue: (n, oldest) for queue, n, oldest in rows if oldest is not None}


def figures(
    queue: QueueConfig,
    day: QueueDay | None,
    waiting_now: tuple[int, datetime] | None,
    agents_by_presence: Mapping[str, int],
    now: datetime,
) -> dict[str, Any]:
    """A queue's live and today's figures, as the API and the supervisor socket show them."""
    counts = {name: getattr(day, name) if day else 0 for name in COUNTERS}
    n_waiting, oldest = waiting_now or (0, None)
    settled = counts["answered"] + counts["abandoned"]
    return {
        "now": {
            "waiting": n_waiting,
            "longest_wait_seconds": round((now - oldest).total_seconds(), 1) if oldest else 0,
            "agents": dict(agents_by_presence),
        },
        "today": {
            "day": queue.local_day(now).isoformat(),
            "offered": counts["offered"],
            "answered": counts["answered"],
            "answered_in_sla": counts["answered_in_sla"],
            "abandoned": counts["abandoned"],
            "handled": counts["handled"],
            "service_level": _ratio(counts["answered_in_sla"], settled),
            "asa_seconds": _ratio(counts["wait_seconds"], counts["answered"]),
            "aht_seconds": _ratio(counts["handle_seconds"], counts["handled"]),
            "abandonment_rate": _ratio(counts["abandoned"], counts["offered"]),
        },
    }


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None
