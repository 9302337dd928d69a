"""Calls: every telephony channel's signals applied to one call and its one timeline event.

A ringing call pops the caller's card to the agents the PBX names, else to every available
agent; an answer withdraws the other agents' pops; a hang-up closes the call, and an
unanswered inbound call becomes a missed call with exactly one callback ticket. The call is
one timeline event, updated through its life, never one event per signal. Signals may arrive
twice, late or out of order (a hang-up before the ring): each is applied at most once, and
nothing a call has already passed is undone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.bus import SUPERVISORS_TOPIC, Bus, agent_topic
from gateway.dispatch import assigned_pops
from gateway.ingest import IngestError
from gateway.pops import PopRequest, StoredPop, publish_pops, store_pops
from gateway.serialize import JSON
from gateway.settings import Settings
from routing.assignment import AssignmentRequest, agents_named, assign_tickets, available_agents
from routing.contacts import identity_of, resolve_contacts
from routing.identity import normalise_phone
from timeline import store
from timeline.db import Database
from timeline.events import Address, CallPhase, CallSignal, Direction, EventKind, HangupCause
from timeline.models import (
    FINAL_CALL_STATES,
    Agent,
    Call,
    CallState,
    JournalStatus,
    Ticket,
    TimelineEvent,
    utcnow,
)

log = logging.getLogger(__name__)

CHANNEL = "voice"
# An inbound call that ends unanswered for these reasons is a missed call (Zammad's rule).
MISSED_CAUSES = (
    HangupCause.CANCEL,
    HangupCause.NO_ANSWER,
    HangupCause.BUSY,
    HangupCause.NORMAL_CLEARING,
    None,
)


_UNHEARD = {CallPhase.ANSWERED: "answer", CallPhase.ENDED: "hangup"}


@dataclass
class CallOutcome:
    call: JSON | None
    blocked: bool = False
    pops: list[StoredPop] = field(default_factory=list)
    withdrawn: list[tuple[int, int]] = field(default_factory=list)  # (agent id, pop id)
    callback_ticket_id: int | None = None


class CallDesk:
    def __init__(self, db: Database, bus: Bus, settings: Settings) -> None:
        self._db = db
        self._bus = bus
        self._settings = settings

    async def receive(
        self, signal: CallSignal, *, payload: bytes, content_type: str | None
    ) -> CallOutcome:
        """Journal the raw payload first, then apply the signal in one transaction."""
        (journal_id,) = await self._db.run(store.journal, [(CHANNEL, payload, content_type)])
        try:
            outcome = await self._apply(signal, journal_id)
        except Exception as error:
            log.exception("call signal of journal entry %s failed", journal_id)
            await self._db.run(
                store.mark_journal,
                journal_id,
                JournalStatus.FAILED,
                reason=f"{type(error).__name__}: {error}",
            )
            raise IngestError(journal_id) from error
        try:
            await self._publish(outcome)
        except Exception:  # committed all the same: the pops are stored and replayed
            log.exception("publishing the pops of a call failed")
        return outcome

    async def _apply(self, signal: CallSignal, journal_id: int) -> CallOutcome:
        try:
            return await self._db.run(_apply, signal, self._settings, journal_id)
        except IntegrityError:
            # Two processes opened the same new call at once; the second finds the first's.
            return await self._db.run(_apply, signal, self._settings, journal_id)

    async def _publish(self, outcome: CallOutcome) -> None:
        await publish_pops(self._bus, outcome.pops)
        for agent_id, pop_id in outcome.withdrawn:
            await self._bus.publish(agent_topic(agent_id), {"type": "pop_withdrawn", "id": pop_id})
        if outcome.callback_ticket_id is not None:
            await self._bus.publish(
                SUPERVISORS_TOPIC,
                {
                    "type": "queue_update",
                    "queue": "default",
                    "ticket_id": outcome.callback_ticket_id,
                },
            )


def _apply(
    session: Session, signal: CallSignal, settings: Settings, journal_id: int
) -> CallOutcome:
    call = session.execute(
        select(Call)
        .where(Call.provider == signal.provider, Call.call_id == signal.call_id)
        .with_for_update()
    ).scalar_one_or_none()
    note = None
    if call is None and signal.phase is not CallPhase.RINGING:
        # Its ring never reached us (lost, or sent before we listened): the call is opened
        # where it is now, so an answered call is not later taken for a missed one.
        note = f"{_UNHEARD[signal.phase]} for an unknown call"
        log.warning("%s (%s)", note, signal.provider)
    desk = _CallWork(session, settings, signal)
    outcome = desk.open(journal_id) if call is None else desk.update(call)
    store.mark_journal(
        session, journal_id, JournalStatus.ACCEPTED, reason=note, event_id=desk.call.event_id
    )
    outcome.call = call_json(desk.call)
    return outcome


class _CallWork:
    """One signal applied to one call, inside the caller's transaction."""

    def __init__(self, session: Session, settings: Settings, signal: CallSignal) -> None:
        self.session = session
        self.settings = settings
        self.signal = signal
        self.now = utcnow()
        self.call: Call

    def open(self, journal_id: int) -> CallOutcome:
        """The first signal of a call: its record and its timeline event."""
        signal = self.signal
        customer = _customer(signal)
        identity = identity_of(customer, self.settings.default_region)
        blocked = (
            signal.phase is CallPhase.RINGING
            and signal.direction is Direction.INBOUND
            and _is_blocked(customer.raw, identity.value if identity else None, self.settings)
        )
        contact_id = None
        if identity is not None and not blocked:
            resolved = resolve_contacts(self.session, [(identity, customer.name)])
            contact_id = resolved.contacts[identity]
        (event_id,) = store.add_events(self.session, [self._event_row(contact_id, journal_id)])
        self.call = Call(
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
            updated_at=self.now,
        )
        store.insert(self.session, [self.call])
        if blocked:
            self._describe("Blocked call")
            return CallOutcome(None, blocked=True)
        return self.update(self.call)

    def update(self, call: Call) -> CallOutcome:
        self.call = call
        if call.state in FINAL_CALL_STATES:
            return CallOutcome(None, blocked=call.state == CallState.BLOCKED)
        call.updated_at = self.now
        call.queue = call.queue or self.signal.queue
        if self.signal.phase is CallPhase.RINGING:
            # A ring that comes late, after the answer, rings nobody.
            ringing = call.state == CallState.RINGING
            return CallOutcome(None, pops=self._ring() if ringing else [])
        if self.signal.phase is CallPhase.ANSWERED:
            return self._answer() if call.state == CallState.RINGING else CallOutcome(None)
        return self._end()

    def _event_row(self, contact_id: int | None, journal_id: int) -> store.Row:
        signal = self.signal
        return {
            "channel": CHANNEL,
            "external_id": f"{signal.provider}:{signal.call_id}",
            "kind": EventKind.CALL,
            "direction": signal.direction,
            "contact_id": contact_id,
            "ticket_id": None,
            "sender": signal.caller.raw,
            "recipient": signal.callee,
            "body": "Incoming call" if signal.direction is Direction.INBOUND else "Outgoing call",
            "occurred_at": signal.occurred_at,
            "journal_id": journal_id,
        }

    def _ring(self) -> list[StoredPop]:
        """Pop the card to the agents to ring who have not seen it yet (inbound calls only)."""
        call, signal = self.call, self.signal
        if call.direction != Direction.INBOUND:
            return []
        if signal.agents:
            targets = agents_named(self.session, signal.agents)
        elif signal.ring_available and not call.pops:
            targets = available_agents(self.session)
        else:
            targets = []
        new = [agent_id for agent_id in targets if str(agent_id) not in call.pops]
        if not new:
            return []
        ticket = None
        if call.contact_id is not None:
            ticket = store.open_ticket_by_contact(self.session, [call.contact_id]).get(
                call.contact_id
            )
        details = pop_call(call)
        pops = store_pops(
            self.session,
            [
                PopRequest(agent_id, "incoming_call", CHANNEL, call.contact_id, ticket, details)
                for agent_id in new
            ],
        )
        call.pops = {**call.pops, **{str(p.agent_id): p.message["id"] for p in pops}}
        return pops

    def _answer(self) -> CallOutcome:
        call, signal = self.call, self.signal
        answerer = agents_named(self.session, [signal.answered_by]) if signal.answered_by else []
        agent = self.session.get(Agent, answerer[0]) if answerer else None
        call.state = CallState.ANSWERED
        call.answered_at = signal.occurred_at
        call.answered_by_id = agent.id if agent else None
        self._describe(f"Call answered by {agent.name}" if agent else "Call answered")
        return CallOutcome(None, withdrawn=self._withdraw(keep=call.answered_by_id))

    def _end(self) -> CallOutcome:
        call, signal = self.call, self.signal
        call.ended_at = signal.occurred_at
        call.cause = signal.cause
        call.recording_url = signal.recording_url or call.recording_url
        outcome = CallOutcome(None, withdrawn=self._withdraw(keep=call.answered_by_id))
        if call.answered_at is not None:
            call.state = CallState.COMPLETED
            call.duration_seconds = signal.duration_seconds or _seconds(
                call.answered_at, signal.occurred_at
            )
            self._describe(f"Call ended after {_clock(call.duration_seconds)}")
            return outcome
        call.state = _unanswered_state(call.direction, signal.cause)
        if call.state == CallState.MISSED:
            self._describe(f"Missed call ({signal.cause or 'no answer'})")
            outcome.pops, outcome.callback_ticket_id = self._callback_ticket()
        else:
            self._describe(f"Call not answered ({signal.cause or 'no answer'})")
        return outcome

    def _callback_ticket(self) -> tuple[list[StoredPop], int | None]:
        """One ticket to call the customer back, routed like any other; none for withheld ids."""
        call = self.call
        if call.contact_id is None:
            return [], None
        ticket = Ticket(
            contact_id=call.contact_id,
            channel=CHANNEL,
            subject=f"Missed call from {call.from_number}",
            queue=call.queue or "default",
            created_at=self.now,
            updated_at=self.now,
        )
        store.insert(self.session, [ticket])
        call.ticket_id = ticket.id
        event = self.session.get(TimelineEvent, call.event_id)
        assert event is not None
        event.ticket_id = ticket.id
        assigned = assign_tickets(self.session, [AssignmentRequest(ticket.id, CHANNEL)], self.now)
        pops = [p for a in assigned.values() for p in assigned_pops(self.session, a, [ticket.id])]
        return pops, ticket.id

    def _withdraw(self, keep: int | None) -> list[tuple[int, int]]:
        """Take back the ringing pops of everyone but `keep`."""
        call = self.call
        pop_ids = [pop for agent, pop in call.pops.items() if int(agent) != keep]
        withdrawn = store.withdraw_pops(self.session, pop_ids, self.now)
        return [(pop.agent_id, pop.id) for pop in withdrawn]

    def _describe(self, text: str) -> None:
        event = self.session.get(TimelineEvent, self.call.event_id)
        assert event is not None
        event.body = text


def link_call_to_ticket(session: Session, call_id: int, ticket_id: int) -> None:
    """A call placed from a ticket belongs on that ticket's timeline."""
    call = session.get(Call, call_id)
    if call is None or session.get(Ticket, ticket_id) is None:
        raise ValueError("no such call or ticket")
    call.ticket_id = ticket_id
    event = session.get(TimelineEvent, call.event_id)
    assert event is not None
    event.ticket_id = ticket_id


def _customer(signal: CallSignal) -> Address:
    """The customer's side of the call: the caller inbound, the callee outbound."""
    if signal.direction is Direction.INBOUND:
        return signal.caller
    return Address("phone", signal.callee)


def _is_blocked(raw: str, e164: str | None, settings: Settings) -> bool:
    for entry in settings.cti_blocked:
        prefix = normalise_phone(entry, settings.default_region) or entry.replace(" ", "")
        if (e164 and e164.startswith(prefix)) or raw.replace(" ", "").startswith(prefix):
            return True
    return False


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


def pop_call(call: Call) -> JSON:
    """The `call` part of a screen-pop (DESIGN.md contract)."""
    return {
        "id": call.call_id,
        "record_id": call.id,
        "from": call.from_number,
        "to": call.to_number,
        "state": call.state,
    }


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
