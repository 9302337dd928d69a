"""Calls: every telephony channel's signals applied to one call and its one timeline event.

A ringing call pops the caller's card to the agents the PBX names, else to every available
agent; an answer withdraws the other agents' pops; a hang-up closes the call, and an
unanswered inbound call becomes a missed call with exactly one callback ticket. The call is
one timeline event, updated through its life, never one event per signal. Signals may arrive
twice, late or out of order (a hang-up before the ring): each is applied at most once, and
nothing a call has already passed is undone.

Signals are written by group commit (see `gateway.group_commit`): whatever has queued is
journaled and applied in one transaction (should that fail: journaled in one, then applied
in a second, signal by signal if need be), a statement per step for the whole batch rather
than per signal; that is what keeps a card on screen within milliseconds at
hundreds of calls a second. One writer keeps the signals of a call in the order they came.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, Update, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.bus import SUPERVISORS_TOPIC, Bus, agent_topic
from gateway.dispatch import ConfigCache, assigned_pops, offer_messages
from gateway.group_commit import GroupCommit, IngestError
from gateway.pops import PopRequest, StoredPop, publish_pops, store_pops
from gateway.ringing import (
    CHANNEL,
    RING_REASON,
    Rung,
    customer,
    is_blocked,
    named_ids,
    pop_call,
    reference,
    ring_first,
)
from gateway.serialize import JSON
from gateway.settings import Settings
from routing import presence, stats
from routing.assignment import (
    RouteRequest,
    agents_by_reference,
    available_agents,
    enter_and_route,
    exclusive,
    schedule,
)
from routing.config import RoutingConfig
from routing.contacts import identity_of, resolve_contacts
from routing.identity import IdentityKey
from routing.queues import DEFAULT_QUEUE, QueueConfig
from timeline import store
from timeline.db import Database
from timeline.events import CallPhase, CallSignal, Direction, EventKind, HangupCause
from timeline.models import (
    FINAL_CALL_STATES,
    Agent,
    Call,
    CallState,
    JournalStatus,
    Presence,
    ScreenPop,
    Ticket,
    TimelineEvent,
    TimerKind,
    utcnow,
)

log = logging.getLogger(__name__)

# An inbound call that ends unanswered for these reasons is a missed call (Zammad's rule).
MISSED_CAUSES = (
    HangupCause.CANCEL,
    HangupCause.NO_ANSWER,
    HangupCause.BUSY,
    HangupCause.NORMAL_CLEARING,
    None,
)
# Two processes may open the same new call at once; the loser's retry finds the winner's.
_ATTEMPTS = 3
# How long a batch of signals waits for company once its first signal is in. A batch costs
# the writer ~2 ms of CPU whatever its size (a dozen statements and a commit) and ~0.2 ms
# more per ring; left to itself at 200 calls/s the writer took batches of one or two and
# spent 2-3 ms per call, much of it GIL time taken from the event loop and so from the next
# ring's pop (bench.screenpop). What waits is the webhook's answer and what the writer
# publishes (withdrawals, callback offers); a new call's pops go out before its batch.
BATCH_LINGER_SECONDS = 0.02

_UNHEARD = {CallPhase.ANSWERED: "answer", CallPhase.ENDED: "hangup"}

CallKey = store.CallKey


@dataclass
class CallOutcome:
    call: JSON | None
    blocked: bool = False
    pops: list[StoredPop] = field(default_factory=list)
    withdrawn: list[tuple[int, int]] = field(default_factory=list)  # (agent id, pop id)
    callback_ticket_id: int | None = None
    callback_queue: str | None = None
    offers: list[JSON] = field(default_factory=list)  # of the callback ticket
    presence: dict[int, str] = field(default_factory=dict)  # agents on or off a call


@dataclass(eq=False)
class _CallJob:
    signal: CallSignal
    payload: bytes
    content_type: str | None
    done: asyncio.Future[CallOutcome]
    reading_ahead: asyncio.Future[Rung | None] | None = None
    rung: Rung | None = None  # its pops went out before the commit (`gateway.ringing`)
    journal_id: int | None = None

    @property
    def key(self) -> CallKey:
        return (self.signal.provider, self.signal.call_id)

    def answer(self, outcome: CallOutcome) -> None:
        if not self.done.done():
            self.done.set_result(outcome)

    def fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


class CallDesk:
    def __init__(
        self, db: Database, bus: Bus, settings: Settings, config: ConfigCache | None = None
    ) -> None:
        self._db = db
        self._bus = bus
        self._settings = settings
        self._config = config or ConfigCache(db)
        self._batches = GroupCommit("calls", self._process, linger=BATCH_LINGER_SECONDS)
        self._ringing: set[CallKey] = set()  # rings read ahead, not yet written

    async def start(self) -> None:
        await self._batches.start()

    async def stop(self) -> None:
        await self._batches.stop()

    async def receive(
        self, signal: CallSignal, *, payload: bytes, content_type: str | None
    ) -> CallOutcome:
        """Pop a new call's ring at once, journal the raw payload, apply the signal; answer
        once both are committed."""
        loop = asyncio.get_running_loop()
        job = _CallJob(signal, payload, content_type, loop.create_future())
        if signal.phase is CallPhase.RINGING:
            job.reading_ahead = loop.create_future()
        # Queued before the ring is read ahead, so that it keeps its place among its call's
        # other signals; the writer waits for the read-ahead (`_process`).
        self._batches.submit(job)
        if job.reading_ahead is not None:
            await self._read_ahead(signal, job.reading_ahead)
        # Shielded: a PBX that hangs up must not cancel the batch its signal is part of.
        return await asyncio.shield(job.done)

    async def _read_ahead(self, signal: CallSignal, reading: asyncio.Future[Rung | None]) -> None:
        """The ring's pops read and published by the webhook's own handler, not by a task of
        its own: a task starts a turn of the loop later, behind whatever else is ready then
        (a committed batch's answers, say), and that turn showed in the ring-to-pop tail.

        `reading` gets what went out whatever happens, a cancelled handler included: a ring
        cut short before its pops were published leaves the ringing to the writer; one cut
        short while publishing (the server stopping) is stored as read, and the pops not yet
        published are replayed when their agents reconnect."""
        rung: Rung | None = None
        # The writer thread makes way until the pops are on the agents' sockets.
        release = self._db.foreground.hold()
        try:
            rung = await self._ring_first(signal)
            if rung is not None:
                try:
                    await publish_pops(self._bus, rung.pops)
                except Exception:  # stored all the same under these ids, and replayed
                    log.exception("publishing the pops of a ring failed")
        finally:
            release()
            reading.set_result(rung)

    async def _ring_first(self, signal: CallSignal) -> Rung | None:
        """The ring's pops, to publish before the signal waits for the writer; None leaves the
        ringing to the writer (not a new inbound ring, one of its call already in flight)."""
        key = (signal.provider, signal.call_id)
        if key in self._ringing:
            return None
        self._ringing.add(key)
        try:
            rung = await ring_first(self._db, self._settings, self._config.get, signal)
        except Exception:
            log.exception("a ring could not be read ahead; the writer rings it")
            rung = None
        if rung is None:
            self._ringing.discard(key)
        return rung

    async def _process(self, batch: list[_CallJob]) -> None:
        for job in batch:
            if job.reading_ahead is not None:
                job.rung = await job.reading_ahead
        try:
            config = await self._config.get()
            outcomes = await self._db.run(journal_and_apply, self._settings, config, batch)
        except Exception:  # nothing of it stored: journaled on its own first, then as below
            log.debug("a batch of %d call signals goes the long way", len(batch), exc_info=True)
            outcomes = await self._journal_then_apply(batch)
        for job in batch:
            self._ringing.discard(job.key)
        for job, outcome in outcomes.items():
            job.answer(outcome)
            try:
                await self._publish(job, outcome)
            except Exception:  # committed all the same: the pops are stored and replayed
                log.exception("publishing what journal entry %s changed failed", job.journal_id)
            # Answers and news of a committed batch are not what a ring waits for: one signal's
            # per turn of the loop, so that a ring arriving meanwhile pops in between rather
            # than behind the whole batch's (and its webhook client gets them one by one).
            await asyncio.sleep(0)

    async def _journal_then_apply(self, batch: list[_CallJob]) -> dict[_CallJob, CallOutcome]:
        """The payloads journaled and committed first, so that a signal that cannot be applied
        is kept, marked failed."""
        try:
            journal_ids = await self._db.run(
                store.journal, [(CHANNEL, job.payload, job.content_type) for job in batch]
            )
        except Exception:
            for job in batch:
                await self._unring(job)
            raise
        for job, journal_id in zip(batch, journal_ids, strict=True):
            job.journal_id = journal_id
        return await self._apply(batch)

    async def _apply(self, jobs: list[_CallJob]) -> dict[_CallJob, CallOutcome]:
        """The batch in one transaction; should that fail, signal by signal, so that one bad
        signal alone is journaled as failed."""
        error: Exception = RuntimeError("not applied")
        for _ in range(_ATTEMPTS):
            try:
                config = await self._config.get()
                return await self._db.run(apply_signals, self._settings, config, jobs)
            except IntegrityError as race:  # try again: the retry finds the winner's rows
                error = race
                for job in jobs:  # and rings anew, should a reserved id be what collided
                    await self._unring(job)
                    job.rung = None
            except Exception as failure:
                error = failure
                break
        if len(jobs) > 1:
            outcomes: dict[_CallJob, CallOutcome] = {}
            for job in jobs:
                outcomes.update(await self._apply([job]))
            return outcomes
        await self._mark_failed(jobs[0], error)
        return {}

    async def _publish_withdrawals(self, withdrawn: list[tuple[int, int]]) -> None:
        for agent_id, pop_id in withdrawn:
            await self._bus.publish(agent_topic(agent_id), {"type": "pop_withdrawn", "id": pop_id})

    async def _mark_failed(self, job: _CallJob, error: Exception) -> None:
        log.error("call signal of journal entry %s failed", job.journal_id, exc_info=error)
        if job.journal_id is not None:
            await self._db.run(
                store.mark_journal,
                job.journal_id,
                JournalStatus.FAILED,
                reason=f"{type(error).__name__}: {error}",
            )
        await self._unring(job)
        job.fail(IngestError(job.journal_id))

    async def _unring(self, job: _CallJob) -> None:
        """A ring that went out but will not be stored (as it went out) is taken back."""
        self._ringing.discard(job.key)
        if job.rung is not None:
            await self._publish_withdrawals([(p.agent_id, p.message["id"]) for p in job.rung.pops])

    async def _publish(self, job: _CallJob, outcome: CallOutcome) -> None:
        out_already = job.rung.pop_ids if job.rung else set()
        await publish_pops(
            self._bus, [pop for pop in outcome.pops if pop.message["id"] not in out_already]
        )
        await self._publish_withdrawals(outcome.withdrawn)
        for agent_id, state in outcome.presence.items():
            await self._bus.publish(agent_topic(agent_id), {"type": "presence", "state": state})
        for offer in outcome.offers:
            message = {k: v for k, v in offer.items() if k != "agent_id"}
            await self._bus.publish(agent_topic(offer["agent_id"]), message)
        if outcome.callback_ticket_id is not None:
            await self._bus.publish(
                SUPERVISORS_TOPIC,
                {
                    "type": "queue_update",
                    "queue": outcome.callback_queue,
                    "ticket_id": outcome.callback_ticket_id,
                },
            )


def journal_and_apply(
    session: Session, settings: Settings, config: RoutingConfig, jobs: Sequence[_CallJob]
) -> dict[_CallJob, CallOutcome]:
    """The batch's payloads journaled and its signals applied in one transaction: one commit
    and one hand-off to the writer instead of two. Should it fail, nothing of it is stored."""
    entries = [(CHANNEL, job.payload, job.content_type) for job in jobs]
    for job, journal_id in zip(jobs, store.journal(session, entries), strict=True):
        job.journal_id = journal_id
    try:
        return apply_signals(session, settings, config, jobs)
    except BaseException:
        for job in jobs:  # those entries are rolled back with the rest
            job.journal_id = None
        raise


def apply_signals(
    session: Session, settings: Settings, config: RoutingConfig, jobs: Sequence[_CallJob]
) -> dict[_CallJob, CallOutcome]:
    """Apply a batch of signals in the caller's transaction and settle their journal entries.

    Answers and hang-ups change presence and route callback tickets: those batches take the
    exclusive routing lock; batches of rings alone (the screen-pop path) do not wait for it."""
    if any(job.signal.phase is not CallPhase.RINGING for job in jobs):
        exclusive(session)
    outcomes: dict[_CallJob, CallOutcome] = {}
    notes: dict[int, str] = {}
    for wave in _waves(jobs):
        applied = _Wave(session, settings, config, wave)
        outcomes.update(applied.apply())
        notes.update(applied.notes)
    store.mark_journal_accepted(
        session,
        [(job.journal_id, outcome.call["event_id"]) for job, outcome in outcomes.items()
         if job.journal_id is not None and outcome.call is not None],
        notes,
    )  # fmt: skip
    return outcomes


def _waves(jobs: Sequence[_CallJob]) -> Iterator[list[_CallJob]]:
    """Consecutive runs of signals for distinct calls: a second signal of a call waits for
    the next wave, so it sees what the first did."""
    wave: list[_CallJob] = []
    keys: set[CallKey] = set()
    for job in jobs:
        if job.key in keys:
            yield wave
            wave, keys = [], set()
        wave.append(job)
        keys.add(job.key)
    if wave:
        yield wave


class _Wave:
    """Signals of distinct calls applied together, inside the caller's transaction."""

    def __init__(
        self, session: Session, settings: Settings, config: RoutingConfig, jobs: list[_CallJob]
    ) -> None:
        self.session = session
        self.settings = settings
        self.config = config
        self.jobs = jobs
        self.now = utcnow()
        self.outcomes = {job: CallOutcome(None) for job in jobs}
        self.notes: dict[int, str] = {}  # journal id -> remark
        # The wave's calls as plain records (`_CallRecord`), written back by `_write`: the ORM's
        # change tracking and flush cost far more per call than the statements themselves.
        self.calls: dict[CallKey, Call] = {}
        self.opened: list[Call] = []  # new calls, inserted by `_write`
        self.touched: list[Call] = []  # stored calls this wave changed
        self.event_changes: dict[int, dict[str, Any]] = {}  # event id -> new column values
        self.on_calls: set[int] = set()  # agents who answered: busy
        self.wrapping: dict[int, datetime] = {}  # agents whose call ended: after-call work until
        self.bumps: list[stats.Bump] = []  # inbound calls in their queue's figures

    def apply(self) -> dict[_CallJob, CallOutcome]:
        self.calls = _calls_by_key(self.session, [job.key for job in self.jobs])
        stored = set(self.calls)
        self._open([job for job in self.jobs if job.key not in stored])
        named = agents_by_reference(self.session, _references(self.jobs))
        ringing, missed, withdrawing = [], [], []
        for job in self.jobs:
            call, phase = self.calls[job.key], job.signal.phase
            self.outcomes[job].blocked = call.state == CallState.BLOCKED
            if call.state in FINAL_CALL_STATES:
                continue
            if job.key in stored:
                self.touched.append(call)
            call.updated_at = self.now
            call.queue = call.queue or job.signal.queue
            if phase is CallPhase.RINGING:
                # A ring that comes late, after the answer, rings nobody.
                if call.state == CallState.RINGING:
                    ringing.append(job)
            elif phase is CallPhase.ANSWERED:
                if call.state == CallState.RINGING:
                    self._answer(call, job.signal, named)
                    withdrawing.append(job)
            else:
                self._end(call, job.signal)
                withdrawing.append(job)
                if call.state == CallState.MISSED:
                    missed.append(job)
        self._ring(ringing, named)
        self._take_back_unstored_rings()
        self._withdraw(withdrawing)
        self._call_back(missed)
        self._presence()
        self._write()
        stats.record(self.session, self.bumps)
        for job, outcome in self.outcomes.items():
            outcome.call = call_json(self.calls[job.key])
        return self.outcomes

    def _open(self, jobs: list[_CallJob]) -> None:
        """The first signals of calls: their records and their timeline events."""
        if not jobs:
            return
        region = self.settings.default_region
        identities = {job: identity_of(customer(job.signal), region) for job in jobs}
        blocked = {job for job in jobs if self._refuses(job.signal, identities[job])}
        customers = {
            job: identity
            for job, identity in identities.items()
            if identity is not None and job not in blocked
        }
        senders = [(identity, customer(job.signal).name) for job, identity in customers.items()]
        contacts = resolve_contacts(self.session, senders).contacts if senders else {}
        contact_of = {job: contacts[customers[job]] if job in customers else None for job in jobs}
        rows = [_event_row(job, contact_of[job], job in blocked) for job in jobs]
        event_ids = store.add_events(self.session, rows)
        opened = [
            _new_call(job.signal, event_id, contact_of[job], job in blocked, self.now)
            for job, event_id in zip(jobs, event_ids, strict=True)
        ]
        unnumbered = [call for job, call in zip(jobs, opened, strict=True) if job.rung is None]
        fresh = iter(store.reserve_ids(self.session, Call, len(unnumbered)))
        for job, call in zip(jobs, opened, strict=True):
            call.id = job.rung.call_id if job.rung is not None else next(fresh)
            self.calls[job.key] = call
            self.opened.append(call)
            if call.direction == Direction.INBOUND and call.state != CallState.BLOCKED:
                self.bumps.append(stats.offered(self._queue(call), call.started_at))
            if job.signal.phase is not CallPhase.RINGING and job.journal_id is not None:
                # Its ring never reached us (lost, or sent before we listened): the call is
                # opened where it is now, so an answered call is not later taken for missed.
                note = f"{_UNHEARD[job.signal.phase]} for an unknown call"
                log.warning("%s (%s)", note, job.signal.provider)
                self.notes[job.journal_id] = note

    def _refuses(self, signal: CallSignal, identity: IdentityKey | None) -> bool:
        """Caller-ID blocking (Zammad's): checked on the ring of an inbound call."""
        return (
            signal.phase is CallPhase.RINGING
            and signal.direction is Direction.INBOUND
            and is_blocked(
                customer(signal).raw, identity.value if identity else None, self.settings
            )
        )

    def _ring(self, jobs: list[_CallJob], named: dict[str, list[Agent]]) -> None:
        """Pop the card to the agents to ring who have not seen it yet (inbound calls only)."""
        inbound = [job for job in jobs if self.calls[job.key].direction == Direction.INBOUND]
        self._keep_rung([job for job in inbound if job.rung is not None])
        available: dict[str, list[int]] = {}  # by queue
        targets: dict[_CallJob, list[int]] = {}
        for job in inbound:
            call, signal = self.calls[job.key], job.signal
            if job.rung is not None:
                continue
            if signal.agents:
                wanted = named_ids(named, signal.agents)
            elif signal.ring_available and not call.pops:
                queue = self._queue(call)
                if queue.name not in available:
                    available[queue.name] = available_agents(self.session, queue)
                wanted = available[queue.name]
            else:
                wanted = []
            targets[job] = [agent for agent in wanted if str(agent) not in call.pops]
        contact_ids = {self.calls[j.key].contact_id for j, new in targets.items() if new}
        tickets = store.open_ticket_by_contact(self.session, {c for c in contact_ids if c})
        requests, owners = [], []
        for job, new in targets.items():
            call = self.calls[job.key]
            ticket = tickets.get(call.contact_id) if call.contact_id else None
            details = pop_call(call)
            for agent_id in new:
                requests.append(
                    PopRequest(agent_id, RING_REASON, CHANNEL, call.contact_id, ticket, details)
                )
                owners.append(job)
        self._rang(zip(owners, store_pops(self.session, requests), strict=True))

    def _keep_rung(self, jobs: list[_CallJob]) -> None:
        """Store the pops that went out before the commit, as they went out, for the agents
        the call has not rung yet."""
        kept = [
            (job, pop)
            for job in jobs
            for pop in job.rung.pops  # type: ignore[union-attr]
            if str(pop.agent_id) not in self.calls[job.key].pops
        ]
        store.add_pops(
            self.session,
            [
                {"id": pop.message["id"], "agent_id": pop.agent_id,
                 "payload": {k: v for k, v in pop.message.items() if k != "id"}}
                for _, pop in kept
            ],
        )  # fmt: skip
        self._rang(kept)

    def _rang(self, pops: Iterable[tuple[_CallJob, StoredPop]]) -> None:
        for job, pop in pops:
            call = self.calls[job.key]
            call.pops = {**call.pops, str(pop.agent_id): pop.message["id"]}
            self.outcomes[job].pops.append(pop)

    def _take_back_unstored_rings(self) -> None:
        """Pops that went out before the commit but that the call did not keep (a duplicate
        ring, a call already over) are withdrawn."""
        for job, outcome in self.outcomes.items():
            if job.rung is None:
                continue
            kept = set(self.calls[job.key].pops.values())
            outcome.withdrawn += [
                (pop.agent_id, pop.message["id"])
                for pop in job.rung.pops
                if pop.message["id"] not in kept
            ]

    def _answer(self, call: Call, signal: CallSignal, named: dict[str, list[Agent]]) -> None:
        answerer = named.get(reference(signal.answered_by or ""), [])
        agent = answerer[0] if answerer else None
        call.state = CallState.ANSWERED
        call.answered_at = signal.occurred_at
        call.answered_by_id = agent.id if agent else None
        if agent is not None:
            self.on_calls.add(agent.id)
            self.wrapping.pop(agent.id, None)
        if call.direction == Direction.INBOUND:
            self.bumps.append(stats.answered(self._queue(call), call.started_at, call.answered_at))
        self._describe(call, f"Call answered by {agent.name}" if agent else "Call answered")

    def _end(self, call: Call, signal: CallSignal) -> None:
        call.ended_at = signal.occurred_at
        call.cause = signal.cause
        call.recording_url = signal.recording_url or call.recording_url
        if call.answered_at is not None:
            call.state = CallState.COMPLETED
            call.duration_seconds = signal.duration_seconds or _seconds(
                call.answered_at, signal.occurred_at
            )
            self._describe(call, f"Call ended after {_clock(call.duration_seconds)}")
            if call.direction == Direction.INBOUND:
                self.bumps.append(
                    stats.handled(self._queue(call), call.answered_at, signal.occurred_at)
                )
            if call.answered_by_id is not None:
                wrap_up = self._queue(call).after_call_work_seconds
                self.wrapping[call.answered_by_id] = self.now + timedelta(seconds=wrap_up)
                self.on_calls.discard(call.answered_by_id)
            return
        call.state = _unanswered_state(call.direction, signal.cause)
        if call.state == CallState.MISSED:
            self._describe(call, f"Missed call ({signal.cause or 'no answer'})")
            self.bumps.append(stats.abandoned(self._queue(call), signal.occurred_at))
        else:
            self._describe(call, f"Call not answered ({signal.cause or 'no answer'})")

    def _withdraw(self, jobs: list[_CallJob]) -> None:
        """Take back the ringing pops of everyone but the agent who answered."""
        owner: dict[int, _CallJob] = {}
        for job in jobs:
            call = self.calls[job.key]
            for agent, pop_id in call.pops.items():
                if int(agent) != call.answered_by_id:
                    owner[pop_id] = job
        for pop_id, agent_id in _withdraw_pops(self.session, owner.keys(), self.now):
            self.outcomes[owner[pop_id]].withdrawn.append((agent_id, pop_id))

    def _call_back(self, jobs: list[_CallJob]) -> None:
        """One ticket per missed call to call the customer back, routed like any other;
        none for withheld numbers."""
        jobs = [job for job in jobs if self.calls[job.key].contact_id is not None]
        tickets = [self._callback_ticket(self.calls[job.key]) for job in jobs]
        store.insert_rows(self.session, Ticket, tickets)
        outcome_of: dict[int, CallOutcome] = {}
        for job, ticket in zip(jobs, tickets, strict=True):
            call = self.calls[job.key]
            call.ticket_id = ticket["id"]
            self.event_changes.setdefault(call.event_id, {})["ticket_id"] = ticket["id"]
            self.outcomes[job].callback_ticket_id = ticket["id"]
            outcome_of[ticket["id"]] = self.outcomes[job]
        requests = [RouteRequest(t["id"], CHANNEL, t["queue"], t["contact_id"]) for t in tickets]
        routed = enter_and_route(self.session, self.config, requests, self.now)
        for pop in assigned_pops(self.session, routed.assigned):
            outcome_of[pop.message["ticket"]["id"]].pops.append(pop)
        for offer in offer_messages(self.session, routed.offers):
            outcome_of[offer["ticket"]["id"]].offers.append(offer)
        for ticket in tickets:
            outcome_of[ticket["id"]].callback_queue = ticket["queue"]

    def _presence(self) -> None:
        """CTI presence: an agent on a call is busy; its hang-up starts timed after-call work
        (a timer row ends it), one statement per step for the wave."""
        busy = presence.change(self.session, sorted(self.on_calls), Presence.BUSY, self.now)
        wrapping = presence.change(
            self.session, sorted(self.wrapping), Presence.AFTER_CALL_WORK, self.now
        )
        schedule(
            self.session,
            [(TimerKind.AFTER_CALL_WORK, agent, self.wrapping[agent]) for agent in wrapping],
        )
        changed = {**dict.fromkeys(busy, Presence.BUSY),
                   **dict.fromkeys(wrapping, Presence.AFTER_CALL_WORK)}  # fmt: skip
        for job, outcome in self.outcomes.items():
            agent = self.calls[job.key].answered_by_id
            if agent in changed:
                outcome.presence[agent] = changed[agent]

    def _callback_ticket(self, call: Call) -> store.Row:
        return {
            "contact_id": call.contact_id,
            "channel": CHANNEL,
            "subject": f"Missed call from {call.from_number}",
            "queue": call.queue or DEFAULT_QUEUE,
            "created_at": self.now,
            "updated_at": self.now,
        }

    def _queue(self, call: Call) -> QueueConfig:
        return self.config.queue(call.queue or DEFAULT_QUEUE)

    def _describe(self, call: Call, text: str) -> None:
        self.event_changes.setdefault(call.event_id, {})["body"] = text

    def _write(self) -> None:
        """The wave's calls and events as they now are: a statement per kind of change."""
        connection = self.session.connection()
        store.insert_rows(
            self.session,
            Call,
            [{c: getattr(call, c) for c in _CALL_COLUMNS} for call in self.opened],
        )
        if self.touched:
            connection.execute(
                _CALL_UPDATE,
                [
                    {"call": call.id, **{f"new_{c}": getattr(call, c) for c in _CALL_CHANGES}}
                    for call in self.touched
                ],
            )
        by_columns: dict[tuple[str, ...], list[store.Row]] = defaultdict(list)
        for event_id, values in self.event_changes.items():
            by_columns[tuple(sorted(values))].append(
                {"event": event_id, **{f"new_{c}": v for c, v in values.items()}}
            )
        for columns, rows in by_columns.items():
            connection.execute(_event_update(columns), rows)


# What a wave may change on a stored call; `_write` sets them all in one statement.
_CALL_CHANGES = (
    "state",
    "queue",
    "pops",
    "ticket_id",
    "answered_by_id",
    "answered_at",
    "ended_at",
    "duration_seconds",
    "cause",
    "recording_url",
    "updated_at",
)
_CALLS = cast(Table, Call.__table__)
_CALL_COLUMNS = tuple(column.name for column in _CALLS.columns)


class _CallRecord:
    """A call as a wave works on it: its `calls` row's columns as plain attributes, None where
    not given (as on a new ORM instance). Making and reading an instrumented `Call` cost some
    70 us, twice per call (its ring and its hang-up), in the writer's GIL time that the event
    loop waits for; this costs a tenth of it."""

    __slots__ = _CALL_COLUMNS

    def __init__(self, columns: dict[str, Any]) -> None:
        for name in _CALL_COLUMNS:
            setattr(self, name, None)
        for name, value in columns.items():
            setattr(self, name, value)  # AttributeError for anything but a column


def _call_record(**columns: Any) -> Call:
    """A call the session knows nothing of (`_Wave._write` stores what changed), typed as
    the `Call` whose columns it has."""
    return cast(Call, _CallRecord(columns))


# Built once: compiling a statement costs more than running it on a handful of rows.
_CALLS_OF_PROVIDER = (
    select(_CALLS)
    .where(_CALLS.c.provider == bindparam("provider"))
    .where(_CALLS.c.call_id.in_(bindparam("call_ids", expanding=True)))
    .with_for_update()
)
_CALL_UPDATE = (
    update(_CALLS)
    .where(_CALLS.c.id == bindparam("call"))
    .values({name: bindparam(f"new_{name}") for name in _CALL_CHANGES})
)
_POPS = cast(Table, ScreenPop.__table__)
_WITHDRAW = (
    update(_POPS)
    .where(_POPS.c.id.in_(bindparam("pop_ids", expanding=True)), _POPS.c.withdrawn_at.is_(None))
    .values(withdrawn_at=bindparam("now"))
    .returning(_POPS.c.id, _POPS.c.agent_id)
)


def _calls_by_key(session: Session, keys: Collection[CallKey]) -> dict[CallKey, Call]:
    """The calls named `(provider, call_id)`, rows locked until the transaction ends, as
    records the session does not track (`_Wave._write` stores what changed)."""
    by_provider: dict[str, list[str]] = defaultdict(list)
    for provider, call_id in keys:
        by_provider[provider].append(call_id)
    connection = session.connection()
    calls: dict[CallKey, Call] = {}
    for provider, call_ids in by_provider.items():
        for row in connection.execute(
            _CALLS_OF_PROVIDER, {"provider": provider, "call_ids": call_ids}
        ).mappings():
            calls[(provider, row["call_id"])] = _call_record(**row)
    return calls


def _withdraw_pops(
    session: Session, pop_ids: Collection[int], now: datetime
) -> list[tuple[int, int]]:
    """Mark the standing pops among `pop_ids` withdrawn: `(pop id, agent id)` of each, in
    id order."""
    if not pop_ids:
        return []
    withdrawn = session.connection().execute(_WITHDRAW, {"pop_ids": list(pop_ids), "now": now})
    return sorted((pop_id, agent_id) for pop_id, agent_id in withdrawn)


@functools.cache
def _event_update(columns: tuple[str, ...]) -> Update:
    events = cast(Table, TimelineEvent.__table__)
    return (
        update(events)
        .where(events.c.id == bindparam("event"))
        .values({name: bindparam(f"new_{name}") for name in columns})
    )


def _references(jobs: Sequence[_CallJob]) -> set[str]:
    """Every agent the batch's signals name, to ring (unless rung already) or as the one who
    answered."""
    ringing = [job for job in jobs if job.rung is None]
    references = {reference(name) for job in ringing for name in job.signal.agents}
    references.update(reference(j.signal.answered_by) for j in jobs if j.signal.answered_by)
    return references


def _event_row(job: _CallJob, contact_id: int | None, blocked: bool) -> store.Row:
    signal = job.signal
    inbound = signal.direction is Direction.INBOUND
    reserved = {"id": job.rung.event_id} if job.rung else {}
    return {
        **reserved,
        "channel": CHANNEL,
        "external_id": f"{signal.provider}:{signal.call_id}",
        "kind": EventKind.CALL,
        "direction": signal.direction,
        "contact_id": contact_id,
        "ticket_id": None,
        "sender": signal.caller.raw,
        "recipient": signal.callee,
        "body": "Blocked call" if blocked else ("Incoming call" if inbound else "Outgoing call"),
        "occurred_at": signal.occurred_at,
        "journal_id": job.journal_id,
    }


def _new_call(
    signal: CallSignal, event_id: int, contact_id: int | None, blocked: bool, now: datetime
) -> Call:
    return _call_record(
        provider=signal.provider,
        call_id=signal.call_id,
        event_id=event_id,
        direction=signal.direction,
        state=CallState.BLOCKED if blocked else CallState.RINGING,
        from_number=signal.caller.raw,
        to_number=signal.callee,
        contact_id=contact_id,
        queue=signal.queue,
        pops={},
        started_at=signal.occurred_at,
        updated_at=now,
    )


def link_call_to_ticket(session: Session, call_id: int, ticket_id: int) -> None:
    """A call placed from a ticket belongs on that ticket's timeline."""
    call = session.get(Call, call_id)
    if call is None or session.get(Ticket, ticket_id) is None:
        raise ValueError("no such call or ticket")
    call.ticket_id = ticket_id
    event = session.get(TimelineEvent, call.event_id)
    assert event is not None
    event.ticket_id = ticket_id


def _unanswered_state(direction: str, cause: HangupCause | None) -> CallState:
    if direction != Direction.INBOUND:
        return CallState.UNANSWERED
    if cause in MISSED_CAUSES:
        return CallState.MISSED
    if cause is HangupCause.FORWARDED:
        return CallState.COMPLETED
    return CallState.FAILED


def _seconds(start: datetime, end: datetime) -> int:
    return max(0, round((end - start).total_seconds()))


def _clock(seconds: int | None) -> str:
    minutes, rest = divmod(seconds or 0, 60)
    return f"{minutes}:{rest:02d}"


def signal_json(signal: CallSignal) -> bytes:
    """A signal as JSON, for the journal where a channel has no raw payload of its own."""
    fields = asdict(signal)
    fields["occurred_at"] = signal.occurred_at.isoformat()
    return json.dumps(fields).encode()


def call_json(call: Call) -> dict[str, Any]:
    return {
        "id": call.id,
        "call_id": call.call_id,
        "provider": call.provider,
        "direction": call.direction,
        "state": call.state,
        "from": call.from_number,
        "to": call.to_number,
        "contact_id": call.contact_id,
        "ticket_id": call.ticket_id,
        "event_id": call.event_id,
        "queue": call.queue,
        "answered_by_id": call.answered_by_id,
        "rung_agent_ids": sorted(int(agent) for agent in call.pops),
        "started_at": call.started_at.isoformat(),
        "answered_at": call.answered_at.isoformat() if call.answered_at else None,
        "ended_at": call.ended_at.isoformat() if call.ended_at else None,
        "duration_seconds": call.duration_seconds,
        "cause": call.cause,
        "recording_url": call.recording_url,
    }
