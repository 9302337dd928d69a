"""`message_status`: the agent holding a ticket sees each of its outbound messages progress.

Published when the outbox records a result and when a provider's receipt arrives; the status
itself is on the timeline event already, this only tells the agent's console to update it.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.bus import Bus, Message, agent_topic
from timeline.db import Database
from timeline.models import Ticket, TimelineEvent


class StatusAnnouncer:
    def __init__(self, db: Database, bus: Bus) -> None:
        self._db = db
        self._bus = bus

    async def __call__(self, event_id: int) -> None:
        found = await self._db.read(_status_message, event_id)
        if found is not None:
            agent_id, message = found
            await self._bus.publish(agent_topic(agent_id), message)


def _status_message(session: Session, event_id: int) -> tuple[int, Message] | None:
    """The assignee of the event's ticket and what to tell them; None if nobody holds it."""
    row = session.execute(
        select(TimelineEvent, Ticket.assignee_id)
        .join(Ticket, Ticket.id == TimelineEvent.ticket_id)
        .where(TimelineEvent.id == event_id)
    ).first()
    if row is None or row.assignee_id is None:
        return None
    event: TimelineEvent = row[0]
    return row.assignee_id, {
        "type": "message_status",
        "event_id": event.id,
        "ticket_id": event.ticket_id,
        "channel": event.channel,
        "status": event.delivery_status,
        "detail": event.delivery_detail,
    }
