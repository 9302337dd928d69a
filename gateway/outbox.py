"""The outbox sender: claims due messages and hands them to their channel's sender.

One worker per gateway process (a `cleanup_ctx` of the app). It sleeps until something is
enqueued in this process (`wake`), a retry falls due, or the poll interval passes (the only way
to hear of rows other processes queued). Up to `concurrency` messages are in flight at once,
each channel within its own rate limit. What a crash leaves half-sent is decided by
`timeline.outbox` (crash recovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from channels.sending import PermanentSendError, Sender, SendError, TransientSendError
from timeline import outbox
from timeline.db import Database
from timeline.models import utcnow
from timeline.outbox import OutboxItem

log = logging.getLogger(__name__)


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


# Told the timeline event of a message whose delivery status changed (sent, failed, …).
StatusListener = Callable[[int], Awaitable[None]]


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
        self._limits = {c: RateLimit(r) for c, r in self.policy.rate_limits.items() if r > 0}
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        """Something was enqueued (or requeued): look now instead of at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        if self.senders:
            self._runner = asyncio.create_task(self._run(), name="outbox")

    async def stop(self, grace: float = 30.0) -> None:
        """Claim nothing more; let sends in flight finish, so none is cut off mid-way."""
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            await self._runner
        if self._in_flight:
            _done, pending = await asyncio.wait(self._in_flight, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

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
        for channel, sender in self.senders.items():
            room = self.policy.concurrency - len(self._in_flight)
            if room <= 0:
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
            )
            if limit:
                limit.take(len(items))
            for item in items:
                self._start_send(sender, item)
            if len(items) == allowed:
                pause = 0.0  # there may be more
        if pause > 0:
            pause = min(pause, await self._until_next_retry())
        return pause

    async def _until_next_retry(self) -> float:
        due = await self.db.read(outbox.next_due, list(self.senders))
        if due is None:
            return self.policy.poll_interval
        return max(0.0, (due - utcnow()).total_seconds())

    def _start_send(self, sender: Sender, item: OutboxItem) -> None:
        task = asyncio.create_task(self._send(sender, item), name=f"outbox-{item.id}")
        self._in_flight.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()
        if not task.cancelled() and (error := task.exception()) is not None:
            # Its outcome could not be stored (the database away): the row stays `sending`
            # until its lease runs out, and then the crash rule decides (timeline.outbox).
            log.error("outbox: the outcome of a send was not stored", exc_info=error)

    async def _send(self, sender: Sender, item: OutboxItem) -> None:
        try:
            result = await sender.send(item)
        except SendError as error:
            await self._record_failure(item, error)
            return
        except Exception as error:
            # A bug in a sender must not lose the message: it counts as a transient failure.
            log.exception("outbox: sender for %s failed unexpectedly", item.channel)
            await self._record_failure(item, TransientSendError(f"{type(error).__name__}"))
            return
        if await self.db.run(outbox.mark_sent, item, result.provider_id):
            await self._status_changed(item)
        log.info("outbox: message %s sent on %s", item.id, item.channel)

    async def _status_changed(self, item: OutboxItem) -> None:
        if self._on_status is None or item.event_id is None:
            return
        try:
            await self._on_status(item.event_id)
        except Exception:  # the status is stored; only its announcement is lost
            log.exception("outbox: announcing the status of message %s failed", item.id)

    async def _record_failure(self, item: OutboxItem, error: SendError) -> None:
        if isinstance(error, PermanentSendError):
            log.warning("outbox: message %s refused for good: %s", item.id, error.reason)
            if await self.db.run(outbox.mark_failed, item, error.reason):
                await self._status_changed(item)
        elif item.attempt >= self.policy.max_attempts:
            log.warning("outbox: message %s dead after %s attempts", item.id, item.attempt)
            if await self.db.run(outbox.mark_failed, item, error.reason, dead=True):
                await self._status_changed(item)
        else:
            delay = backoff(item.attempt, self.policy.backoff_base, self.policy.backoff_max)
            at = utcnow() + timedelta(seconds=delay)
            log.info("outbox: message %s retried in %.1fs: %s", item.id, delay, error.reason)
            await self.db.run(outbox.mark_retry, item, error.reason, at)
