"""Presence changes with their history: every state an agent was in, since when, until when.

The history (`presence_history`) is what time-in-state statistics are computed from later;
the agent row keeps only the current state.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from timeline import store
from timeline.models import Agent, Presence, PresenceSpell


def change(
    session: Session, agent_ids: Collection[int], state: Presence, now: datetime
) -> list[int]:
    """Put agents into `state` (rows locked in id order); the ids that really changed."""
    if not agent_ids:
        return []
    rows = session.execute(
        select(Agent.id, Agent.presence)
        .where(Agent.id.in_(agent_ids))
        .order_by(Agent.id)
        .with_for_update()
    )
    changed = [agent_id for agent_id, current in rows if current != state]
    if not changed:
        return []
    session.execute(
        update(Agent).where(Agent.id.in_(changed)).values(presence=state, presence_since=now)
    )
    session.execute(
        update(PresenceSpell)
        .where(PresenceSpell.agent_id.in_(changed), PresenceSpell.until.is_(None))
        .values(until=now)
    )
    store.insert_rows(
        session,
        PresenceSpell,
        [{"agent_id": a, "state": state, "since": now, "until": None} for a in changed],
    )
    for agent_id in changed:
        loaded = session.identity_map.get(identity_key(Agent, agent_id))
        if loaded is not None:
            session.expire(loaded, ["presence", "presence_since"])
    return changed
