"""E-mail intake: messages from the API, the CLI and IMAP mailboxes take this one path.

read (`gateway.email_parsers`: parse, store the attachments) → the ingest path with the raw
message as the journaled payload → a bounce marks the outbound message it reports as bounced
(`timeline.outbox.mark_delivery`). A message that cannot be read is journaled as rejected,
with the reason, and raised as `InvalidPayload`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from channels import InvalidPayload
from channels.email import inbound
from channels.email.imap import Mailbox
from gateway import email_parsers
from gateway.email_parsers import EmailParsers, ReadEmail, Unreadable
from gateway.ingest import Ingestor, IngestResult
from gateway.settings import Settings
from timeline import outbox
from timeline.attachments import AttachmentStore
from timeline.db import Database

log = logging.getLogger(__name__)

CONTENT_TYPE = "message/rfc822"


def attachment_store(settings: Settings) -> AttachmentStore:
    return AttachmentStore(settings.data_dir / "attachments", settings.attachment_max_bytes)


@dataclass(frozen=True, slots=True)
class PreparedEmail:
    """A message read and its attachments stored: ready for the ingest path."""

    read: ReadEmail
    raw: bytes


class EmailIntake:
    """`acknowledge(event_id)` is offered every message that opened a ticket and is not
    `auto_generated` (the optional auto-acknowledgement, gateway/replies.py).

    With `parsers`, batches (`prepare_many`) are read in the parser processes; single
    messages (`receive`, the API and the CLI) are read in place.
    """

    def __init__(
        self,
        ingestor: Ingestor,
        db: Database,
        attachments: AttachmentStore,
        acknowledge: Callable[[int], Awaitable[object]] | None = None,
        parsers: EmailParsers | None = None,
    ) -> None:
        self._ingestor = ingestor
        self._db = db
        self._attachments = attachments
        self._acknowledge = acknowledge
        self._parsers = parsers

    async def receive(self, raw: bytes, mailbox: Mailbox | None = None) -> IngestResult:
        """One message, start to end (the API and the CLI)."""
        return await self.deliver(await self.prepare(raw, mailbox))

    async def prepare(self, raw: bytes, mailbox: Mailbox | None = None) -> PreparedEmail:
        """Read one message; an unreadable one is journaled as rejected (`InvalidPayload`)."""
        recipient, queue = _destination(mailbox)
        try:  # in a thread: it writes the attachments to disk
            read = await asyncio.to_thread(
                email_parsers.read, raw, self._attachments, recipient=recipient, queue=queue
            )
        except InvalidPayload as error:
            await self._reject(raw, error.detail)
            raise
        return PreparedEmail(read, raw)

    async def prepare_many(
        self, raws: Sequence[bytes], mailbox: Mailbox
    ) -> list[PreparedEmail | InvalidPayload]:
        """`prepare` each of `raws`, in order, in the parser processes if there are any."""
        if self._parsers is None:
            return [await self._prepared_or_invalid(raw, mailbox) for raw in raws]
        recipient, queue = _destination(mailbox)
        found = await self._parsers.read_many(raws, recipient=recipient, queue=queue)
        prepared: list[PreparedEmail | InvalidPayload] = []
        for raw, read in zip(raws, found, strict=True):
            if isinstance(read, Unreadable):
                await self._reject(raw, read.detail)
                prepared.append(InvalidPayload(read.code, read.detail))
            else:
                prepared.append(PreparedEmail(read, raw))
        return prepared

    async def deliver(self, prepared: PreparedEmail) -> IngestResult:
        """Ingest; answers once committed. Messages delivered in order are ingested in order."""
        read = prepared.read
        result = await self._ingestor.ingest(
            read.event, payload=prepared.raw, content_type=CONTENT_TYPE
        )
        await self._after_commit(read, result)
        return result

    async def deliver_many(
        self, prepared: Sequence[PreparedEmail]
    ) -> list[IngestResult | BaseException]:
        """`deliver` each message read from a mailbox, in order: every one's result, or why it
        failed.

        The mailbox keeps each message until it is flagged (or moved) after this commit, so
        its journal entry can go in with its event, in the one transaction: a batch lost
        before the commit is fetched again (`journal_first=False`).
        """
        queued = [
            self._ingestor.submit(
                p.read.event, payload=p.raw, content_type=CONTENT_TYPE, journal_first=False
            )
            for p in prepared
        ]
        results = await asyncio.gather(*queued, return_exceptions=True)
        for one, result in zip(prepared, results, strict=True):
            if isinstance(result, IngestResult):
                await self._after_commit(one.read, result)
        return results

    async def _after_commit(self, read: ReadEmail, result: IngestResult) -> None:
        if read.bounce is not None:  # again on a retry: marking is idempotent
            await self._db.run(_mark_bounced, read.bounce)
        if self._acknowledge and result.ticket_id and not read.auto_generated:
            try:  # again on a retry: the acknowledgement is idempotent per ticket
                await self._acknowledge(result.event_id)
            except Exception:  # stored all the same; an acknowledgement is a courtesy
                log.exception("acknowledging e-mail event %d failed", result.event_id)

    async def _prepared_or_invalid(
        self, raw: bytes, mailbox: Mailbox
    ) -> PreparedEmail | InvalidPayload:
        try:
            return await self.prepare(raw, mailbox)
        except InvalidPayload as error:
            return error

    async def _reject(self, raw: bytes, reason: str) -> None:
        await self._ingestor.reject(
            channel=inbound.CHANNEL, payload=raw, content_type=CONTENT_TYPE, reason=reason
        )


def _destination(mailbox: Mailbox | None) -> tuple[str | None, str | None]:
    """(recipient, queue) of what arrives through `mailbox`; the message says, without one."""
    return (mailbox.address, mailbox.queue) if mailbox else (None, None)


def _mark_bounced(session: Session, bounce: inbound.Bounce) -> None:
    for message_id in bounce.message_ids:
        outbox.mark_delivery(session, inbound.CHANNEL, message_id, "bounced", bounce.detail)
