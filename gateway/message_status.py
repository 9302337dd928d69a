"""`message_status`: the agent holding a ticket sees each of its outbound messages progress.

Published when the outbox records a result and when a provider's receipt arrives; the status
itself is on the timeline event already, this only tells the agent's console to update it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.bus import Bus, Message, agent_topic
from timeline.db import Database
from timeline.models import Ticket, TimelineEvent


class StatusAnnouncer:
    def __init__(self, db: Database, bus: Bus) -> None:
        self._db = db
        self._bus = bus

    async def __call__(self, event_ids: Sequence[int]) -> None:
        for agent_id, message in await self._db.read(_status_messages, event_ids):
            await self._bus.publish(agent_topic(agent_id), message)


def _status_messages(session: Session, event_ids: Sequence[int]) -> list[tuple[int, Message]]:
    """For each event whose ticket somebody holds: that agent, and what to tell them."""
    rows = session.execute(
        select(TimelineEvent, Ticket.assignee_id)
        .join(Ticket, Ticket.id == TimelineEvent.ticket_id)
        .where(TimelineEvent.id.in_(event_ids), Ticket.assignee_id.is_not(None))
        .order_by(TimelineEvent.id)
    ).all()
    return [
        (
            assignee_id,
            {
                "type": "message_status",
                "event_id": event.id,
                "ticket_id": event.ticket_id,
                "channel": event.channel,
                "status": event.delivery_status,
                "detail": event.delivery_detail,
            },
        )
        for event, assignee_id in rows
        if assignee_id is not None
    ]
