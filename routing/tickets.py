"""Ticket policy: which ticket an inbound event belongs to.

Order (DESIGN.md, "The one ingest path"): an explicit thread hint wins; else the contact's open
ticket; else a ticket resolved within the reopen window is reopened; else a new ticket. A hinted
ticket that was resolved too long ago is not reopened: a new ticket links to it instead.
An event that may not open a ticket (auto-generated mail) only ever joins an open hinted one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from timeline.models import OPEN_STATUSES


class TicketAction(enum.StrEnum):
    APPEND = "append"
    REOPEN = "reopen"
    NEW = "new"
    NONE = "none"  # no ticket: the event stays on the contact's timeline only


@dataclass(frozen=True, slots=True)
class TicketState:
    id: int
    status: str
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class TicketChoice:
    action: TicketAction
    ticket_id: int | None = None
    linked_ticket_id: int | None = None


def choose_ticket(
    *,
    hinted: TicketState | None,
    open_ticket: TicketState | None,
    last_resolved: TicketState | None,
    now: datetime,
    reopen_window: timedelta,
    opens_ticket: bool = True,
) -> TicketChoice:
    if not opens_ticket:
        # Auto-generated mail must not start conversations (or reopen them): an out-of-office
        # reply joins the open ticket it answers, nothing else.
        if hinted is not None and hinted.status in OPEN_STATUSES:
            return TicketChoice(TicketAction.APPEND, hinted.id)
        return TicketChoice(TicketAction.NONE)
    if hinted is not None:
        if hinted.status in OPEN_STATUSES:
            return TicketChoice(TicketAction.APPEND, hinted.id)
        if _within(hinted, now, reopen_window):
            return TicketChoice(TicketAction.REOPEN, hinted.id)
        return TicketChoice(TicketAction.NEW, linked_ticket_id=hinted.id)
    if open_ticket is not None:
        return TicketChoice(TicketAction.APPEND, open_ticket.id)
    if last_resolved is not None and _within(last_resolved, now, reopen_window):
        return TicketChoice(TicketAction.REOPEN, last_resolved.id)
    return TicketChoice(TicketAction.NEW)


def _within(ticket: TicketState, now: datetime, window: timedelta) -> bool:
    return ticket.resolved_at is not None and now - ticket.resolved_at <= window
