"""Routing outside the ingest path: offers accepted and rejected, presence, tickets moved,
and the timers (offer expiry, after-call work, overflow, a queue's opening, a closed queue's
automatic reply) that a sweeper fires exactly once.

Every routing step runs as one unit of work (`routing.assignment`); what it decided — pops of
direct assignments, offers, queues whose figures changed — is stored or built inside that
transaction and published after its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.bus import SUPERVISORS_TOPIC, Bus, agent_topic
from gateway.pops import PopRequest, StoredPop, contact_cards, publish_pops, store_pops
from gateway.serialize import JSON, iso, ticket_summary
from routing import assignment
from routing.assignment import OfferMade, Routed
from routing.config import RoutingConfig, apply_file, load_config
from timeline.db import Database
from timeline.models import Presence, RoutingTimer, Ticket, TimerKind, utcnow

log = logging.getLogger(__name__)
P = ParamSpec("P")

# How long a process trusts its copy of the queues and rules; this process's own changes
# apply at once, another process's within this time.
CONFIG_TTL_SECONDS = 1.0
SWEEP_SECONDS = 0.25
# Every so often the tickets waiting longest are placed again (`assignment.stragglers`).
STRAGGLERS_SECONDS = 2.0
STRAGGLERS_AGE = timedelta(seconds=2)
STRAGGLERS_BATCH = 20
# An offer still open this long after it was made is published once more by every process:
# the one that made it may have died between its commit and its publish. A console's socket
# drops the repeats, so the agent sees each offer once.
REANNOUNCE_AFTER = timedelta(seconds=1)


class AutoReplies(Protocol):
    """The reply service (gateway/replies.py), as far as closed queues need it."""

    def enqueue_after_hours(self, session: Session, ticket_id: int, text: str) -> bool: ...

    def wake(self) -> None: ...


class ConfigCache:
    """The routing configuration as last read, read again once `CONFIG_TTL_SECONDS` old.

    However many ask while it is being read, it is read once (at 200 calls a second every
    expiry had started a read per caller). And a read begun before an `invalidate` is never
    kept after it: it may predate the change the invalidation announces, so whoever asks
    afterwards waits for a read of its own."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._config: RoutingConfig | None = None
        self._read_at = 0.0
        self._reading: asyncio.Future[RoutingConfig] | None = None
        self._generation = 0  # one more at each invalidate

    async def get(self) -> RoutingConfig:
        if self._config is not None and time.monotonic() - self._read_at <= CONFIG_TTL_SECONDS:
            return self._config
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read(self._generation))
        # Shielded: a caller that gives up does not cancel the read the others wait for.
        return await asyncio.shield(self._reading)

    async def _read(self, generation: int) -> RoutingConfig:
        started = time.monotonic()
        try:
            config = await self._db.read(load_config)
        finally:
            if generation == self._generation:
                self._reading = None
        if generation == self._generation:
            self._config, self._read_at = config, started
        return config

    def invalidate(self) -> None:
        self._config = None
        self._reading = None
        self._generation += 1


@dataclass(slots=True)
class Announcement:
    """What to publish after a commit."""

    pops: list[StoredPop] = field(default_factory=list)
    offers: list[JSON] = field(default_factory=list)  # each with its "agent_id"
    queues: set[str] = field(default_factory=set)
    presence: dict[int, str] = field(default_factory=dict)


def announcement(session: Session, routed: Routed) -> Announcement:
    """Inside the routing transaction: store the pops of direct assignments, build the offers."""
    return Announcement(
        assigned_pops(session, routed.assigned), offer_messages(session, routed.offers),
        set(routed.queues), dict(routed.presence),
    )  # fmt: skip


def offer_messages(session: Session, offers: list[OfferMade]) -> list[JSON]:
    """`{"type": "offer", "id", "ticket", "contact", "queue", "channel", "expires_at"}`."""
    if not offers:
        return []
    tickets = {
        t.id: t
        for t in session.execute(
            select(Ticket).where(Ticket.id.in_({o.ticket_id for o in offers}))
        ).scalars()
    }
    cards = contact_cards(session, {c for t in tickets.values() if (c := t.contact_id)})
    return [
        {
            "type": "offer",
            "id": o.id,
            "agent_id": o.agent_id,
            "ticket": ticket_summary(tickets[o.ticket_id]),
            "contact": cards.get(tickets[o.ticket_id].contact_id or 0),
            "queue": o.queue,
            "channel": o.channel,
            "expires_at": iso(o.expires_at),
        }
        for o in offers
    ]


def assigned_pops(session: Session, assignments: Mapping[int, int]) -> list[StoredPop]:
    """Store the pops telling agents they now hold tickets (`{ticket id: agent id}`)."""
    if not assignments:
        return []
    query = select(Ticket).where(Ticket.id.in_(assignments)).order_by(Ticket.id)
    tickets = list(session.execute(query).scalars())
    return store_pops(
        session,
        [PopRequest(assignments[t.id], "assigned", t.channel, t.contact_id, t) for t in tickets],
    )


async def publish(bus: Bus, news: Announcement) -> None:
    """Presence first: a console learns it is available before the offers that follow."""
    for agent_id, state in sorted(news.presence.items()):
        await bus.publish(agent_topic(agent_id), {"type": "presence", "state": state})
    await publish_pops(bus, news.pops)
    for offer in news.offers:
        message = {k: v for k, v in offer.items() if k != "agent_id"}
        await bus.publish(agent_topic(offer["agent_id"]), message)
    for queue in sorted(news.queues):
        await bus.publish(SUPERVISORS_TOPIC, {"type": "queue_update", "queue": queue})


class Dispatcher:
    def __init__(self, db: Database, bus: Bus, routing_file: Path | None = None) -> None:
        self._db = db
        self._bus = bus
        self._routing_file = routing_file
        self.config = ConfigCache(db)
        self._timers: list[asyncio.Task[None]] = []
        self._reannounced: set[int] = set()
        # Where the last sweep for stragglers ended; None: the next begins with the oldest.
        self._swept_to: assignment.SweepPlace | None = None
        # Set once the outbox runs (gateway/app.py); until then after-hours replies wait.
        self.replies: AutoReplies | None = None

    async def start(self) -> None:
        if self._routing_file is not None:
            await self._db.run(apply_file, self._routing_file, utcnow())
        self._timers = [
            asyncio.create_task(self._sweep_forever(), name="routing-timers"),
            asyncio.create_task(self._reannounce_forever(), name="routing-reannounce"),
        ]

    async def stop(self) -> None:
        for task in self._timers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def step(
        self,
        work: Callable[Concatenate[Session, RoutingConfig, P], Routed],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Routed:
        """One routing step in one transaction, announced after its commit."""

        def bound(session: Session, config: RoutingConfig) -> Routed:
            return work(session, config, *args, **kwargs)

        return await self._step(bound)

    async def _step(
        self,
        work: Callable[[Session, RoutingConfig], Routed],
        committed: Callable[[], Awaitable[None]] | None = None,
    ) -> Routed:
        config = await self.config.get()

        def unit(session: Session) -> tuple[Routed, Announcement]:
            assignment.exclusive(session)
            routed = work(session, config)
            return routed, announcement(session, routed)

        routed, news = await self._db.run(unit)
        if committed is not None:
            await committed()
        await self.publish(news)
        return routed

    async def publish(self, news: Announcement) -> None:
        try:
            await publish(self._bus, news)
        except Exception:  # committed all the same: pops are replayed, offers re-sent
            log.exception("publishing routing news failed")

    async def set_presence(
        self,
        agent_id: int,
        state: Presence,
        until: datetime | None = None,
        committed: Callable[[], Awaitable[None]] | None = None,
    ) -> Routed:
        """`committed` runs between the commit and the news (a console confirms its state
        before the offers that follow from it)."""

        def work(session: Session, config: RoutingConfig) -> Routed:
            return assignment.set_presence(session, config, agent_id, state, utcnow(), until)

        return await self._step(work, committed)

    async def accept(self, offer_id: int, agent_id: int) -> int:
        """The agent takes the offer; the ticket's id (`OfferGone` if it cannot)."""
        config = await self.config.get()

        def unit(session: Session) -> tuple[int, Announcement]:
            assignment.exclusive(session)
            ticket_id = assignment.accept(session, config, offer_id, agent_id, utcnow())
            (ticket,) = session.execute(select(Ticket.queue).where(Ticket.id == ticket_id))
            news = announcement(session, Routed({ticket_id: agent_id}, queues={ticket[0]}))
            return ticket_id, news

        ticket_id, news = await self._db.run(unit)
        await self.publish(news)
        return ticket_id

    async def reject(self, offer_id: int, agent_id: int) -> Routed:
        return await self.step(assignment.reject, offer_id, agent_id, utcnow())

    async def _sweep_forever(self) -> None:
        looked = time.monotonic()
        while True:
            try:
                fired = await self.sweep()
                if time.monotonic() - looked >= STRAGGLERS_SECONDS:
                    looked = time.monotonic()
                    await self.place_stragglers()
            except Exception:
                log.exception("routing timers could not be swept")
                fired = 0
            if not fired:
                await asyncio.sleep(SWEEP_SECONDS)

    async def place_stragglers(self) -> int:
        """Place again the next tickets of those waiting long (`assignment.stragglers`),
        going round them all, a batch a time; how many were looked at."""
        now = utcnow()
        since, after = now - STRAGGLERS_AGE, self._swept_to
        config = await self.config.get()
        # Read first: on most sweeps there are none, and a write transaction would hold
        # SQLite's one writer for nothing.
        if not await self._db.read(
            assignment.stragglers, config, since, STRAGGLERS_BATCH, now, after
        ):
            self._swept_to = None  # round again from the oldest
            return 0

        def unit(session: Session) -> tuple[list[assignment.SweepPlace], Announcement]:
            places = assignment.stragglers(session, config, since, STRAGGLERS_BATCH, now, after)
            assignment.exclusive(session)
            routed = assignment.reroute(session, config, [i for _, i in places], utcnow())
            return places, announcement(session, routed)

        places, news = await self._db.run(unit)
        self._swept_to = places[-1] if len(places) == STRAGGLERS_BATCH else None
        await self.publish(news)
        return len(places)

    async def _reannounce_forever(self) -> None:
        while True:
            await asyncio.sleep(REANNOUNCE_AFTER.total_seconds() / 2)
            try:
                await self.reannounce()
            except Exception:
                log.exception("open offers could not be published again")

    async def reannounce(self) -> int:
        """Publish the offers open for a while that this process has not published again
        yet; how many."""

        def unit(session: Session) -> list[JSON]:
            offers = assignment.offers_pending_since(session, utcnow() - REANNOUNCE_AFTER)
            fresh = [o for o in offers if o.id not in self._reannounced]
            self._reannounced = {o.id for o in offers}
            return offer_messages(session, fresh)

        messages = await self._db.read(unit)
        await self.publish(Announcement(offers=messages))
        return len(messages)

    async def sweep(self) -> int:
        """Fire the timers that are due, in one transaction; how many fired."""
        config = await self.config.get()

        def unit(session: Session) -> tuple[int, Announcement, bool]:
            now = utcnow()
            if not assignment.any_due(session, now):
                return 0, Announcement(), False
            assignment.exclusive(session)
            timers = assignment.claim_due(session, now)
            replies = [t for t in timers if t.kind == TimerKind.AFTER_HOURS_REPLY]
            routed = Routed()
            for timer in timers:
                if timer not in replies:
                    routed.merge(assignment.fire(session, config, timer, now))
            replied = self._reply_after_hours(session, config, replies, now)
            return len(timers), announcement(session, routed), replied

        fired, news, replied = await self._db.run(unit)
        if replied and self.replies is not None:
            self.replies.wake()
        await self.publish(news)
        return fired

    def _reply_after_hours(
        self, session: Session, config: RoutingConfig, timers: list[RoutingTimer], now: datetime
    ) -> bool:
        """Queue each ticket's after-hours reply, in the sweep's transaction: the claimed timer
        and the outbox row commit together. Before the outbox runs, the timers are set again."""
        if self.replies is None:
            later = now + timedelta(seconds=1)
            kind = TimerKind.AFTER_HOURS_REPLY
            assignment.schedule(session, [(kind, t.subject_id, later) for t in timers])
            return False
        replied = False
        for timer in timers:
            query = select(Ticket.queue).where(Ticket.id == timer.subject_id)
            queue = session.execute(query).scalar_one_or_none()
            if queue is not None:
                text = config.queue(queue).auto_reply_text
                replied |= self.replies.enqueue_after_hours(session, timer.subject_id, text)
        return replied
