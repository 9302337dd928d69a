"""Reading e-mail off the event loop: parsing, sanitising and storing attachments in processes.

Reading a message (MIME parsing, header decoding, `nh3` on the HTML, hashing and writing its
attachments) is pure CPU; in the event-loop thread it would take turns with IMAP and the
database for the one GIL. IMAP intake therefore reads its batches in a pool of processes
(`EmailParsers`); the API and the CLI, one message at a time, read in place (`read`).

This module is what a parser process imports, so it imports nothing of the gateway's: no
database, no web framework, only the channel's parser and the attachment store.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from channels import InvalidPayload
from channels.email import inbound
from timeline.attachments import AttachmentStore
from timeline.events import InboundEvent, pickled_by_position

log = logging.getLogger(__name__)

# Where the API serves a stored attachment (gateway/email_routes.py).
ATTACHMENT_URL = "/api/v1/attachments/{digest}"
# Read once by every new parser process (`_warm_up_process`): text, HTML and a file, an
# encoded subject, a reply's ids. So imports, compiled patterns and the policy's caches are
# there before the first mail, not made while a batch waits for them.
_SAMPLE = (
    b"From: =?utf-8?q?W=C3=A4rm_Up?= <warm-up@example.invalid>\r\n"
    b"To: support@example.invalid\r\n"
    b"Subject: =?utf-8?q?Re:_Bestellung_[#1]?=\r\n"
    b"Date: Sat, 5 Dec 2026 08:00:00 +0100\r\n"
    b"Message-ID: <warm-up@example.invalid>\r\n"
    b"In-Reply-To: <parent@example.invalid>\r\n"
    b"References: <root@example.invalid> <parent@example.invalid>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n'
    b"\r\n"
    b"--inner\r\n"
    b'Content-Type: text/plain; charset="iso-8859-1"\r\n'
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Gr=FC=DFe\r\n"
    b"\r\n"
    b"> quoted\r\n"
    b"--inner\r\n"
    b'Content-Type: text/html; charset="utf-8"\r\n'
    b"\r\n"
    b"<p>Gr\xc3\xbc\xc3\x9fe</p><blockquote>quoted</blockquote>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b'Content-Type: application/pdf; name="scan.pdf"\r\n'
    b'Content-Disposition: attachment; filename="scan.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0xLjQK\r\n"
    b"--outer--\r\n"
)


@pickled_by_position
@dataclass(frozen=True, slots=True)
class ReadEmail:
    """A parsed message whose attachments are stored: what the ingest path needs of it."""

    event: InboundEvent
    bounce: inbound.Bounce | None = None
    auto_generated: str | None = None


@pickled_by_position
@dataclass(frozen=True, slots=True)
class Unreadable:
    """Why a message could not be read (an exception does not cross processes intact)."""

    code: str
    detail: str


def read(
    raw: bytes, attachments: AttachmentStore, *, recipient: str | None, queue: str | None
) -> ReadEmail:
    """Parse `raw` and store its attachments; `InvalidPayload` if it cannot be read."""
    parsed = _parse(raw, recipient)
    urls: list[str | None] = []
    for part in parsed.attachments:  # a part over the size limit keeps its metadata, no URL
        digest = attachments.put(part.data)
        urls.append(ATTACHMENT_URL.format(digest=digest) if digest else None)
    return ReadEmail(parsed.event(urls, queue=queue), parsed.bounce, parsed.auto_generated)


def read_many(
    raws: Sequence[bytes],
    attachments: AttachmentStore,
    recipient: str | None,
    queue: str | None,
) -> list[ReadEmail | Unreadable]:
    """`read` each of `raws`, in a parser process: one unreadable message spoils no other."""
    found: list[ReadEmail | Unreadable] = []
    for raw in raws:
        try:
            found.append(read(raw, attachments, recipient=recipient, queue=queue))
        except InvalidPayload as error:
            found.append(Unreadable(error.code, error.detail))
    return found


def _warm_up_process() -> None:
    """Every parser process's initializer: read `_SAMPLE` (its file is not stored).

    Never raises: an initializer that fails breaks the whole pool, and a cold process
    still reads mail.
    """
    try:
        inbound.parse(_SAMPLE).event()
    except Exception:
        log.exception("warming up an e-mail parser process failed")


def _parse(raw: bytes, recipient: str | None) -> inbound.ParsedEmail:
    try:
        return inbound.parse(raw, recipient=recipient)
    except InvalidPayload:
        raise
    except Exception as error:  # a parser bug must not stall a mailbox: journal and go on
        log.warning("unreadable e-mail (%s)", type(error).__name__, exc_info=True)
        raise InvalidPayload(
            "invalid_email", f"The message could not be read ({type(error).__name__})."
        ) from error


class EmailParsers:
    """A pool of parser processes that `read_many` spreads each batch over, order kept.

    Started fresh ("spawn"), not forked: the gateway has threads running (database writers)
    whose locks a forked child could inherit held. Started once with the gateway, each
    process warmed up as it starts (`_warm_up_process`, also in a pool made anew after one
    broke), so the first mail does not wait for interpreters to start and imports to load:
    a warm-up task per process is not enough, as one process may take them all.
    """

    def __init__(self, attachments: AttachmentStore, processes: int | None = None) -> None:
        self._attachments = attachments
        self.processes = processes or default_processes()
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        self._pool = self._new_pool()
        await self._warm_up(self._pool)

    async def stop(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    async def read_many(
        self, raws: Sequence[bytes], *, recipient: str | None, queue: str | None
    ) -> list[ReadEmail | Unreadable]:
        """`read` each of `raws`, in `raws`' order, sharing the work out over the processes."""
        if self._pool is None:
            raise RuntimeError("the e-mail parsers are not started")
        pool, loop = self._pool, asyncio.get_running_loop()
        size = -(-len(raws) // self.processes)
        chunks = [raws[start : start + size] for start in range(0, len(raws), size)]
        try:
            parts = await asyncio.gather(
                *(
                    loop.run_in_executor(
                        pool, read_many, chunk, self._attachments, recipient, queue
                    )
                    for chunk in chunks
                )
            )
        except BrokenProcessPool:
            # A parser process died (killed, out of memory): a new pool for the next attempt.
            if self._pool is pool:
                self._pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
            raise
        return [found for part in parts for found in part]

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self.processes, mp_context=context, initializer=_warm_up_process)

    async def _warm_up(self, pool: ProcessPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        empty: list[bytes] = []
        await asyncio.gather(
            *(
                loop.run_in_executor(pool, read_many, empty, self._attachments, None, None)
                for _ in range(self.processes)
            )
        )


def default_processes() -> int:
    """One parser process per CPU: the gateway's own process mostly waits on I/O meanwhile."""
    return os.cpu_count() or 1
