"""The one ingest path (DESIGN.md): journal → dedupe → identify → ticket → append → route → pop.

Every channel ends here with a normalised `InboundEvent`. Inbounds queue up and a writer takes
whatever has gathered as one batch (group commit): the batch's raw payloads are journaled and
committed first, so nothing authenticated is lost whatever follows; then one transaction
dedupes, identifies, chooses tickets, appends the events, routes and stores the pops for the
whole batch, a statement per step rather than per event. Each caller is answered only after
that commit, so a 202 always means committed. Under light load a batch is one event and
nothing waits; under heavy load the batches grow and the cost per event falls.

A payload whose sender keeps it until we acknowledge it (an IMAP server keeps a message until
it is flagged) needs no journal commit of its own: its entry is written, already accepted, in
the transaction that stores its event (`journal_first=False`). Were that transaction lost, the
sender still has the payload and hands it over again.

A batch that fails is retried, then split into single events, so one bad event cannot take
its neighbours down: it alone is journaled as failed.

The writer reads tickets as plain records (`store.TicketRecord`) and writes back what it
changed with one statement per kind of change: ORM objects cost more per ticket in Python
than the database spends on the rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from gateway.bus import Bus
from gateway.dispatch import Announcement, ConfigCache, offer_messages, publish
from gateway.group_commit import GroupCommit, IngestError
from gateway.pops import PopRequest, StoredPop, store_pops
from gateway.settings import Settings
from routing.assignment import RouteRequest, enter_and_route, shared
from routing.config import RoutingConfig
from routing.contacts import identity_of, resolve_contacts
from routing.identity import IdentityKey
from routing.queues import DEFAULT_QUEUE
from routing.rules import Facts, choose_queue
from routing.tickets import TicketAction, TicketState, choose_ticket
from timeline import store
from timeline.db import Database
from timeline.events import Attachment, InboundEvent
from timeline.models import (
    OPEN_STATUSES,
    Contact,
    JournalStatus,
    Ticket,
    TicketStatus,
    TimelineEvent,
    utcnow,
)
from timeline.store import TicketRecord

log = logging.getLogger(__name__)

K = TypeVar("K")

# A batch can lose a race with another process (a new contact's identity, a deadlock);
# retrying finds the winner's rows. After that, events are stored one by one.
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


@dataclass(eq=False)
class _Job:
    event: InboundEvent
    payload: bytes
    content_type: str | None
    done: asyncio.Future[IngestResult]
    # False: journaled in the transaction that stores the event (the sender keeps it till then).
    journal_first: bool = True
    journal_id: int | None = None
    # Later copies of the same event in one batch: answered as retries once this one is.
    copies: list[_Job] = field(default_factory=list)

    @property
    def key(self) -> store.EventKey:
        return (self.event.channel, self.event.external_id)

    def answer(self, result: IngestResult) -> None:
        if not self.done.done():
            self.done.set_result(result)
        for copy in self.copies:
            copy.answer(replace(result, duplicate=True))

    def fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)
        for copy in self.copies:
            copy.fail(error)


@dataclass(slots=True)
class _Stored:
    results: dict[_Job, IngestResult]
    news: Announcement = field(default_factory=Announcement)


class Ingestor:
    def __init__(
        self, db: Database, bus: Bus, settings: Settings, config: ConfigCache | None = None
    ) -> None:
        self._db = db
        self._bus = bus
        self._settings = settings
        self._config = config or ConfigCache(db)
        # SQLite has one writer at a time anyway; PostgreSQL gets a few concurrent batches.
        writers = 1 if db.is_sqlite else 4
        self._batches = GroupCommit("ingest", self._process, writers=writers)

    async def start(self) -> None:
        await self._batches.start()

    async def stop(self) -> None:
        """Finish what is queued, then end."""
        await self._batches.stop()

    async def ingest(
        self, event: InboundEvent, *, payload: bytes, content_type: str | None
    ) -> IngestResult:
        """Store one event (or find it stored before) and answer once it is committed."""
        # Shielded: a caller who hangs up must not cancel the batch its event is part of.
        return await asyncio.shield(self.submit(event, payload=payload, content_type=content_type))

    def submit(
        self,
        event: InboundEvent,
        *,
        payload: bytes,
        content_type: str | None,
        journal_first: bool = True,
    ) -> asyncio.Future[IngestResult]:
        """`ingest` without waiting: the answer to come. Events submitted in order are stored
        in order; a batch of them costs no task per event (e-mail intake submits hundreds).

        `journal_first=False` only for a payload its sender keeps until the answer (see the
        module's docstring): its journal entry is written with its event, in one commit.
        """
        future = asyncio.get_running_loop().create_future()
        self._batches.submit(_Job(event, payload, content_type, future, journal_first))
        return future

    async def reject(
        self, *, channel: str, payload: bytes, content_type: str | None, reason: str
    ) -> int:
        """Keep an authentic but malformed payload, with why it was refused."""
        (journal_id,) = await self._db.run(
            store.journal,
            [(channel, payload, content_type)],
            status=JournalStatus.REJECTED,
            reason=reason,
        )
        return journal_id

    async def _process(self, batch: list[_Job]) -> None:
        leaders: dict[store.EventKey, _Job] = {}
        for job in batch:
            if job.key in leaders:
                leaders[job.key].copies.append(job)
            else:
                leaders[job.key] = job
        first = {key: job for key, job in leaders.items() if job.journal_first}
        if first:
            await self._journal_first(first)
        # Journaled first and fresh (the retries are answered), or journaled with the event.
        fresh = [j for j in leaders.values() if not j.journal_first or j.journal_id is not None]
        stored = await self._store(fresh)
        for job, result in stored.results.items():
            job.answer(result)
        try:
            await publish(self._bus, stored.news)
        except Exception:  # committed all the same: the pops are stored and replayed
            log.exception("publishing %d pops failed", len(stored.news.pops))

    async def _journal_first(self, leaders: dict[store.EventKey, _Job]) -> None:
        """Journal and commit the payloads of events not stored before; answer the retries."""
        fresh, journal_ids, retries = await self._db.run(_journal_new, leaders)
        for job, journal_id in zip(fresh, journal_ids, strict=True):
            job.journal_id = journal_id
        for job, result in retries.items():
            job.answer(result)

    async def _store(self, jobs: list[_Job]) -> _Stored:
        if not jobs:
            return _Stored({})
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                config = await self._config.get()
                return await self._db.run(_write_batch, self._settings, config, jobs, attempt > 1)
            except Exception as error:
                if _is_race(error) and attempt < _ATTEMPTS:
                    continue
                if len(jobs) > 1:
                    return await self._store_one_by_one(jobs)
                await self._mark_failed(jobs[0], error)
                return _Stored({})
        raise AssertionError("unreachable")

    async def _store_one_by_one(self, jobs: list[_Job]) -> _Stored:
        merged = _Stored({})
        for job in jobs:
            stored = await self._store([job])
            merged.results.update(stored.results)
            merged.news.pops.extend(stored.news.pops)
            merged.news.offers.extend(stored.news.offers)
            merged.news.queues |= stored.news.queues
        return merged

    async def _mark_failed(self, job: _Job, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        try:
            if job.journal_id is not None:
                await self._db.run(
                    store.mark_journal, job.journal_id, JournalStatus.FAILED, reason=reason
                )
            else:  # its entry was to go in with the event, and went with the transaction
                (job.journal_id,) = await self._db.run(
                    store.journal,
                    [(job.event.channel, job.payload, job.content_type)],
                    status=JournalStatus.FAILED,
                    reason=reason,
                )
        finally:
            log.error(
                "ingest of journal entry %s failed: %s", job.journal_id, type(error).__name__,
                exc_info=error,
            )  # fmt: skip
        job.fail(IngestError(job.journal_id))


def _journal_new(
    session: Session, leaders: dict[store.EventKey, _Job]
) -> tuple[list[_Job], list[int], dict[_Job, IngestResult]]:
    """Journal the payloads of events not stored before; the retries' earlier results."""
    stored = store.events_by_key(session, leaders.keys())
    fresh = [job for key, job in leaders.items() if key not in stored]
    journal_ids = store.journal(
        session, [(j.event.channel, j.payload, j.content_type) for j in fresh]
    )
    retries = {leaders[key]: _previous_result(session, e) for key, e in stored.items()}
    return fresh, journal_ids, retries


def _write_batch(
    session: Session, settings: Settings, config: RoutingConfig, jobs: list[_Job], recheck: bool
) -> _Stored:
    return _BatchWriter(session, settings, config).write(jobs, recheck=recheck)


class _BatchWriter:
    """One batch inside one transaction, step by step as DESIGN.md lists them."""

    def __init__(self, session: Session, settings: Settings, config: RoutingConfig) -> None:
        self.session = session
        self.settings = settings
        self.config = config
        self.now = utcnow()
        self.new_contacts: frozenset[int] = frozenset()
        self.facts_of: dict[int, tuple[list[str], dict[str, object]]] = {}
        # Every stored ticket the batch read, once: the same ticket found as a thread's and as
        # the contact's open one is one record, as the ticket policy and later events expect.
        self.tickets: dict[int, TicketRecord] = {}

    def write(self, jobs: list[_Job], *, recheck: bool) -> _Stored:
        """`recheck` after a lost race: another process may have stored some of the events."""
        shared(self.session)
        jobs, results = self._drop_stored(jobs, recheck=recheck)
        event_ids = store.reserve_ids(self.session, TimelineEvent, len(jobs))
        journal_of = self._journal(jobs, event_ids)
        contact_of = self._identify(jobs)
        ticket_of, waiting = self._choose_tickets(jobs, contact_of)
        self._append(jobs, event_ids, journal_of, contact_of, ticket_of)
        routed = enter_and_route(self.session, self.config, waiting, self.now)
        assigned = routed.assigned
        for ticket in set(ticket_of.values()):
            if ticket is not None and ticket.id in assigned:
                ticket.assignee_id, ticket.status = assigned[ticket.id], TicketStatus.OPEN
        pops = self._pops(jobs, contact_of, ticket_of, assigned)
        store.mark_journal_accepted(
            self.session,
            [(j.journal_id, e) for j, e in zip(jobs, event_ids, strict=True) if j.journal_id],
        )
        for job, event_id in zip(jobs, event_ids, strict=True):
            ticket = ticket_of[job]
            results[job] = IngestResult(
                event_id=event_id,
                contact_id=contact_of.get(job),
                ticket_id=ticket.id if ticket else None,
                ticket_number=ticket.number if ticket else None,
                assignee_id=ticket.assignee_id if ticket else None,
            )
        news = Announcement(pops, offer_messages(self.session, routed.offers), routed.queues)
        return _Stored(results, news)

    def _drop_stored(
        self, jobs: list[_Job], *, recheck: bool
    ) -> tuple[list[_Job], dict[_Job, IngestResult]]:
        """Dedupe: events stored before are answered as retries. Those journaled first were
        looked up then; again only after a lost race (another process may have stored them)."""
        unchecked = [j.key for j in jobs if recheck or j.journal_id is None]
        stored = store.events_by_key(self.session, unchecked)
        if not stored:
            return jobs, {}
        results = {
            j: _previous_result(self.session, stored[j.key]) for j in jobs if j.key in stored
        }
        store.forget_journal(self.session, [j.journal_id for j in results if j.journal_id])
        return [j for j in jobs if j.key not in stored], results

    def _journal(self, jobs: list[_Job], event_ids: Sequence[int]) -> dict[_Job, int | None]:
        """Each event's journal entry: the payloads not journaled first go in now, accepted
        as these events."""
        with_event = [(j, e) for j, e in zip(jobs, event_ids, strict=True) if not j.journal_first]
        journal_ids = store.journal(
            self.session,
            [(j.event.channel, j.payload, j.content_type) for j, _ in with_event],
            event_ids=[e for _, e in with_event],
        )
        journal_of = {j: j.journal_id for j in jobs}
        journal_of.update(zip((j for j, _ in with_event), journal_ids, strict=True))
        return journal_of

    def _identify(self, jobs: list[_Job]) -> dict[_Job, int]:
        region = self.settings.default_region
        identities: dict[_Job, IdentityKey] = {}
        for job in jobs:
            identity = identity_of(job.event.sender, region)
            if identity is not None:
                identities[job] = identity
        resolved = resolve_contacts(
            self.session, [(i, job.event.sender.name) for job, i in identities.items()]
        )
        self.new_contacts = resolved.created
        store.lock_contacts(self.session, set(resolved.contacts.values()))
        return {job: resolved.contacts[identity] for job, identity in identities.items()}

    def _read(self, found: Mapping[K, TicketRecord]) -> dict[K, TicketRecord]:
        """`found`, with a ticket read before in this batch as the record read first."""
        return {key: self.tickets.setdefault(t.id, t) for key, t in found.items()}

    def _choose_tickets(
        self, jobs: list[_Job], contact_of: dict[_Job, int]
    ) -> tuple[dict[_Job, TicketRecord | None], list[RouteRequest]]:
        """Each event's ticket, in arrival order, as if the events came one at a time."""
        # Contacts created by this batch have no tickets yet: nothing to look up for them.
        session, contact_ids = self.session, set(contact_of.values()) - self.new_contacts
        by_number = self._read(
            store.ticket_records_by_number(
                session, {n for j in jobs if (n := j.event.thread.ticket_number) is not None}
            )
        )
        # Events earlier in this batch join in below, so a reply in the same batch finds its
        # thread as it would arriving on its own.
        by_reference = self._read(
            store.ticket_records_by_reference(
                session,
                {(j.event.channel, ref) for j in jobs for ref in j.event.thread.references},
            )
        )
        open_of = self._read(store.open_ticket_records_by_contact(session, contact_ids))
        resolved_of = self._read(
            store.last_resolved_ticket_records_by_contact(session, contact_ids - set(open_of))
        )
        if self.config.rules:
            self.facts_of = _contact_facts(session, contact_ids)
        ticket_of: dict[_Job, TicketRecord | None] = {}
        new_tickets: list[TicketRecord] = []
        reopened: set[TicketRecord] = set()
        preferred: dict[TicketRecord, int | None] = {}
        for job in jobs:
            contact_id = contact_of.get(job)
            hinted = _hinted(job.event, by_number, by_reference)
            open_ticket = last_resolved = None
            if contact_id is not None:
                open_ticket, last_resolved = open_of.get(contact_id), resolved_of.get(contact_id)
            ticket, action, previous = self._ticket_for(
                job.event, contact_id, hinted, open_ticket, last_resolved
            )
            ticket_of[job] = ticket
            if ticket is None:
                continue
            by_reference[job.key] = ticket
            if action is TicketAction.NEW:
                new_tickets.append(ticket)
            elif action is TicketAction.REOPEN:
                reopened.add(ticket)
            if action is not TicketAction.APPEND:
                preferred[ticket] = previous
            if contact_id is not None:
                open_of[contact_id] = ticket
        store.insert_tickets(session, new_tickets, self.now)
        store.write_reopened(session, reopened, self.now)
        # The other tickets stored before that got an event: each of them was updated now.
        written = reopened.union(new_tickets)
        store.touch_tickets(
            session, {t for t in ticket_of.values() if t is not None and t not in written}, self.now
        )
        waiting = [
            RouteRequest(t.id, t.channel, t.queue, t.contact_id, t.priority, preferred=p)
            for t, p in preferred.items()
            if t.assignee_id is None and t.status in OPEN_STATUSES
        ]
        return ticket_of, waiting

    def _ticket_for(
        self,
        event: InboundEvent,
        contact_id: int | None,
        hinted: TicketRecord | None,
        open_ticket: TicketRecord | None,
        last_resolved: TicketRecord | None,
    ) -> tuple[TicketRecord | None, TicketAction, int | None]:
        # Tickets created earlier in this batch have no id yet; the policy only needs a handle.
        candidates = {id(t): t for t in (hinted, open_ticket, last_resolved) if t is not None}
        choice = choose_ticket(
            hinted=_state(hinted),
            open_ticket=_state(open_ticket),
            last_resolved=_state(last_resolved),
            now=self.now,
            reopen_window=self.settings.reopen_window,
            opens_ticket=event.thread.opens_ticket,
        )
        if choice.action is TicketAction.NONE:
            return None, choice.action, None
        if choice.action is TicketAction.NEW:
            linked = candidates[choice.linked_ticket_id] if choice.linked_ticket_id else None
            ticket = TicketRecord(
                contact_id=contact_id,
                channel=event.channel,
                subject=event.subject,
                linked_ticket_id=linked.id if linked else None,
                queue=self._queue_for(event, contact_id),
            )
            return ticket, choice.action, None
        assert choice.ticket_id is not None
        chosen = candidates[choice.ticket_id]
        if choice.action is TicketAction.REOPEN:
            return chosen, choice.action, store.reopen(chosen, self.now)
        return chosen, choice.action, None

    def _queue_for(self, event: InboundEvent, contact_id: int | None) -> str:
        """The first routing rule that holds picks the queue; else the event's own."""
        if not self.config.rules:
            return event.queue or DEFAULT_QUEUE
        tags, attributes = self.facts_of.get(contact_id or 0, ([], {}))
        facts = Facts(
            channel=event.channel,
            recipient=event.recipient,
            subject=event.subject or "",
            body=event.text,
            tags=frozenset(tags),
            attributes=attributes,
        )
        return choose_queue(
            self.config.rules, facts, self.config.queues, self.now, fallback=event.queue
        )

    def _append(
        self,
        jobs: list[_Job],
        event_ids: Sequence[int],
        journal_of: Mapping[_Job, int | None],
        contact_of: dict[_Job, int],
        ticket_of: dict[_Job, TicketRecord | None],
    ) -> None:
        store.add_events(
            self.session,
            [
                _timeline_event(
                    job.event,
                    event_id,
                    journal_of[job],
                    contact_of.get(job),
                    ticket.id if (ticket := ticket_of[job]) else None,
                )
                for job, event_id in zip(jobs, event_ids, strict=True)
            ],
        )

    def _pops(
        self,
        jobs: list[_Job],
        contact_of: dict[_Job, int],
        ticket_of: dict[_Job, TicketRecord | None],
        assigned: dict[int, int],
    ) -> list[StoredPop]:
        """One pop per ticket and batch: to whoever holds the ticket now."""
        requests: dict[int, PopRequest] = {}
        for job in jobs:
            ticket = ticket_of[job]
            if ticket is None or ticket.assignee_id is None:
                continue
            reason = "assigned" if ticket.id in assigned else "new_message"
            requests[ticket.id] = PopRequest(
                ticket.assignee_id, reason, job.event.channel, contact_of.get(job), ticket
            )
        return store_pops(self.session, list(requests.values()))


def _contact_facts(
    session: Session, contact_ids: set[int]
) -> dict[int, tuple[list[str], dict[str, object]]]:
    """Tags and attributes of a batch's known contacts, for the routing rules."""
    if not contact_ids:
        return {}
    rows = session.execute(
        select(Contact.id, Contact.tags, Contact.attributes).where(Contact.id.in_(contact_ids))
    )
    return {contact_id: (tags or [], attributes or {}) for contact_id, tags, attributes in rows}


def _hinted(
    event: InboundEvent,
    by_number: dict[int, TicketRecord],
    by_reference: dict[store.EventKey, TicketRecord],
) -> TicketRecord | None:
    if event.thread.ticket_number in by_number:
        return by_number[event.thread.ticket_number]
    for reference in reversed(event.thread.references):  # the newest reference first
        if (event.channel, reference) in by_reference:
            return by_reference[(event.channel, reference)]
    return None


def _state(ticket: TicketRecord | None) -> TicketState | None:
    if ticket is None:
        return None
    return TicketState(id(ticket), ticket.status, ticket.resolved_at)


def _timeline_event(
    event: InboundEvent,
    event_id: int,
    journal_id: int | None,
    contact_id: int | None,
    ticket_id: int | None,
) -> store.Row:
    return {
        "id": event_id,
        "channel": event.channel,
        "external_id": event.external_id,
        "kind": event.kind,
        "direction": event.direction,
        "contact_id": contact_id,
        "ticket_id": ticket_id,
        "sender": event.sender.raw,
        "recipient": event.recipient,
        "subject": event.subject,
        "body": event.text,
        "preview": event.preview,
        "html": event.html,
        "attachments": [_attachment_json(a) for a in event.attachments],
        "occurred_at": event.occurred_at,
        "journal_id": journal_id,
    }


def _attachment_json(attachment: Attachment) -> dict[str, object]:
    stored: dict[str, object] = {
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "size": attachment.size,
        "url": attachment.url,
    }
    if attachment.content_id:
        stored["content_id"] = attachment.content_id
    return stored


def _previous_result(session: Session, event: TimelineEvent) -> IngestResult:
    ticket = session.get(Ticket, event.ticket_id) if event.ticket_id else None
    return IngestResult(
        event_id=event.id,
        contact_id=event.contact_id,
        ticket_id=event.ticket_id,
        ticket_number=ticket.number if ticket else None,
        assignee_id=ticket.assignee_id if ticket else None,
        duplicate=True,
    )


def _is_race(error: Exception) -> bool:
    """Lost races worth retrying: unique violations and PostgreSQL deadlocks/serialisation."""
    if not isinstance(error, DBAPIError):
        return False
    orig = error.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in {"23505", "40P01", "40001"} or "UNIQUE constraint failed" in str(orig)
