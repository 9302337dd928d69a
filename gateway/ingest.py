"""The one ingest path (DESIGN.md): journal → dedupe → identify → ticket → append → route → pop.

Every channel ends here with a normalised `InboundEvent`. The journal row is committed first,
so an authenticated payload is never lost even if what follows fails. The rest is one
transaction: the event is never committed without its contact, ticket and routing decision,
so a crash can leave a payload in the journal but never a half-stored event or a ticket that
nobody will route.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.bus import SUPERVISORS_TOPIC, Bus
from gateway.pops import StoredPop, contact_card, publish_pops, store_pop
from gateway.settings import Settings
from routing.assignment import assign_ticket
from routing.contacts import identity_of, resolve_contact
from routing.tickets import TicketAction, TicketState, choose_ticket
from timeline import store
from timeline.db import Database
from timeline.events import InboundEvent
from timeline.models import (
    Contact,
    InboundJournal,
    JournalStatus,
    Ticket,
    utcnow,
)

log = logging.getLogger(__name__)

# Two first messages from one new sender race for its identity; a retry finds the winner.
_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class IngestResult:
    event_id: int
    contact_id: int | None
    ticket_id: int | None
    ticket_number: int | None
    duplicate: bool = False
    assignee_id: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "event_id": self.event_id,
            "contact_id": self.contact_id,
            "ticket_id": self.ticket_id,
            "ticket_number": self.ticket_number,
            "assignee_id": self.assignee_id,
            "duplicate": self.duplicate,
        }


@dataclass(frozen=True, slots=True)
class _Stored:
    result: IngestResult
    pops: list[StoredPop]


class IngestError(Exception):
    """The payload was accepted and journaled but could not be stored; it can be replayed."""

    def __init__(self, journal_id: int) -> None:
        super().__init__(f"ingest failed; journal entry {journal_id}")
        self.journal_id = journal_id


class Ingestor:
    def __init__(self, db: Database, bus: Bus, settings: Settings) -> None:
        self._db = db
        self._bus = bus
        self._settings = settings

    async def reject(
        self, *, channel: str, payload: bytes, content_type: str | None, reason: str
    ) -> int:
        """Keep an authentic but malformed payload, with why it was refused."""
        async with self._db.transaction() as session:
            entry = await store.journal(
                session,
                channel=channel,
                payload=payload,
                content_type=content_type,
                status=JournalStatus.REJECTED,
                reason=reason,
            )
            return entry.id

    async def ingest(
        self, event: InboundEvent, *, payload: bytes, content_type: str | None
    ) -> IngestResult:
        async with self._db.reading() as session:
            existing = await _previous_result(session, event)
        if existing is not None:
            return existing
        async with self._db.transaction() as session:
            entry = await store.journal(
                session, channel=event.channel, payload=payload, content_type=content_type
            )
            journal_id = entry.id
        try:
            stored = await self._store(event, journal_id)
        except Exception as error:
            log.exception("ingest of journal entry %s failed", journal_id)
            await self._mark_failed(journal_id, error)
            raise IngestError(journal_id) from error
        await publish_pops(self._bus, stored.pops)
        if not stored.result.duplicate:
            await self._bus.publish(
                SUPERVISORS_TOPIC,
                {
                    "type": "queue_update",
                    "queue": "default",
                    "ticket_id": stored.result.ticket_id,
                    "assignee_id": stored.result.assignee_id,
                },
            )
        return stored.result

    async def _store(self, event: InboundEvent, journal_id: int) -> _Stored:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with self._db.transaction() as session:
                    return await self._store_once(session, event, journal_id)
            except (IntegrityError, DBAPIError) as error:
                if not _is_retryable(error) or attempt == _ATTEMPTS:
                    raise
                async with self._db.transaction() as session:
                    existing = await _previous_result(session, event)
                    if existing is not None:
                        # A concurrent retry of the same payload won: answer as it did.
                        await session.execute(
                            delete(InboundJournal).where(InboundJournal.id == journal_id)
                        )
                        return _Stored(existing, [])
        raise AssertionError("unreachable")

    async def _store_once(
        self, session: AsyncSession, event: InboundEvent, journal_id: int
    ) -> _Stored:
        now = utcnow()
        contact = await self._identify(session, event)
        ticket, previous_assignee = await self._choose_ticket(session, event, contact, now)
        row = await store.append_event(
            session,
            _with_journal(event, journal_id),
            contact_id=contact.id if contact else None,
            ticket_id=ticket.id,
            sender=event.sender.raw,
        )
        ticket.updated_at = now
        pops = await self._route(session, event, ticket, now, previous_assignee)
        await session.flush()
        await store.mark_journal(session, journal_id, JournalStatus.ACCEPTED, event_id=row.id)
        result = IngestResult(
            event_id=row.id,
            contact_id=contact.id if contact else None,
            ticket_id=ticket.id,
            ticket_number=ticket.number,
            assignee_id=ticket.assignee_id,
        )
        return _Stored(result, pops)

    async def _identify(self, session: AsyncSession, event: InboundEvent) -> Contact | None:
        identity = identity_of(event.sender, self._settings.default_region)
        if identity is None:
            return None
        contact = await resolve_contact(session, identity, event.sender.name)
        await store.lock_contact(session, contact.id)
        return contact

    async def _choose_ticket(
        self, session: AsyncSession, event: InboundEvent, contact: Contact | None, now: datetime
    ) -> tuple[Ticket, int | None]:
        """The ticket for this event, and the agent who held it before if it was reopened."""
        hinted = await _hinted_ticket(session, event)
        open_ticket = last_resolved = None
        if contact is not None and hinted is None:
            open_ticket = await store.open_ticket_of(session, contact.id)
            if open_ticket is None:
                last_resolved = await store.last_resolved_ticket_of(session, contact.id)
        choice = choose_ticket(
            hinted=_state(hinted),
            open_ticket=_state(open_ticket),
            last_resolved=_state(last_resolved),
            now=now,
            reopen_window=self._settings.reopen_window,
        )
        if choice.action is TicketAction.NEW:
            ticket = await store.create_ticket(
                session,
                contact_id=contact.id if contact else None,
                channel=event.channel,
                subject=event.subject,
                queue="default",
                linked_ticket_id=choice.linked_ticket_id,
            )
            return ticket, None
        candidates = (hinted, open_ticket, last_resolved)
        ticket = next(t for t in candidates if t is not None and t.id == choice.ticket_id)
        if choice.action is TicketAction.REOPEN:
            return ticket, store.reopen(ticket, now)
        return ticket, None

    async def _route(
        self,
        session: AsyncSession,
        event: InboundEvent,
        ticket: Ticket,
        now: datetime,
        preferred_agent: int | None,
    ) -> list[StoredPop]:
        if ticket.assignee_id is not None:
            reason, agent_id = "new_message", ticket.assignee_id
        else:
            assigned = await assign_ticket(
                session, ticket.id, ticket.channel, now, preferred=preferred_agent
            )
            if assigned is None:
                return []
            reason, agent_id = "assigned", assigned
        card = await contact_card(session, ticket.contact_id)
        pop = await store_pop(
            session,
            agent_id=agent_id,
            reason=reason,
            channel=event.channel,
            card=card,
            ticket=ticket,
        )
        return [pop]

    async def _mark_failed(self, journal_id: int, error: Exception) -> None:
        async with self._db.transaction() as session:
            await store.mark_journal(
                session, journal_id, JournalStatus.FAILED, reason=f"{type(error).__name__}: {error}"
            )


async def _previous_result(session: AsyncSession, event: InboundEvent) -> IngestResult | None:
    row = await store.find_event(session, event.channel, event.external_id)
    if row is None:
        return None
    ticket = await session.get(Ticket, row.ticket_id) if row.ticket_id else None
    return IngestResult(
        event_id=row.id,
        contact_id=row.contact_id,
        ticket_id=row.ticket_id,
        ticket_number=ticket.number if ticket else None,
        assignee_id=ticket.assignee_id if ticket else None,
        duplicate=True,
    )


async def _hinted_ticket(session: AsyncSession, event: InboundEvent) -> Ticket | None:
    if event.thread.ticket_number is not None:
        ticket = await store.ticket_by_number(session, event.thread.ticket_number)
        if ticket is not None:
            return ticket
    return await store.ticket_of_references(session, event.channel, event.thread.references)


def _state(ticket: Ticket | None) -> TicketState | None:
    if ticket is None:
        return None
    return TicketState(ticket.id, ticket.status, ticket.resolved_at)


def _with_journal(event: InboundEvent, journal_id: int) -> InboundEvent:
    return replace(event, journal_id=journal_id)


def _is_retryable(error: Exception) -> bool:
    """Unique violations (a concurrent first message) and PostgreSQL deadlocks are retried."""
    if isinstance(error, IntegrityError):
        return True
    code = getattr(getattr(error, "orig", None), "sqlstate", None) or getattr(
        getattr(error, "orig", None), "pgcode", None
    )
    return code in {"40P01", "40001"}
