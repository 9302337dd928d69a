"""Group commit: callers queue jobs, a writer takes whatever has gathered as one batch.

Under light load a batch is one job and nothing waits; under heavy load the batches grow and
the cost per job falls, because a transaction (and on SQLite a hand-off to the writer thread)
is paid once per batch instead of once per job. The ingest path and the call desk both write
this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

MAX_BATCH = 256
SHUTDOWN_GRACE_SECONDS = 10.0


class IngestError(Exception):
    """The payload was accepted and journaled but could not be stored; it can be replayed."""

    def __init__(self, journal_id: int | None) -> None:
        super().__init__(f"ingest failed; journal entry {journal_id}")
        self.journal_id = journal_id


class JournaledJob(Protocol):
    """A caller's request, answered through a future once its batch is committed."""

    journal_id: int | None

    def fail(self, error: BaseException) -> None: ...


JobT = TypeVar("JobT", bound=JournaledJob)


class GroupCommit(Generic[JobT]):
    """A queue of jobs and `writers` tasks that hand each batch to `process`.

    `process` answers every job of its batch; when it raises (the database is unreachable),
    each job still gets an answer, an `IngestError` naming its journal entry: nobody hangs.
    """

    def __init__(
        self,
        name: str,
        process: Callable[[list[JobT]], Awaitable[None]],
        *,
        writers: int = 1,
        max_batch: int = MAX_BATCH,
        linger: float = 0.0,
    ) -> None:
        self._name = name
        self._process = process
        self._writer_count = writers
        self._max_batch = max_batch
        # Seconds a batch waits for company once its first job is in: for work nobody waits
        # on (the outbox's results), fewer and larger transactions are worth a short delay.
        self._linger = linger
        self._queue: asyncio.Queue[JobT | None] = asyncio.Queue()
        self._writers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for n in range(self._writer_count):
            task = asyncio.create_task(self._write_batches(), name=f"{self._name}-{n}")
            self._writers.append(task)

    def submit(self, job: JobT) -> None:
        self._queue.put_nowait(job)

    async def stop(self) -> None:
        """Finish what is queued, then end; cancelling a batch mid-way helps nobody."""
        for _ in self._writers:
            self._queue.put_nowait(None)
        _, unfinished = await asyncio.wait(self._writers, timeout=SHUTDOWN_GRACE_SECONDS)
        for writer in unfinished:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not None:
                job.fail(RuntimeError("the gateway is shutting down"))

    async def _write_batches(self) -> None:
        """Take whatever has queued as one batch, until `stop` queues the end (None)."""
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch, ending = [first], False
            if self._linger and self._queue.qsize() < self._max_batch:
                await asyncio.sleep(self._linger)
            while len(batch) < self._max_batch and not self._queue.empty():
                job = self._queue.get_nowait()
                if job is None:
                    ending = True
                    break
                batch.append(job)
            try:
                await self._process(batch)
            except asyncio.CancelledError:
                for job in batch:
                    job.fail(RuntimeError("the gateway is shutting down"))
                raise
            except Exception:  # the database is unreachable: answer everyone, never hang
                log.exception("%s batch of %d jobs failed", self._name, len(batch))
                for job in batch:
                    job.fail(IngestError(job.journal_id))
            if ending:
                return
