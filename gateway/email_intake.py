"""E-mail intake: messages from the API, the CLI and IMAP mailboxes take this one path.

parse (`channels.email.inbound`) → store the attachments (`timeline.attachments`) → the ingest
path with the raw message as the journaled payload → a bounce marks the outbound message it
reports as bounced (`timeline.outbox.mark_delivery`). A message that cannot be read is
journaled as rejected, with the reason, and raised as `InvalidPayload`.
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
from gateway.ingest import Ingestor, IngestResult
from gateway.settings import Settings
from timeline import outbox
from timeline.attachments import AttachmentStore
from timeline.db import Database
from timeline.events import InboundEvent

log = logging.getLogger(__name__)

CONTENT_TYPE = "message/rfc822"
# Where the API serves a stored attachment (gateway/email_routes.py).
ATTACHMENT_URL = "/api/v1/attachments/{digest}"


def attachment_store(settings: Settings) -> AttachmentStore:
    return AttachmentStore(settings.data_dir / "attachments", settings.attachment_max_bytes)


@dataclass(frozen=True, slots=True)
class PreparedEmail:
    """A parsed message whose attachments are stored: ready for the ingest path."""

    parsed: inbound.ParsedEmail
    event: InboundEvent
    raw: bytes


class EmailIntake:
    """`acknowledge(event_id)` is offered every message that opened a ticket and is not
    `auto_generated` (the optional auto-acknowledgement, gateway/replies.py)."""

    def __init__(
        self,
        ingestor: Ingestor,
        db: Database,
        attachments: AttachmentStore,
        acknowledge: Callable[[int], Awaitable[object]] | None = None,
    ) -> None:
        self._ingestor = ingestor
        self._db = db
        self._attachments = attachments
        self._acknowledge = acknowledge

    async def receive(self, raw: bytes, mailbox: Mailbox | None = None) -> IngestResult:
        """One message, start to end (the API and the CLI)."""
        return await self.deliver(await self.prepare(raw, mailbox))

    async def prepare(self, raw: bytes, mailbox: Mailbox | None = None) -> PreparedEmail:
        """Parse and store the attachments; an unreadable message is journaled as rejected."""
        try:
            parsed = _parse(raw, mailbox)
        except InvalidPayload as error:
            await self._ingestor.reject(
                channel=inbound.CHANNEL, payload=raw, content_type=CONTENT_TYPE, reason=error.detail
            )
            raise
        urls: Sequence[str | None] = ()
        if parsed.attachments:
            urls = await asyncio.to_thread(self._store, parsed.attachments)
        event = parsed.event(urls, queue=mailbox.queue if mailbox else None)
        return PreparedEmail(parsed, event, raw)

    async def deliver(self, prepared: PreparedEmail) -> IngestResult:
        """Ingest; answers once committed. Messages delivered in order are ingested in order."""
        result = await self._ingestor.ingest(
            prepared.event, payload=prepared.raw, content_type=CONTENT_TYPE
        )
        bounce = prepared.parsed.bounce
        if bounce is not None:  # again on a retry: marking is idempotent
            await self._db.run(_mark_bounced, bounce)
        if self._acknowledge and result.ticket_id and not prepared.parsed.auto_generated:
            try:  # again on a retry: the acknowledgement is idempotent per ticket
                await self._acknowledge(result.event_id)
            except Exception:  # stored all the same; an acknowledgement is a courtesy
                log.exception("acknowledging e-mail event %d failed", result.event_id)
        return result

    def _store(self, parts: Sequence[inbound.MailPart]) -> list[str | None]:
        """Each part's URL; a part over the size limit keeps its metadata but no URL."""
        urls: list[str | None] = []
        for part in parts:
            digest = self._attachments.put(part.data)
            urls.append(ATTACHMENT_URL.format(digest=digest) if digest else None)
        return urls


def _parse(raw: bytes, mailbox: Mailbox | None) -> inbound.ParsedEmail:
    try:
        return inbound.parse(raw, recipient=mailbox.address if mailbox else None)
    except InvalidPayload:
        raise
    except Exception as error:  # a parser bug must not stall a mailbox: journal and go on
        log.warning("unreadable e-mail (%s)", type(error).__name__, exc_info=True)
        raise InvalidPayload(
            "invalid_email", f"The message could not be read ({type(error).__name__})."
        ) from error


def _mark_bounced(session: Session, bounce: inbound.Bounce) -> None:
    for message_id in bounce.message_ids:
        outbox.mark_delivery(session, inbound.CHANNEL, message_id, "bounced", bounce.detail)
