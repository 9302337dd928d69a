"""The outbox sender: claims due messages and hands them to their channel's sender.

One worker per gateway process (a `cleanup_ctx` of the app). It sleeps until something is
enqueued in this process (`wake`), a retry falls due, or the poll interval passes (the only way
to hear of rows other processes queued). Up to `concurrency` messages are in flight at once,
and up to three times as many more claimed and waiting for a free slot (a claim may wait
behind other writes: a campaign's batch), each channel within its own rate limit.
Results are written by group commit, one transaction for all that finished within
`RESULTS_LINGER_SECONDS` of each other. What a crash leaves half-sent (or claimed and waiting)
is decided by `timeline.outbox` (crash recovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial

from sqlalchemy.orm import Session

from channels.sending import PermanentSendError, Sender, SendError, TransientSendError
from gateway.group_commit import GroupCommit
from timeline import outbox
from timeline.db import Database
from timeline.models import utcnow
from timeline.outbox import OutboxItem

log = logging.getLogger(__name__)

# A send's slot is free as soon as the provider answers; its result can wait this long to be
# written with the others that finished meanwhile (a few transactions per second, not hundreds).
RESULTS_LINGER_SECONDS = 0.02
# Sends in flight and claimed ahead, together, at most this many times the concurrency: what
# a crash can leave claimed but unsent (for SMS and chat: marked interrupted, module doc).
CLAIM_WINDOW = 4


@dataclass(frozen=True, slots=True)
class OutboxPolicy:
    """How hard the outbox tries (SWITCHBOARD_OUTBOX_*)."""

    max_attempts: int = 8
    backoff_base: float = 30.0  # seconds before the first retry; doubled for each next one
    backoff_max: float = 3600.0
    poll_interval: float = 5.0
    # Longer than any one send can take: a `sending` row older than this was left by a crash.
    lease: float = 300.0
    concurrency: int = 8
    # Messages per second per channel in this process; a channel not named is not limited.
    rate_limits: Mapping[str, float] = field(default_factory=dict)


def backoff(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed attempt `attempt` (1, 2, …): exponential, "equal jitter".

    Half the exponential delay is kept, the other half is random, so retries of many messages
    that failed together (a provider outage) spread out instead of returning as one wave.
    """
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay / 2 + rand() * delay / 2


class RateLimit:
    """A token bucket: `rate` messages per second on average, bursts of up to `burst`."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    def available(self) -> int:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return int(self._tokens)

    def take(self, n: int) -> None:
        self._tokens -= n

    def wait(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1 - self._tokens) / self.rate)


# Told the timeline events of messages whose delivery status changed (sent, failed, …).
StatusListener = Callable[[list[int]], Awaitable[None]]


@dataclass(eq=False)
class _Outcome:
    """One send's result, waiting to be recorded with the others that finished meanwhile."""

    item: OutboxItem
    # The `timeline.outbox` call that records a failure; None for a send the provider took
    # (`provider_id`), which are recorded together.
    record: Callable[[Session], bool] | None
    done: asyncio.Future[bool]
    provider_id: str | None = None
    journal_id: int | None = None  # what `GroupCommit` names in its errors; none here

    def fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


class OutboxWorker:
    """Sends what is due, for the channels it has senders for."""

    def __init__(
        self,
        db: Database,
        senders: Mapping[str, Sender],
        policy: OutboxPolicy | None = None,
        on_status: StatusListener | None = None,
    ) -> None:
        self.db = db
        self.senders = dict(senders)
        self.policy = policy or OutboxPolicy()
        self._on_status = on_status
        # Results are written by group commit: under load, one transaction for many sends.
        self._results: GroupCommit[_Outcome] = GroupCommit(
            "outbox-results", self._record, linger=RESULTS_LINGER_SECONDS
        )
        # With sends in flight, claim in batches rather than one row per finished send, and
        # ahead (`_ready`), so a finished send is followed at once, not after a claim. What a
        # crash leaves claimed but unsent counts as interrupted (module doc): hence not more.
        self._min_claim = max(1, self.policy.concurrency)
        self._window = CLAIM_WINDOW * self.policy.concurrency
        self._ready: deque[tuple[Sender, OutboxItem]] = deque()
        self._limits = {c: RateLimit(r) for c, r in self.policy.rate_limits.items() if r > 0}
        # Rows a crashed process left `sending` are looked for once per poll interval, not on
        # every claim: they only appear when a lease runs out, which takes minutes.
        self._recovered_at = -float("inf")
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        """Something was enqueued (or requeued): look now instead of at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        if self.senders:
            await self._results.start()
            self._runner = asyncio.create_task(self._run(), name="outbox")

    async def stop(self, grace: float = 30.0) -> None:
        """Claim nothing more; send what was claimed and let sends in flight finish, so none
        is cut off mid-way. What `grace` does not allow is left to the crash rule."""
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            await self._runner
        deadline = asyncio.get_running_loop().time() + grace
        while self._in_flight:  # finishing sends start the claimed ones still waiting
            left = deadline - asyncio.get_running_loop().time()
            _done, pending = await asyncio.wait(set(self._in_flight), timeout=max(0.0, left))
            if pending and left <= 0:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                break
        await self._results.stop()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                pause = await self._dispatch_due()
            except Exception:
                log.exception("outbox: claiming failed; trying again after the poll interval")
                pause = self.policy.poll_interval
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)

    async def _dispatch_due(self) -> float:
        """Start sends for what is due; return how long to sleep before looking again."""
        pause = self.policy.poll_interval
        now = time.monotonic()
        recover = now - self._recovered_at >= self.policy.poll_interval
        if recover:
            self._recovered_at = now
        for channel, sender in self.senders.items():
            room = self._room()
            if room <= 0 or (self._in_flight and room < self._min_claim):
                return pause  # a finishing send wakes the loop
            limit = self._limits.get(channel)
            allowed = min(room, limit.available()) if limit else room
            if allowed <= 0:
                assert limit is not None
                pause = min(pause, limit.wait())
                continue
            items = await self.db.run(
                outbox.claim,
                channel,
                limit=allowed,
                lease=timedelta(seconds=self.policy.lease),
                resendable=sender.resendable,
                recover=recover,
            )
            if limit:
                limit.take(len(items))
            self._ready.extend((sender, item) for item in items)
            self._start_ready()
            if len(items) == allowed:
                pause = 0.0  # there may be more
        if pause > 0:
            pause = min(pause, await self._until_next_retry())
        return pause

    def _room(self) -> int:
        """How many more rows may be claimed: the window less what is in flight or waiting."""
        return self._window - len(self._in_flight) - len(self._ready)

    async def _until_next_retry(self) -> float:
        due = await self.db.read(outbox.next_due, list(self.senders))
        if due is None:
            return self.policy.poll_interval
        return max(0.0, (due - utcnow()).total_seconds())

    def _start_ready(self) -> None:
        """Start claimed sends while there is room."""
        while self._ready and len(self._in_flight) < self.policy.concurrency:
            sender, item = self._ready.popleft()
            task = asyncio.create_task(self._send(sender, item), name=f"outbox-{item.id}")
            self._in_flight.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._start_ready()
        if self._room() >= self._min_claim or not self._in_flight:
            # Woken sooner, the claim loop would find too little room and sleep again; each
            # wake-up costs a task and a timer, and a campaign finishes thousands of sends a second.
            self._wake.set()
        if not task.cancelled() and (error := task.exception()) is not None:
            # Its outcome could not be stored (the database away): the row stays `sending`
            # until its lease runs out, and then the crash rule decides (timeline.outbox).
            log.error("outbox: the outcome of a send was not stored", exc_info=error)

    async def _send(self, sender: Sender, item: OutboxItem) -> None:
        try:
            result = await sender.send(item)
        except SendError as error:
            self._record_failure(item, error)
            return
        except Exception as error:
            # A bug in a sender must not lose the message: it counts as a transient failure.
            log.exception("outbox: sender for %s failed unexpectedly", item.channel)
            self._record_failure(item, TransientSendError(f"{type(error).__name__}"))
            return
        self._outcome(item, None, result.provider_id)
        log.info("outbox: message %s sent on %s", item.id, item.channel)

    def _record_failure(self, item: OutboxItem, error: SendError) -> None:
        if isinstance(error, PermanentSendError):
            log.warning("outbox: message %s refused for good: %s", item.id, error.reason)
            self._outcome(item, lambda s: outbox.mark_failed(s, item, error.reason))
        elif item.attempt >= self.policy.max_attempts:
            log.warning("outbox: message %s dead after %s attempts", item.id, item.attempt)
            self._outcome(item, lambda s: outbox.mark_failed(s, item, error.reason, dead=True))
        else:
            delay = backoff(item.attempt, self.policy.backoff_base, self.policy.backoff_max)
            at = utcnow() + timedelta(seconds=delay)
            log.info("outbox: message %s retried in %.1fs: %s", item.id, delay, error.reason)
            self._outcome(item, lambda s: outbox.mark_retry(s, item, error.reason, at))

    def _outcome(
        self,
        item: OutboxItem,
        record: Callable[[Session], bool] | None,
        provider_id: str | None = None,
    ) -> None:
        """Queue a result for recording (by group commit) and free the send's slot at once:
        the provider is not kept waiting for our database. `stop` records what is queued.

        Should the database fail, the row stays `sending` until its lease runs out, and the
        crash rule of `timeline.outbox` decides.
        """
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(partial(_log_unrecorded, item))
        self._results.submit(_Outcome(item, record, future, provider_id))

    async def _record(self, batch: list[_Outcome]) -> None:
        changed = await self.db.run(_record_all, batch)
        for outcome, ok in zip(batch, changed, strict=True):
            outcome.done.set_result(ok)
        # A message on no ticket (a campaign's) has no agent to tell: no lookup for it.
        event_ids = [
            o.item.event_id
            for o, ok in zip(batch, changed, strict=True)
            if ok and o.item.event_id is not None and o.item.ticket_id is not None
        ]
        if self._on_status is None or not event_ids:
            return
        try:
            await self._on_status(event_ids)
        except Exception:  # the statuses are stored; only their announcement is lost
            log.exception("outbox: announcing %d delivery statuses failed", len(event_ids))


def _log_unrecorded(item: OutboxItem, done: asyncio.Future[bool]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("outbox: the result of message %s could not be recorded", item.id)


def _record_all(session: Session, batch: list[_Outcome]) -> list[bool]:
    sent = [(o.item, o.provider_id) for o in batch if o.record is None]
    recorded = iter(outbox.mark_sent_many(session, sent))
    return [next(recorded) if o.record is None else o.record(session) for o in batch]
