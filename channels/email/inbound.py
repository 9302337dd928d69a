"""Inbound e-mail: one raw RFC 5322 message → `ParsedEmail`, the event and what intake needs.

Parsing uses the standard library's `email` package with its modern policy (RFC 2047 headers,
RFC 2231 file names) and never refuses a message for its encoding: a wrong or unknown charset
is guessed with `charset-normalizer` and decoded with replacement characters. Only a message
without headers or without a usable From address is `InvalidPayload`.

`ParsedEmail.auto_generated` is the flag for loop protection: it names why a message was made
by a machine (an auto-reply, bulk or list mail, a bounce) and is None for mail a person wrote.
Such mail lands on the timeline but never opens a ticket (`ThreadHints.opens_ticket`), and
nothing may answer it automatically: whatever sends auto-acknowledgements checks this flag
(RFC 3834, "Recommendations for Automatic Responses to Electronic Mail").

Threading contract: the event's `external_id` is the Message-ID without angle brackets (a
message without one gets a stable id from a hash of its bytes); the thread hints are the
References ids followed by In-Reply-To (newest last) and the `[#N]` tag of the subject.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import mimetypes
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage, Message
from email.parser import BytesParser, HeaderParser
from email.policy import EmailPolicy
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any

import charset_normalizer

from channels import InvalidPayload
from timeline.events import (
    Address,
    Attachment,
    EventKind,
    InboundEvent,
    ThreadHints,
    pickled_by_position,
    ticket_tag,
)

CHANNEL = "email"
MAX_ID = 500  # timeline_events.external_id
MAX_SUBJECT = 500  # tickets.subject
# A thread that went on for years has hundreds of References; the newest are the ones we wrote.
MAX_REFERENCES = 50
# Precedence values of bulk mail (RFC 3834 §2; the header itself is not standardised).
_BULK_PRECEDENCE = frozenset({"bulk", "junk", "list"})
# Headers that auto-responders and Exchange set on what they send.
_AUTO_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress")
# What browsers do (WHATWG Encoding): mail labelled Latin-1 is almost always windows-1252.
_CHARSET_ALIASES = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252"}
_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")
# The plain forms most mail comes with, `Name <local@domain>` and `local@domain` (plain ASCII
# words, dot-atoms): read by `_plain_address` exactly as `getaddresses` (RFC 5322 §3.4) would,
# without its character-by-character parse. Anything else goes to `getaddresses`.
_DOT_ATOM_ADDRESS = r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_ADDRESS = re.compile(rf"(?:([A-Za-z0-9]+(?: [A-Za-z0-9]+)*) )?<({_DOT_ATOM_ADDRESS})>")
_BARE_ADDRESS = re.compile(_DOT_ATOM_ADDRESS)
# The RFC 5322 §3.3 date as mail clients write it, `Sat, 5 Dec 2026 08:00:00 +0100`: read
# directly; anything else (obsolete forms, comments, zone names) by `parsedate_to_datetime`.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_PLAIN_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?(\d{1,2}) (" + "|".join(_MONTHS) + r") (\d{4}) "
    r"(\d{2}):(\d{2})(?::(\d{2}))? ([+-])(\d{2})(\d{2})"
)


class _RememberingPolicy(EmailPolicy):
    """`policy.default`, remembering what it made of each header value.

    The modern policy parses a header again on every access, and the MIME helpers
    (`get_content_type`, `get_body`, `is_attachment`) access Content-Type and
    Content-Disposition many times per part; most values recur from message to message.
    Parsed headers are immutable, so sharing them is safe.
    """

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one module-level policy, never freed
    def header_fetch_parse(self, name: str, value: str) -> Any:
        return super().header_fetch_parse(name, value)


class _ReadMessage(EmailMessage):
    """A message (or part) as the parser made it; nothing here changes one afterwards.

    So what the MIME helpers and `_header` ask of it many times is worked out once: its
    headers by name (`Message.get` and `in` scan them all, lower-casing every name, on each
    call) and its content type (`get_body`, `is_attachment` and `_leaves` ask each part
    again and again). The parser asks for a part's content type only once all of its headers
    are in.
    """

    @functools.cached_property
    def first_headers(self) -> dict[str, str]:
        """The first value of each header as it came (folded, undecoded), by lower-case name."""
        found: dict[str, str] = {}
        for name, value in self.raw_items():
            found.setdefault(name.lower(), str(value))
        return found

    @functools.cached_property
    def _content_type(self) -> str:
        return super().get_content_type()

    def get_content_type(self) -> str:
        return self._content_type


class _OneClassPerName(HeaderRegistry):
    """The modern policy's registry, making each header's class once rather than per header
    parsed (`type()` on every call: a fifth of the cost of a value seen for the first time)."""

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one module-level registry, never freed
    def __getitem__(self, name: str) -> type[BaseHeader]:
        return super().__getitem__(name)


_POLICY = _RememberingPolicy(header_factory=_OneClassPerName(), message_factory=_ReadMessage)
_parser = BytesParser(policy=_POLICY)
# A header field's first line (a name of printable ASCII but the colon) or its continuation:
# the lines the feedparser takes as headers, but for an empty name and the mbox `From ` line,
# which it reads with a defect or specially (`_read_message` leaves those to it).
_HEADER_LINE = re.compile(r"[\041-\071\073-\176]+:|[\t ]")
# What may follow a multipart boundary on its line: `--` if it closes the body, blanks.
_BOUNDARY_END = re.compile(r"(--)?[ \t]*(\r\n|\r|\n)?")
# The MIME fields (RFC 2045, 2183), whose parameters `_header` would lose reading them plainly.
_MIME_FIELDS = frozenset({"content-type", "content-disposition", "content-transfer-encoding"})


@dataclass(frozen=True, slots=True)
class MailPart:
    """An attachment or inline image, with its bytes, before it is stored."""

    filename: str
    content_type: str
    data: bytes
    content_id: str | None = None


@pickled_by_position
@dataclass(frozen=True, slots=True)
class Bounce:
    """A delivery status notification (RFC 3464) reporting that messages did not arrive."""

    message_ids: tuple[str, ...]
    recipients: tuple[str, ...]
    detail: str


@dataclass(frozen=True, slots=True)
class ParsedEmail:
    message_id: str
    sender: Address
    recipient: str
    subject: str | None
    text: str
    html: str | None  # as the sender wrote it; `event()` sanitises it
    preview: str
    thread: ThreadHints
    occurred_at: datetime
    attachments: tuple[MailPart, ...] = ()
    auto_generated: str | None = None
    bounce: Bounce | None = None

    def event(self, urls: Sequence[str | None] = (), *, queue: str | None = None) -> InboundEvent:
        """The timeline event, with each attachment's stored location (`urls`, in order).

        Inline images referenced as `cid:` in the HTML point at their stored copies; the HTML
        is sanitised by `InboundEvent` after that, so nothing else survives of the markup.
        """
        urls = list(urls) + [None] * (len(self.attachments) - len(urls))
        html = self.html
        if html is not None:
            html = _link_inline_images(html, self.attachments, urls)
        return InboundEvent(
            channel=CHANNEL,
            kind=EventKind.MESSAGE,
            sender=self.sender,
            recipient=self.recipient,
            external_id=self.message_id,
            text=self.text,
            subject=self.subject,
            html=html,
            thread=self.thread,
            attachments=tuple(
                Attachment(part.filename, part.content_type, len(part.data), url, part.content_id)
                for part, url in zip(self.attachments, urls, strict=True)
            ),
            occurred_at=self.occurred_at,
            queue=queue,
            preview=self.preview,
        )


def parse(raw: bytes, *, recipient: str | None = None) -> ParsedEmail:
    """Read one message; `recipient` is the mailbox it was delivered to, when known."""
    if not raw.strip():
        raise InvalidPayload("invalid_email", "The message is empty.")
    message = _read_message(raw)
    if not isinstance(message, EmailMessage) or not message.keys():
        raise InvalidPayload("invalid_email", "The body is not an RFC 5322 message.")
    sender = _sender(message)
    subject = _header(message, "Subject")[:MAX_SUBJECT] or None
    bodies = _body_parts(message)
    text, html = _bodies(*bodies)
    auto = auto_generated(message)
    bounce = _bounce(message)
    return ParsedEmail(
        message_id=_message_id(message, raw),
        sender=sender,
        recipient=recipient or _recipient(message),
        subject=subject,
        text=text,
        html=html,
        preview=new_text(text),
        thread=ThreadHints(
            ticket_number=ticket_tag(subject),
            references=_references(message, bounce),
            opens_ticket=auto is None,
        ),
        occurred_at=_date(message),
        attachments=tuple(_attachments(message, bodies)),
        auto_generated=auto,
        bounce=bounce,
    )


def _read_message(raw: bytes) -> Message:
    """`raw` as the standard library's parser reads it, for less where that is simple.

    The feedparser reads a message line by line through generators, and compiles a pattern
    for every multipart boundary (new in every message) to match each line against. Most
    mail is simpler than what it must allow for: a single part, or a multipart of single
    parts (text and HTML, a file). Such a message is read here as the feedparser reads it,
    to the same headers, parts, preamble and epilogue; anything else (a nested container, a
    line the feedparser would read with a defect or specially) is left to it.
    """
    lines = io.StringIO(raw.decode("ascii", "surrogateescape"), newline="").readlines()
    read = _read_head(lines, 0, len(lines))
    if read is not None:
        message, body = read
        if message.get_content_maintype() != "multipart":
            message.set_payload("".join(lines[body:]))
            return message
        if _read_parts(message, lines, body):
            return message
    return _parser.parsebytes(raw)


def _read_head(lines: list[str], start: int, end: int) -> tuple[_ReadMessage, int] | None:
    """The part whose header section starts at `lines[start]`, and where its body starts;
    None unless every line up to an empty one is a header line and the part is no
    message/* (whose body the feedparser reads as a message)."""
    message = _ReadMessage(policy=_POLICY)
    field: list[str] = []
    for n in range(start, end):
        line = lines[n]
        if line in ("\r\n", "\n", "\r"):
            if field:
                message.set_raw(*_POLICY.header_source_parse(field))
            if message.get_content_maintype() == "message":
                return None
            return message, n + 1
        if not _HEADER_LINE.match(line) or (line[0] in " \t" and not field):
            return None
        if line[0] not in " \t" and field:
            message.set_raw(*_POLICY.header_source_parse(field))
            field = []
        field.append(line)
    return None


def _read_parts(message: _ReadMessage, lines: list[str], body: int) -> bool:
    """Read the multipart body at `lines[body:]` into `message`, if each of its parts is a
    single part as `_read_head` reads one, between single boundary lines (RFC 2046 §5.1.1)
    and with a close boundary. False, with `message` spoilt, for the feedparser to read."""
    boundary = message.get_boundary()
    encoding = str(message.get("content-transfer-encoding", "8bit")).lower()
    if boundary is None or message.get_content_subtype() == "digest":
        return False  # a digest's parts are messages by default
    if encoding not in ("7bit", "8bit", "binary"):
        return False
    separator = "--" + boundary
    marks = [n for n in range(body, len(lines)) if _boundary_line(lines[n], separator)]
    if not marks or lines[marks[0]].startswith(separator + "--"):
        return False
    if marks[0] > body:  # the line break before a boundary belongs to the boundary
        message.preamble = _without_line_break("".join(lines[body : marks[0]]))
    for opening, closing in itertools.pairwise(marks):
        read = _read_head(lines, opening + 1, closing)
        if read is None or read[0].get_content_maintype() == "multipart":
            return False  # double boundary lines, a part without a body, a nested container
        part, part_body = read
        part.set_payload(_without_line_break("".join(lines[part_body:closing])))
        message.attach(part)
        if lines[closing].startswith(separator + "--"):
            message.epilogue = "".join(lines[closing + 1 :])
            return True
    return False  # no close boundary


def _boundary_line(line: str, separator: str) -> bool:
    """The line is the boundary or close boundary (the feedparser's pattern for it)."""
    return line.startswith(separator) and _BOUNDARY_END.fullmatch(line, len(separator)) is not None


def _without_line_break(text: str) -> str:
    """`text` without the line break it ends with, if any (CRLF, CR or LF)."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith(("\r", "\n")) else text


# --- headers --------------------------------------------------------------------------------


def _header(message: Message, name: str) -> str:
    """A header decoded (RFC 2047) to one line; bad encodings become replacement characters.

    A plain ASCII value without encoded words is only unfolded: the modern policy's parse
    (the costliest step of reading a message, and most values are seen once) would change
    nothing else that we read. Addresses go to `getaddresses`, which reads the same syntax
    (RFC 5322 §3.4), ids are searched, dates parsed. One difference: an old-style
    `addr (Name)` keeps its comment, which `getaddresses` takes as the display name.
    """
    raw = _raw_header(message, name)
    if raw is None:
        return ""
    if raw.isascii() and "=?" not in raw and name.lower() not in _MIME_FIELDS:
        return " ".join(raw.split())
    try:
        value = message.get(name)
        text = "" if value is None else str(value)
    except Exception:  # the header parser trips on some malformed values: decode it plainly
        text = _plain_header(message, name)
    # Undecodable bytes survive parsing as surrogates; a database cannot store those.
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split())


def _raw_header(message: Message, name: str) -> str | None:
    """The first `name` header as it came, folded and undecoded (as `Message.get` finds it)."""
    if isinstance(message, _ReadMessage):
        return message.first_headers.get(name.lower())
    name = name.lower()
    for key, value in message.raw_items():
        if key.lower() == name:
            return str(value)
    return None


def _has_header(message: Message, name: str) -> bool:
    return _raw_header(message, name) is not None


def _plain_header(message: Message, name: str) -> str:
    value = _raw_header(message, name) or ""
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, UnicodeError, ValueError):
        return value


def _sender(message: Message) -> Address:
    raw = _header(message, "From")
    found = [(name, addr) for name, addr in _addresses(raw) if addr]
    if not found:
        raise InvalidPayload("invalid_email", "The message has no usable From address.")
    name, addr = found[0]
    return Address("email", addr, name or None)


def _recipient(message: Message) -> str:
    for name in ("Delivered-To", "X-Original-To", "To"):
        found = [addr for _, addr in _addresses(_header(message, name)) if addr]
        if found:
            return found[0]
    return ""


def _addresses(value: str) -> list[tuple[str, str]]:
    """`getaddresses([value])`: (display name, address) pairs of an address list."""
    if plain := _plain_address(value):
        return [plain]
    return getaddresses([value])


def _plain_address(value: str) -> tuple[str, str] | None:
    """The one address of `value` in a plain form (`_PLAIN_ADDRESS`), else None."""
    if match := _PLAIN_ADDRESS.fullmatch(value):
        return match.group(1) or "", match.group(2)
    if _BARE_ADDRESS.fullmatch(value):
        return "", value
    return None


def _ids(value: str) -> list[str]:
    return _MESSAGE_ID.findall(value)


def _message_id(message: Message, raw: bytes) -> str:
    value = _header(message, "Message-ID")
    found = _ids(value) or value.split()[:1]
    if found and len(found[0]) <= MAX_ID:
        return found[0]
    # No (usable) Message-ID: the same message received again must dedupe, so hash its bytes
    # (with one kind of line ending: IMAP servers hand out CRLF, an MTA pipe often LF).
    digest = hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest()
    return f"{digest}@no-message-id.switchboard.invalid"


def _references(message: Message, bounce: Bounce | None) -> tuple[str, ...]:
    """References then In-Reply-To: oldest first, the parent last (RFC 5322 §3.6.4)."""
    found = _ids(_header(message, "References"))
    found += _ids(_header(message, "In-Reply-To"))
    if bounce is not None:  # a bounce belongs with the message that bounced
        found += bounce.message_ids
    newest_last = list(dict.fromkeys(reversed(found)))[::-1]
    return tuple(ref for ref in newest_last[-MAX_REFERENCES:] if len(ref) <= MAX_ID)


def _date(message: Message) -> datetime:
    value = _header(message, "Date")
    if moment := _plain_date(value):
        return moment
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return datetime.now(UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _plain_date(value: str) -> datetime | None:
    """`value` in the plain RFC 5322 form, in UTC; None if it is not (or not a valid date).

    `-0000` (RFC 5322: the local zone is unknown) counts as UTC, as `_date` takes it too.
    """
    match = _PLAIN_DATE.fullmatch(value)
    if match is None:
        return None
    day, month, year, hour, minute, second, sign, zone_h, zone_m = match.groups()
    offset = timedelta(hours=int(zone_h), minutes=int(zone_m))
    try:
        moment = datetime(
            int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute),
            int(second or 0), tzinfo=timezone(-offset if sign == "-" else offset),
        )  # fmt: skip
    except ValueError:  # out of range, such as 31 Feb or 24:00: the general reader decides
        return None
    return moment.astimezone(UTC)


# --- loop and noise protection --------------------------------------------------------------


def auto_generated(message: Message) -> str | None:
    """Why `message` was sent by a machine, or None: the signs RFC 3834 and practice give."""
    submitted = _header(message, "Auto-Submitted").lower()
    if submitted and submitted != "no":
        return f"Auto-Submitted: {submitted}"
    precedence = _header(message, "Precedence").lower()
    if precedence in _BULK_PRECEDENCE:
        return f"Precedence: {precedence}"
    for name in _AUTO_HEADERS:
        if _has_header(message, name):
            return f"{name} header"
    if _has_header(message, "List-Id"):
        return "mailing list (List-Id)"
    if _has_header(message, "Return-Path") and _header(message, "Return-Path") in ("", "<>"):
        return "empty Return-Path (a bounce or notification)"
    if _is_delivery_report(message):
        return "delivery status notification"
    return None


def _is_delivery_report(message: Message) -> bool:
    return (
        message.get_content_type() == "multipart/report"
        and str(message.get_param("report-type", "")).lower() == "delivery-status"
    )


def _bounce(message: Message) -> Bounce | None:
    """The failed recipients of a DSN and the Message-IDs of the messages that bounced."""
    if not _is_delivery_report(message):
        return None
    failed: list[tuple[str, str]] = []
    original: list[str] = []
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/delivery-status":
            failed += _failed_recipients(part)
        elif kind == "text/rfc822-headers":
            headers = HeaderParser(policy=_POLICY).parsestr(_decode(part))
            original += _ids(_header(headers, "Message-ID"))
        elif kind == "message/rfc822" and isinstance(inner := part.get_payload(0), Message):
            original += _ids(_header(inner, "Message-ID"))
    if not failed:
        return None  # a delay or success report: noise, but nothing bounced
    return Bounce(
        message_ids=tuple(dict.fromkeys(original)),
        recipients=tuple(dict.fromkeys(r for r, _ in failed)),
        detail="; ".join(f"{r}: {d}" for r, d in failed)[:2000],
    )


def _failed_recipients(part: Message) -> list[tuple[str, str]]:
    """(recipient, status and diagnostic) of each per-recipient block with Action: failed."""
    payload = part.get_payload()
    blocks = [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []
    failed = []
    for block in blocks:
        if _header(block, "Action").lower() != "failed":
            continue
        recipient = _header(block, "Final-Recipient") or _header(block, "Original-Recipient")
        status = " ".join(
            filter(None, [_header(block, "Status"), _header(block, "Diagnostic-Code")])
        )
        failed.append((recipient.partition(";")[2].strip() or recipient, status))
    return failed


# --- bodies ---------------------------------------------------------------------------------


def _decode(part: Message) -> str:
    """A text part's content, whatever its label says; never fails."""
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    label = _charset(part).strip().lower()
    for charset in filter(None, [_CHARSET_ALIASES.get(label, label), "utf-8"]):
        try:
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    best = charset_normalizer.from_bytes(data).best()
    return str(best) if best is not None else data.decode("utf-8", errors="replace")


def _charset(part: Message) -> str:
    """`get_content_charset()`, from the parsed Content-Type (the policy remembers it per
    value), rather than parsing its parameters again as `get_param` does."""
    value = _raw_header(part, "Content-Type")
    if value is None:
        return ""
    try:
        charset = _POLICY.header_fetch_parse("Content-Type", value).params.get("charset")
    except Exception:  # the header parser trips on some malformed values
        return part.get_content_charset() or ""
    return charset if isinstance(charset, str) and charset.isascii() else ""


def _body_parts(message: EmailMessage) -> tuple[Message | None, Message | None]:
    """The (plain, HTML) body parts (RFC 2046 alternatives, RFC 2387 related)."""
    return message.get_body(preferencelist=("plain",)), message.get_body(preferencelist=("html",))


def _bodies(plain: Message | None, rich: Message | None) -> tuple[str, str | None]:
    """(text, html): the plain part, else text derived from the HTML part."""
    html = _decode(rich) if rich is not None else None
    text = _decode(plain).strip() if plain is not None else ""
    if not text and html is not None:
        text = html_to_text(html)
    return text.replace("\r\n", "\n"), html


def _attachments(message: EmailMessage, bodies: Collection[Message | None]) -> Iterator[MailPart]:
    """Every part but the `bodies`: files, inline images, attached messages."""
    body_ids = {id(body) for body in bodies}
    for n, part in enumerate(_leaves(message), start=1):
        if id(part) in body_ids or part.get_content_type() == "message/delivery-status":
            continue
        yield MailPart(
            filename=_filename(part, n),
            content_type=part.get_content_type(),
            data=_part_bytes(part),
            content_id=next(iter(_ids(_header(part, "Content-ID"))), None),
        )


def _leaves(part: Message) -> Iterator[Message]:
    """Every part that is not a container; an attached message counts as one part."""
    if part.get_content_maintype() == "message" or not part.is_multipart():
        yield part
        return
    for sub in part.get_payload():
        if isinstance(sub, Message):
            yield from _leaves(sub)


def _part_bytes(part: Message) -> bytes:
    if part.get_content_type() == "message/rfc822" and part.is_multipart():
        inner = part.get_payload(0)
        return inner.as_bytes(policy=policy.SMTP) if isinstance(inner, Message) else b""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _filename(part: Message, n: int) -> str:
    try:
        name = part.get_filename()
    except Exception:  # a mangled RFC 2231 parameter: the part is still worth keeping
        name = None
    if name:
        name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return name.replace("/", "_").replace("\\", "_")[:200]
    extension = mimetypes.guess_extension(part.get_content_type()) or ".bin"
    return f"part-{n}{extension}"


def _link_inline_images(html: str, parts: Sequence[MailPart], urls: Sequence[str | None]) -> str:
    """`cid:` references (RFC 2392) → where the inline part is stored."""
    stored = {p.content_id: url for p, url in zip(parts, urls, strict=True) if p.content_id and url}
    if not stored:
        return html

    def replace(match: re.Match[str]) -> str:
        return stored.get(match.group(1), match.group(0))

    return re.sub(r"cid:([^\"'\s>)]+)", replace, html, flags=re.IGNORECASE)


# --- text for people ------------------------------------------------------------------------


class _TextOfHtml(HTMLParser):
    """The readable text of an HTML mail: blocks become lines, quotes become `> ` lines."""

    _SKIPPED = frozenset({"script", "style", "head", "title", "template"})
    _LINES = frozenset({"div", "li", "tr", "section", "article", "header", "footer", "pre"})
    _PARAGRAPHS = frozenset(
        {"p", "blockquote", "ul", "ol", "table", "hr", "h1", "h2", "h3", "h4", "h5", "h6"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = [""]
        self.depth = 0  # blockquote nesting
        self.skipping = 0
        self.space = False  # whitespace seen since the last word

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._block(tag)
        if tag in self._SKIPPED:
            self.skipping += 1
        if tag == "blockquote":
            self.depth += 1
            self.lines[-1] = "> " * self.depth
        if tag == "br":
            self.lines.append("> " * self.depth)
        if tag == "li":
            self.lines[-1] += "- "

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        if tag == "blockquote":
            self.depth = max(0, self.depth - 1)
        self._block(tag)

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        words = " ".join(data.split())
        if words:
            space = self.space or data[:1].isspace()
            self.lines[-1] += (" " if space and _has_text(self.lines[-1]) else "") + words
        self.space = bool(data) and data[-1:].isspace()

    def _block(self, tag: str) -> None:
        """Blocks start on a line of their own; paragraphs also leave a blank line."""
        if tag not in self._LINES and tag not in self._PARAGRAPHS:
            return
        if _has_text(self.lines[-1]):
            self.lines.append("> " * self.depth)
        if tag in self._PARAGRAPHS and len(self.lines) > 1 and _has_text(self.lines[-2]):
            self.lines.append("> " * self.depth)
        self.space = False

    def text(self) -> str:
        lines = [line.rstrip() if _has_text(line) else "" for line in self.lines]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _has_text(line: str) -> bool:
    return bool(line.strip(" >"))


def html_to_text(html: str) -> str:
    reader = _TextOfHtml()
    reader.feed(html)
    reader.close()
    return reader.text()


# Where the quoted history starts in what mail clients write below a reply.
_HISTORY_STARTS = re.compile(
    r"^\s*(-{2,}\s*(Original Message|Ursprüngliche Nachricht|Message d'origine|Originalnachricht)"
    r"\s*-{2,}|_{20,})\s*$|^\s*(From|Von|De):\s.+\n\s*(Sent|Date|Gesendet|Datum|Envoyé)\s*:",
    re.IGNORECASE | re.MULTILINE,
)
# "On Tue, 3 Mar 2026 at 10:01, Anna <anna@example.com> wrote:", "Am … schrieb …:", may wrap.
_ATTRIBUTION = re.compile(
    r"(^|\n)((On|Am|Le|El|Il)\s[^\n]*\n)?"
    r"[^\n]*\b(wrote|schrieb|a écrit|escribió|scrisse)\b[^\n]*:$",
    re.IGNORECASE,
)


_QUOTED_LINES = re.compile(r"((?:^[ \t]*>.*(?:\n|$))+)", re.MULTILINE)


def new_text(body: str) -> str:
    """What the sender wrote this time: `body` without the quoted history below or inside it.

    The full body stays on the event; this is for previews (contact cards, ticket lists).
    """
    history = _HISTORY_STARTS.search(body)
    if history:
        body = body[: history.start()]
    kept: list[str] = []
    # Without a ">" there is no quote to split off.
    for block in _QUOTED_LINES.split(body) if ">" in body else [body]:
        if block.lstrip().startswith(">"):
            # The attribution line belongs to the quote it introduces.
            if kept:
                kept[-1] = _ATTRIBUTION.sub("", kept[-1].rstrip()) + "\n"
            continue
        kept.append(block)
    text = "\n".join(line.rstrip() for line in "".join(kept).splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip()
