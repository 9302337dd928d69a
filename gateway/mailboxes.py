"""IMAP intake workers: one task per configured mailbox, for as long as the gateway runs.

Each pass takes the messages above the mailbox's last UID, in UID order and in batches:
one FETCH per batch, read in the parser processes (`gateway.email_parsers`), then handed to
the ingest path in that order (group commit writes it together). Only after the timeline
commit is a message flagged, moved or deleted, and only after that is the position advanced.
A crash in between repeats the batch: the ingest path dedupes on Message-ID, so nothing is
lost and nothing doubles. The position is written behind the reading (`_Position`): waiting
for it would hold the next FETCH until the database, busy with the next batch, got to it.

A message that cannot be read is journaled as rejected and passed over like a good one: one
bad message never stalls a mailbox. A broken connection or an unreachable database ends the
session; the worker reconnects with exponential backoff and jitter, and never gives up.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from channels import InvalidPayload
from channels.email.imap import FETCH_BATCH, Fetched, ImapError, ImapMailbox, Mailbox, Selected
from gateway.email_intake import EmailIntake, PreparedEmail
from gateway.ingest import IngestError, IngestResult
from timeline import mailboxes
from timeline.db import Database

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
# Batches fetched and read while the oldest one is being committed: enough that the parser
# processes always have the next batch while the database writes one (two left them idle
# between batches), and never more raw mail than READ_AHEAD_BYTES, so big mail does not pile
# up in memory.
BATCHES_AHEAD = 4
READ_AHEAD_BYTES = 64 * 1024 * 1024
# A pass writes the mailbox's position after every this many batches, and at its end.
POSITION_EVERY = 10


class MailboxWorker:
    def __init__(self, mailbox: Mailbox, intake: EmailIntake, db: Database) -> None:
        self.mailbox = mailbox
        self._intake = intake
        self._db = db

    async def run(self) -> None:
        """Read the mailbox until cancelled, reconnecting after any failure."""
        delay = BACKOFF_FIRST
        while True:
            imap = ImapMailbox(self.mailbox)
            try:
                selected = await imap.open()
                delay = BACKOFF_FIRST
                await self._follow(imap, selected)
            except Exception as error:  # whatever broke, the mailbox must be read again later
                log.warning(
                    "mailbox %s: %s: %s; reconnecting in %.0f s",
                    self.mailbox.name, type(error).__name__, error, delay,
                )  # fmt: skip
            finally:
                await imap.close()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _follow(self, imap: ImapMailbox, selected: Selected) -> None:
        log.info(
            "mailbox %s: reading %s (%s)",
            self.mailbox.name, self.mailbox.folder, "IDLE" if imap.can_idle else "polling",
        )  # fmt: skip
        uidvalidity = selected.uidvalidity
        while True:
            last = await self.sync(imap, uidvalidity, selected.uidnext)
            selected = await imap.select()
            if selected.uidvalidity != uidvalidity:
                raise ImapError("the folder's UIDVALIDITY changed; starting it over")
            if selected.uidnext - 1 <= last:  # nothing arrived while we worked
                await imap.wait_for_mail()

    async def sync(self, imap: ImapMailbox, uidvalidity: int, uidnext: int) -> int:
        """Take everything above the stored position; the new position.

        `uidnext` comes from the SELECT before: UIDs below it that no search found are gone
        (expunged meanwhile), and count as taken.
        """
        name = self.mailbox.name
        last: int = await self._db.run(mailboxes.position, name, uidvalidity)
        last = await self._take(imap, uidvalidity, last)
        if uidnext - 1 > last:
            last = uidnext - 1
            await self._db.run(mailboxes.advance, name, uidvalidity, last)
        return last

    async def _take(self, imap: ImapMailbox, uidvalidity: int, last: int) -> int:
        """Everything above `last`, batch by batch, in UID order: while one batch is committed
        and then flagged (moved, deleted), the next ones are fetched and read (in the parser
        processes), so neither the database nor the flagging waits for IMAP reads, nor they
        for it. What arrived meanwhile is searched for as soon as all found so far is
        fetched, not once it is committed: the pipeline runs on rather than emptying first.
        Until a search finds nothing new; what arrives after it shows in the next SELECT."""
        pending: list[_Batch] = []
        position = _Position(self._db, self.mailbox.name, uidvalidity)
        searched = last
        try:
            while uids := await imap.uids_after(searched):
                searched = uids[-1]
                for start in range(0, len(uids), FETCH_BATCH):
                    after = pending[-1] if pending else None
                    batch = await self._start(imap, uids[start : start + FETCH_BATCH], after)
                    batch.completed = asyncio.create_task(
                        self._complete(imap, position, batch, after)
                    )
                    pending.append(batch)
                    while _ahead_too_far(pending):
                        last = max(last, await pending[0].completed)
                        pending.pop(0)
            while pending:
                last = max(last, await pending[0].completed)
                pending.pop(0)
        except BaseException:
            # Already under way: let them end, answered or not, before the session does.
            await asyncio.gather(
                *(batch.settle() for batch in pending), position.settle(), return_exceptions=True
            )
            raise
        await position.settle()
        return last

    async def _start(self, imap: ImapMailbox, uids: list[int], after: _Batch | None) -> _Batch:
        """Fetch a batch and start reading it; it queues for the ingest path behind `after`."""
        fetched = await imap.fetch(uids)
        # Gone meanwhile (another client deleted them): nothing left to take.
        batch = _Batch(uids, {f.uid for f in fetched}, set(uids) - {f.uid for f in fetched})
        batch.size = sum(len(f.raw) for f in fetched)
        batch.queued = asyncio.create_task(self._queue(batch, fetched, after))
        return batch

    async def _queue(self, batch: _Batch, fetched: list[Fetched], after: _Batch | None) -> None:
        """Read the batch, then hand it to the ingest path once the batch before it is handed
        over: the ingest path takes messages in the order they are handed to it."""
        prepared = await self._intake.prepare_many([f.raw for f in fetched], self.mailbox)
        if after is not None:
            await after.queued
        readable: list[PreparedEmail] = []
        for message, found in zip(fetched, prepared, strict=True):
            if isinstance(found, InvalidPayload):
                log.warning(
                    "mailbox %s: UID %d rejected: %s", self.mailbox.name, message.uid, found
                )
                batch.done.add(message.uid)
            else:
                batch.delivering_uids.append(message.uid)
                readable.append(found)
        # Queued for the ingest path as soon as this task runs: batches in the order created.
        batch.delivering = asyncio.create_task(self._intake.deliver_many(readable))

    async def _complete(
        self, imap: ImapMailbox, position: _Position, batch: _Batch, after: _Batch | None
    ) -> int:
        """Once the batch is committed, and the one before it completed (a batch that failed
        stops the ones after it): flag/move/delete it, then advance the position. The UID up
        to which it was taken, or 0."""
        if after is not None:
            await after.completed
        failure: BaseException | None = None
        await batch.queued  # unread (the parsers broke): the session ends, the batch comes again
        results = await batch.delivering if batch.delivering else []
        for uid, result in zip(batch.delivering_uids, results, strict=True):
            # Journaled as failed, it can be replayed from the journal: do not block on it.
            # Not even journaled: take it again later.
            journaled = isinstance(result, IngestError) and result.journal_id is not None
            if isinstance(result, BaseException) and not journaled:
                failure = failure or result
            else:
                batch.done.add(uid)
        await imap.finish(sorted(batch.done & batch.fetched))
        taken = _contiguous(batch.uids, batch.done)
        if taken:
            position.advance(taken)
        if failure is not None:
            raise failure
        return taken or 0


class _Position:
    """The mailbox's stored position, written behind the reading: `advance` returns at once.
    Every POSITION_EVERY-th advance is written (unless a write is still under way), and
    `settle` writes the last: each write is a transaction on the database's one writer
    (SQLite), which the ingest batches queue for too.

    A position written late only means more to fetch again after a crash, which the ingest
    path dedupes; `mailboxes.advance` never moves it back.
    """

    def __init__(self, db: Database, name: str, uidvalidity: int) -> None:
        self._db = db
        self._name = name
        self._uidvalidity = uidvalidity
        self._wanted = 0
        self._written = 0
        self._advances = 0
        self._writing: asyncio.Task[None] | None = None

    def advance(self, uid: int) -> None:
        self._wanted = max(self._wanted, uid)
        self._advances += 1
        writing = self._writing is not None and not self._writing.done()
        if self._advances % POSITION_EVERY == 0 and not writing:
            self._write()

    async def settle(self) -> None:
        """Until every advance so far is written; raises if a write failed."""
        if self._writing is not None:
            await self._writing
        if self._written < self._wanted:
            await self._write()

    def _write(self) -> asyncio.Task[None]:
        if self._writing is not None:
            self._writing.result()  # a write that failed ends the session
        self._writing = asyncio.create_task(self._write_position(self._wanted))
        return self._writing

    async def _write_position(self, uid: int) -> None:
        await self._db.run(mailboxes.advance, self._name, self._uidvalidity, uid)
        self._written = uid


@dataclass(eq=False)
class _Batch:
    uids: list[int]
    fetched: set[int]
    # On the timeline, journaled, or gone from the mailbox.
    done: set[int]
    queued: asyncio.Task[None] = field(init=False)
    completed: asyncio.Task[int] = field(init=False)  # flagged and its position advanced
    delivering: asyncio.Task[list[IngestResult | BaseException]] | None = None
    delivering_uids: list[int] = field(default_factory=list)
    size: int = 0  # bytes of raw mail fetched

    async def settle(self) -> None:
        """Until what is under way for this batch has ended, however it ended."""
        await asyncio.gather(self.queued, return_exceptions=True)
        if self.delivering is not None:
            await asyncio.gather(self.delivering, return_exceptions=True)
        await asyncio.gather(self.completed, return_exceptions=True)


def _ahead_too_far(pending: Sequence[_Batch]) -> bool:
    """More batches under way than BATCHES_AHEAD, or more raw mail than READ_AHEAD_BYTES in
    those behind the oldest."""
    return len(pending) > BATCHES_AHEAD or sum(b.size for b in pending[1:]) > READ_AHEAD_BYTES


def _contiguous(batch: Sequence[int], done: set[int]) -> int | None:
    """The highest UID of `batch` up to which every message is done."""
    taken = None
    for uid in batch:
        if uid not in done:
            break
        taken = uid
    return taken
