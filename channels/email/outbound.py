"""E-mail replies: built with the standard library's `email` (modern policy), sent with aiosmtplib.

A reply carries our own Message-ID (its timeline event's `external_id`, without the angle
brackets, which is what intake threads later mail against), In-Reply-To and References from the
ticket's thread (RFC 5322 §3.6.4), and the ticket tag `[#<number>]` in the subject, so that a
customer's reply that lost its headers still finds the ticket. Machine-written mail says so with
`Auto-Submitted: auto-replied` (RFC 3834), so that other robots do not answer it.
"""

from __future__ import annotations

import base64
import enum
import logging
import re
import ssl
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid, parseaddr
from typing import Any

import aioimaplib
import aiosmtplib

from channels.email.imap import Mailbox
from channels.sending import (
    Draft,
    PermanentSendError,
    Reply,
    SendResult,
    Thread,
    TransientSendError,
)
from timeline.events import sanitise_html
from timeline.models import utcnow
from timeline.outbox import OutboxItem

log = logging.getLogger(__name__)

# Reply and forward prefixes of common mail clients in several languages (Outlook's German
# `AW:`/`WG:`, Nordic `SV:`/`VS:`, French `TR:`), also the counted `Re[2]:` form.
_PREFIXES = re.compile(r"^\s*(?:(?:re|aw|antw|sv|vs|ref|fwd?|wg|tr)(?:\[\d+\])?\s*:\s*)+", re.I)
_TAGS = re.compile(r"\s*\[#\d{1,18}\]\s*")
# RFC 5322 sets no limit, but some servers cut long headers; the first id and the newest ones
# are the ones threading needs (RFC 5322 §3.6.4 allows trimming the middle).
MAX_REFERENCES = 20


class SmtpTls(enum.StrEnum):
    STARTTLS = "starttls"  # plain connection upgraded with STARTTLS (port 587)
    TLS = "tls"  # TLS from the first byte (port 465)
    NONE = "none"  # a local relay on a trusted network only


@dataclass(frozen=True, slots=True)
class SmtpAccount:
    """Where and as whom replies go; `sender` is the From address, e.g. `Support <s@x.org>`."""

    host: str
    port: int
    sender: str
    tls: SmtpTls = SmtpTls.STARTTLS
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    # A CA bundle to trust instead of the system's (a relay with a private CA).
    ca_file: str | None = None

    @property
    def domain(self) -> str:
        """Our Message-IDs' right-hand side: the From address's domain."""
        return parseaddr(self.sender)[1].rpartition("@")[2] or "localhost"


@dataclass(frozen=True, slots=True)
class SentFolder:
    """Where a copy of every reply is filed over IMAP (RFC 3501 APPEND), so that the team's
    mail clients show what Switchboard sent; `mailbox` gives the server and the login."""

    mailbox: Mailbox
    folder: str = "Sent"

    async def append(self, message: EmailMessage) -> None:
        box = self.mailbox
        if box.tls:
            context = ssl.create_default_context()
            if not box.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            client: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
                box.host, box.server_port, timeout=30, ssl_context=context
            )
        else:
            client = aioimaplib.IMAP4(box.host, box.server_port, timeout=30)
        await client.wait_hello_from_server()
        try:
            _checked(await client.login(box.username, box.password), "LOGIN")
            raw = message.as_bytes()
            appended = await client.append(raw, mailbox=self.folder, flags="(\\Seen)")
            if appended.result != "OK" and "TRYCREATE" in str(appended.lines):
                _checked(await client.create(self.folder), "CREATE")
                appended = await client.append(raw, mailbox=self.folder, flags="(\\Seen)")
            _checked(appended, "APPEND")
        finally:
            await client.logout()


def _checked(response: aioimaplib.Response, command: str) -> None:
    if response.result != "OK":
        raise ConnectionError(f"IMAP {command}: {response.result} {response.lines!r}")


def reply_subject(subject: str | None, ticket_number: int | None) -> str:
    """`Re: <the conversation's subject> [#<number>]`, however many prefixes and tags it had."""
    base = _PREFIXES.sub("", _TAGS.sub(" ", _PREFIXES.sub("", subject or ""))).strip()
    tag = f"[#{ticket_number}]" if ticket_number is not None else ""
    return " ".join(part for part in ("Re:", base, tag) if part)


def tagged_subject(subject: str, ticket_number: int | None) -> str:
    """An agent's own subject, with the ticket tag added if it lacks one."""
    if ticket_number is None or _TAGS.search(subject):
        return subject
    return f"{subject} [#{ticket_number}]"


def references(message_ids: tuple[str, ...]) -> list[str]:
    if len(message_ids) <= MAX_REFERENCES:
        return list(message_ids)
    return [message_ids[0], *message_ids[-(MAX_REFERENCES - 1) :]]


def _bracketed(message_id: str) -> str:
    return f"<{message_id}>"


class EmailSender:
    """The e-mail channel's outbound side (`channels.sending.Sender`).

    Resendable: an attempt cut off by a crash is sent again with the same Message-ID, which
    receiving clients treat as one message.
    """

    channel = "email"
    resendable = True

    def __init__(self, account: SmtpAccount, sent: SentFolder | None = None) -> None:
        self.account = account
        self.sent = sent

    def draft(self, reply: Reply, thread: Thread) -> Draft:
        message_id = make_msgid(domain=self.account.domain).strip("<>")
        if reply.subject:
            subject = tagged_subject(reply.subject, thread.ticket_number)
        else:
            subject = reply_subject(thread.subject, thread.ticket_number)
        html = sanitise_html(reply.html) if reply.html is not None else None
        in_reply_to = thread.in_reply_to or (thread.message_ids[-1] if thread.message_ids else None)
        payload = {
            "from": self.account.sender,
            "to": reply.recipient,
            "subject": subject,
            "text": reply.text,
            "html": html,
            "message_id": message_id,
            "in_reply_to": in_reply_to,
            "references": references(thread.message_ids),
            "auto_submitted": reply.auto,
            "attachments": [
                {
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "data": base64.b64encode(a.data).decode("ascii"),
                }
                for a in reply.attachments
            ],
        }
        return Draft(
            external_id=message_id,
            sender=parseaddr(self.account.sender)[1],
            subject=subject,
            text=reply.text,
            html=html,
            payload=payload,
        )

    async def send(self, item: OutboxItem) -> SendResult:
        message = compose(item.payload)
        account = self.account
        try:
            await aiosmtplib.send(
                message,
                sender=parseaddr(item.payload["from"])[1],
                recipients=[item.payload["to"]],
                hostname=account.host,
                port=account.port,
                username=account.username,
                password=account.password,
                use_tls=account.tls == SmtpTls.TLS,
                start_tls=account.tls == SmtpTls.STARTTLS,
                cert_bundle=account.ca_file,
                timeout=account.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as refused:
            raise _classified(refused.recipients[0].code, refused.recipients[0].message) from None
        except aiosmtplib.SMTPAuthenticationError as error:
            # Our credentials, not this message: worth retrying once someone fixed them.
            raise TransientSendError(
                f"SMTP authentication failed: {error.code} {error.message}"
            ) from None
        except aiosmtplib.SMTPResponseException as error:
            raise _classified(error.code, error.message) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise TransientSendError(f"SMTP: {type(error).__name__}: {error}") from None
        await self._file_copy(message, item)
        return SendResult(provider_id=item.payload["message_id"])

    async def _file_copy(self, message: EmailMessage, item: OutboxItem) -> None:
        """The Sent copy is a courtesy: the customer has the mail, so a failure here must not
        fail (and resend) it."""
        if self.sent is None:
            return
        try:
            await self.sent.append(message)
        except (aioimaplib.Abort, OSError, TimeoutError, ConnectionError) as error:
            log.warning("outbox message %s: no copy in the Sent folder: %s", item.id, error)


def _classified(code: int, text: str) -> TransientSendError | PermanentSendError:
    """RFC 5321 §4.2.1: 5yz is a permanent negative reply, 4yz a transient one."""
    reason = f"{code} {text}".strip()
    return PermanentSendError(reason) if 500 <= code < 600 else TransientSendError(reason)


def compose(payload: dict[str, Any]) -> EmailMessage:
    """The message as it goes out, from the outbox payload `EmailSender.draft` made."""
    message = EmailMessage(policy=SMTP)
    message["From"] = payload["from"]
    message["To"] = Address(addr_spec=payload["to"])
    message["Subject"] = payload["subject"]
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = _bracketed(payload["message_id"])
    if payload.get("in_reply_to"):
        message["In-Reply-To"] = _bracketed(payload["in_reply_to"])
    if payload.get("references"):
        message["References"] = " ".join(_bracketed(r) for r in payload["references"])
    if payload.get("auto_submitted"):
        message["Auto-Submitted"] = "auto-replied"
        # Outlook and Exchange answer nothing to mail that asks for no auto-responses.
        message["X-Auto-Response-Suppress"] = "All"
    message.set_content(payload["text"])
    if payload.get("html"):
        message.add_alternative(payload["html"], subtype="html")
    for attachment in payload.get("attachments", []):
        maintype, _, subtype = attachment["content_type"].partition("/")
        message.add_attachment(
            base64.b64decode(attachment["data"]),
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=attachment["filename"],
        )
    return message
