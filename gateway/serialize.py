"""The API's JSON shapes of timeline rows (DESIGN.md, "Stable contract")."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from timeline.models import Agent, Contact, Identity, Ticket, TimelineEvent

JSON = dict[str, Any]


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def identity_json(identity: Identity) -> JSON:
    return {"kind": identity.kind, "value": identity.value}


def contact_json(contact: Contact, identities: Sequence[Identity]) -> JSON:
    return {
        "id": contact.id,
        "name": contact.name,
        "identities": [identity_json(i) for i in identities],
        "tags": list(contact.tags),
        "attributes": dict(contact.attributes),
        "merged_into_id": contact.merged_into_id,
        "created_at": iso(contact.created_at),
    }


class TicketLike(Protocol):
    """What a ticket summary needs: a stored `Ticket` or one the ingest batch just opened."""

    @property
    def id(self) -> int: ...
    @property
    def number(self) -> int | None: ...
    @property
    def status(self) -> str: ...
    @property
    def subject(self) -> str | None: ...


def ticket_summary(ticket: TicketLike) -> JSON:
    return {
        "id": ticket.id,
        "number": ticket.number,
        "status": ticket.status,
        "subject": ticket.subject,
    }


def ticket_json(ticket: Ticket) -> JSON:
    return {
        **ticket_summary(ticket),
        "contact_id": ticket.contact_id,
        "assignee_id": ticket.assignee_id,
        "priority": ticket.priority,
        "queue": ticket.queue,
        "channel": ticket.channel,
        "linked_ticket_id": ticket.linked_ticket_id,
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
        "assigned_at": iso(ticket.assigned_at),
        "first_response_at": iso(ticket.first_response_at),
        "resolved_at": iso(ticket.resolved_at),
    }


def event_json(event: TimelineEvent) -> JSON:
    return {
        "id": event.id,
        "channel": event.channel,
        "direction": event.direction,
        "kind": event.kind,
        "body": event.body,
        "preview": event.preview,
        "html": event.html,
        "subject": event.subject,
        "sender": event.sender,
        "recipient": event.recipient,
        "external_id": event.external_id,
        "attachments": list(event.attachments),
        "contact_id": event.contact_id,
        "ticket_id": event.ticket_id,
        "occurred_at": iso(event.occurred_at),
        # Outbound messages: queued, sent, delivered, failed, undelivered or bounced.
        "status": event.delivery_status,
        "status_detail": event.delivery_detail,
    }


def event_preview(event: TimelineEvent) -> JSON:
    """A line of the contact card's recent history: enough to recognise the conversation."""
    return {
        "id": event.id,
        "channel": event.channel,
        "direction": event.direction,
        "kind": event.kind,
        "body": (event.preview or event.body)[:200],
        "ticket_id": event.ticket_id,
        "occurred_at": iso(event.occurred_at),
    }


def agent_json(agent: Agent) -> JSON:
    return {
        "id": agent.id,
        "name": agent.name,
        "email": agent.email,
        "role": agent.role,
        "skills": list(agent.skills),
        "extension": agent.extension,
        "capacity": dict(agent.capacity),
        "presence": agent.presence,
        "presence_since": iso(agent.presence_since),
    }
