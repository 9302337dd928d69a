"""E-mail parsing: each real-shaped message in tests/fixtures/email/ → the fields that matter.

One row per fixture: what the parser must make of what that mail client sends. Fields left
out of a row are not checked for it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from channels import InvalidPayload
from channels.email import inbound
from channels.email.inbound import html_to_text, new_text, parse

FIXTURES = Path(__file__).parent.parent / "fixtures" / "email"

EXPECTED: dict[str, dict[str, Any]] = {
    "outlook_reply_aw": {
        "message_id": "AM9PR08MB6148B0E6C2F1F4E2D3A1B2C3A9E12"
        "@AM9PR08MB6148.eurprd08.prod.outlook.com",
        "sender": ("j.mueller@mueller-bau.de", "Jürgen Müller"),
        "subject": "AW: [#10001] Rechnung 2026-0142 führt zu Rückfrage",
        "ticket_number": 10001,
        # Outlook sends In-Reply-To but no References.
        "references": ("sb.10001.1.7f3a9c@switchboard.example",),
        "text_contains": ["Mit freundlichen Grüßen", "Von: Switchboard Support"],
        "preview": "Hallo Frau Schneider,\n\nvielen Dank. Die Gutschrift ist bei uns angekommen, "
        "die Sache ist damit erledigt.\n\nMit freundlichen Grüßen\nJürgen Müller",
        "auto_generated": None,
    },
    "outlook_forward_wg": {
        "subject": "WG: Lieferung KW 10 fehlt",
        "ticket_number": None,
        "references": (),
        "text_contains": ["Die Bestellung 4417 ist nicht eingetroffen."],
        "preview": "Könnten Sie sich darum kümmern? Die Lieferung ist bis heute nicht da.\n\n"
        "VG\nPetra Schneider",
    },
    "gmail_reply": {
        "message_id": "CAJx9oK3n+Wq7Yb2=reply-two@mail.gmail.com",
        "ticket_number": 10002,
        # References (oldest first), then In-Reply-To: the parent is the newest, last.
        "references": (
            "CAJx9oK1jzZc2Q+first@mail.gmail.com",
            "sb.10002.1.a81b2c@switchboard.example",
        ),
        "text_contains": ["I'm in again 🙂", "> we sent you a new reset link"],
        "preview": "Thanks, the new link worked. I'm in again 🙂\n\nAnna",
        "html_contains": ["gmail_quote"],
        "recipient": "support@switchboard.example",
    },
    "apple_mail_inline_image": {
        "sender": ("tomas.ferreira@icloud.com", "Tomás Ferreira"),
        "attachments": [("IMG_4242.png", "image/png", "F1E2D3C4-B5A6-4978-8695-A4B3C2D1E0F9")],
        "text_contains": ["error E42"],
    },
    "forwarded_as_attachment": {
        "subject": "Fwd: Your order 88123 has shipped",
        "text_contains": ["does not work"],
        "attachments": [("Your order 88123 has shipped.eml", "message/rfc822", None)],
    },
    "dsn_bounce": {
        "auto_generated": "Auto-Submitted: auto-replied",
        "bounce": (
            ("sb.10003.2.c0ffee@switchboard.example",),
            ("no.such.user@mueller-bau.de",),
            "5.1.1",
        ),
        # A bounce threads to the message that bounced.
        "references": ("sb.10003.2.c0ffee@switchboard.example",),
    },
    "out_of_office": {
        "auto_generated": "Auto-Submitted: auto-generated",
        "ticket_number": 10004,
        "text_contains": ["nicht im Büro"],
    },
    "newsletter": {
        "subject": "📦 20% off toner this week",
        "auto_generated": "Precedence: bulk",
        "text": "20% off toner\n\nAll week long, every cartridge.\n\nShop now",
    },
    "iso_8859_1": {
        "sender": ("francoise.levesque@orange.fr", "Françoise Lévesque"),
        "subject": "Problème de connexion à l'espace client",
        "text_contains": ["« accès refusé »", "Françoise Lévesque"],
    },
    "windows_1252": {
        # Labelled ISO-8859-1, written in windows-1252: the euro sign and curly quotes survive.
        "text_contains": ["€129.00 instead of €99.00 \u2013 the “loyalty” discount"],
    },
    "unknown_charset": {
        "sender": ("olga.smirnova@mail.example.ru", "Ольга Смирнова"),
        "subject": "Order status 5521",
        "text_contains": ["Здравствуйте!", "номер 5521"],
    },
    "html_only_scripts": {
        "text": "Hello, my account 12345 is locked.\n\nClick for details or help\n\n"
        "Thanks, Mallory",
        # The parser keeps what was sent; the event sanitises it (see the ingest tests).
        "html_contains": ["<script>"],
    },
    "nested_multipart": {
        "text_contains": ["signed renewal"],
        "attachments": [
            ("part-3.png", "image/png", "logo.part1@raman-consulting.in"),
            ("Verlängerung 2026.pdf", "application/pdf", None),
            ("seats.csv", "text/csv", None),
        ],
    },
    "no_message_id": {
        "message_id_endswith": "@no-message-id.switchboard.invalid",
        "sender": ("alarm-panel@kaufhaus-linde.de", None),
    },
    "long_headers": {
        "message_id": "long-headers-20260318@verein-sonnenschein.de",
        "subject_startswith": "Sehr lange Betreffzeile mit Umlauten äöü Teil 0",
        "subject_length": 500,
        "references_count": 50,
        "references_last": "sb.10005.3.feed42@switchboard.example",
    },
}


def _fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.eml").read_bytes()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_parses_as_expected(name: str) -> None:
    expected = EXPECTED[name]
    mail = parse(_fixture(name))

    simple = {
        "message_id": mail.message_id,
        "subject": mail.subject,
        "ticket_number": mail.thread.ticket_number,
        "references": mail.thread.references,
        "preview": mail.preview,
        "text": mail.text,
        "auto_generated": mail.auto_generated,
        "recipient": mail.recipient,
        "sender": (mail.sender.raw, mail.sender.name),
        "attachments": [(a.filename, a.content_type, a.content_id) for a in mail.attachments],
    }
    for field, value in expected.items():
        if field in simple:
            assert simple[field] == value, field
    for fragment in expected.get("text_contains", []):
        assert fragment in mail.text
    for fragment in expected.get("html_contains", []):
        assert mail.html is not None and fragment in mail.html
    if "bounce" in expected:
        ids, recipients, status = expected["bounce"]
        assert mail.bounce is not None
        assert (mail.bounce.message_ids, mail.bounce.recipients) == (ids, recipients)
        assert status in mail.bounce.detail
    if "message_id_endswith" in expected:
        assert mail.message_id.endswith(expected["message_id_endswith"])
    if "subject_startswith" in expected:
        assert mail.subject is not None
        assert mail.subject.startswith(expected["subject_startswith"])
        assert len(mail.subject) == expected["subject_length"]
    if "references_count" in expected:
        assert len(mail.thread.references) == expected["references_count"]
        assert mail.thread.references[-1] == expected["references_last"]


def test_every_fixture_has_a_row() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.eml")) == sorted(EXPECTED)


def test_only_machine_made_mail_declines_to_open_a_ticket() -> None:
    for name in EXPECTED:
        mail = parse(_fixture(name))
        assert mail.thread.opens_ticket == (mail.auto_generated is None), name


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Auto-Submitted: auto-replied", "Auto-Submitted: auto-replied"),
        ("Precedence: junk", "Precedence: junk"),
        ("Precedence: list", "Precedence: list"),
        ("X-Autoreply: yes", "X-Autoreply header"),
        ("X-Auto-Response-Suppress: OOF", "X-Auto-Response-Suppress header"),
        ("List-Id: <users.lists.example.org>", "mailing list (List-Id)"),
        ("Return-Path: <>", "empty Return-Path (a bounce or notification)"),
    ],
)
def test_loop_and_noise_signs(header: str, reason: str) -> None:
    raw = f"From: a@example.org\nMessage-ID: <n@example.org>\n{header}\n\nhello\n".encode()
    assert parse(raw).auto_generated == reason


def test_auto_submitted_no_is_a_person() -> None:
    raw = b"From: a@example.org\nAuto-Submitted: no\nPrecedence: first-class\n\nhello\n"
    assert parse(raw).auto_generated is None


def test_a_message_without_message_id_gets_the_same_id_every_time() -> None:
    raw = _fixture("no_message_id")
    # IMAP servers hand the message out with CRLF line endings, MTA pipes often with LF.
    assert parse(raw).message_id == parse(raw.replace(b"\n", b"\r\n")).message_id
    assert parse(raw).message_id != parse(raw + b"one more line\n").message_id


@pytest.mark.parametrize(
    "raw",
    [b"", b"   \n", b"just some words, not a message", b"Subject: no sender\n\nhello\n"],
)
def test_unreadable_messages_are_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidPayload):
        parse(raw)


def _shape(message: Any) -> tuple[Any, ...]:
    """What the standard library's parser makes of a message, to compare it whole."""
    payload = message.get_payload()
    parts = [_shape(part) for part in payload] if message.is_multipart() else payload
    defects = [type(defect) for defect in message.defects]
    return (type(message), message._headers, parts, defects, message.get_unixfrom(),
            message.get_default_type(), message.preamble, message.epilogue)  # fmt: skip


@pytest.mark.parametrize(
    "raw",
    [
        *(path.read_bytes() for path in sorted(FIXTURES.glob("*.eml"))),
        b"Subject: x\r\nX-Folded: a\r\n  b\r\n\r\nbody\r\n",
        b"Subject: x\n\nbody\n",
        b"Subject: \xe4\xf6\r\n\r\n\xff body",
        b"Subject: x\n\n",
        b"X: y\r\n\n\r\nz",
        # What the feedparser reads with a defect or specially: left to it.
        b"From someone\nSubject: x\n\nb",
        b": x\n\nb",
        b" continued\nSubject: x\n\nb",
        b"Subject: x\r\nno header\r\n\r\nb",
        b"Subject: x\r\r\nb",
        b"Subject: a\rb\r\n\r\nc",
        b"\n\nbody",
        b"Subject: no empty line",
        # Multiparts: preamble, epilogue, blanks after a boundary, parts without headers.
        b"Content-Type: Multipart/Mixed; boundary=x\n\n--x\nA: b\n\nc\n--x--\n",
        b"Content-Type:\n multipart/mixed; boundary=x\n\n--x\n\nc\n--x--\n",
        b'Content-Type: multipart/alternative; boundary="a.b+(c)?"\r\n\r\npreamble\r\n\r\n'
        b"--a.b+(c)? \t\r\nContent-Type: text/plain\r\n\r\nline\r\n\r\n--a.b+(c)?\r\n"
        b"Content-Type: text/html\r\n\r\n<p>x</p>\r\n--a.b+(c)?--  \r\nepilogue\r\n--a.b+(c)?\r\n",
        b"Content-Type: multipart/mixed; boundary=x\n\n--x\n\n\n--x--",
        b"Content-Type: multipart/mixed; boundary=x\n\n--x\n\nc\n--x--\n\n\nafter\n",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nc\r--x--\r",
        # ... and what the feedparser reads with a defect or specially.
        b"Content-Type: multipart/mixed; boundary=x\n\n--x\n\nc\n",
        b"Content-Type: multipart/mixed; boundary=x\n\n--x--\n",
        b"Content-Type: multipart/mixed; boundary=x\n\nno boundary\n",
        b"Content-Type: multipart/mixed; boundary=x\n\n--x\n--x\n\nc\n--x--\n",
        b"Content-Type: multipart/mixed; boundary=x\n\n--x\nA: b\n--x--\n",
        b"Content-Type: multipart/mixed; boundary=x\n\n--xy\n\nc\n--x--\n",
        b"Content-Type: multipart/mixed\n\n--x\n\nc\n--x--\n",
        b"Content-Type: multipart/mixed; boundary=x\nContent-Transfer-Encoding: base64\n\n"
        b"--x\n\nc\n--x--\n",
        b"Content-Type: multipart/digest; boundary=x\n\n--x\n\nA: b\n\nc\n--x--\n",
        b"Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: multipart/mixed;"
        b" boundary=y\n\n--y\n\nc\n--y--\n--x--\n",
        b"Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: message/rfc822\n\n"
        b"Subject: inner\n\nb\n--x--\n",
        b"Content-Type: message/rfc822\n\nSubject: inner\n\nb",
    ],
)
def test_a_message_is_read_as_the_standard_library_parser_reads_it(raw: bytes) -> None:
    assert _shape(inbound._read_message(raw)) == _shape(inbound._parser.parsebytes(raw))


def test_undecodable_header_bytes_become_replacement_characters() -> None:
    raw = b"From: a@example.org\nSubject: Gr\xfc\xdfe \xff\n\nhello\n"
    assert parse(raw).subject == "Gr\ufffd\ufffde \ufffd"


@pytest.mark.parametrize(
    ("headers", "sender", "subject"),
    [
        # Plain ASCII is only unfolded; encoded words (RFC 2047) go through the policy.
        (
            'From: "Doe, John" <john@example.org>\nSubject: Order  42\n  arrived',
            ("john@example.org", "Doe, John"),
            "Order 42 arrived",
        ),
        (
            "From: =?utf-8?q?J=C3=B6rg?= <j@example.org>\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=",
            ("j@example.org", "Jörg"),
            "Grüße",
        ),
        # The old style of naming the sender in a comment (RFC 822 `addr (Name)`).
        (
            "From: anna@example.org (Anna Lindqvist)\nSubject: hi",
            ("anna@example.org", "Anna Lindqvist"),
            "hi",
        ),
        # The plain forms most mail has, read directly, and near misses read in full.
        (
            "From: Customer 7 <customer7@bench.example>",
            ("customer7@bench.example", "Customer 7"),
            None,
        ),
        ("From: a.b+tag@mail.example.org", ("a.b+tag@mail.example.org", None), None),
        ("From: Anna<anna@example.org>", ("anna@example.org", "Anna"), None),
        ("From: Anna   Lind <anna@example.org>", ("anna@example.org", "Anna Lind"), None),
        ("From: J. R. Smith <jrs@example.org>", ("jrs@example.org", "J. R. Smith"), None),
        ("From: <a..b@example.org>", ("a..b@example.org", None), None),
    ],
)
def test_sender_and_subject_read_plain_or_encoded(
    headers: str, sender: tuple[str, str | None], subject: str | None
) -> None:
    mail = parse(f"{headers}\nMessage-ID: <h@example.org>\n\nhello\n".encode())
    assert (mail.sender.raw, mail.sender.name) == sender
    assert mail.subject == subject


@pytest.mark.parametrize(
    ("date", "utc"),
    [
        ("Sat, 5 Dec 2026 08:00:00 +0100", datetime(2026, 12, 5, 7, 0, tzinfo=UTC)),
        ("5 Dec 2026 08:00 -0230", datetime(2026, 12, 5, 10, 30, tzinfo=UTC)),
        # -0000: the sender's zone is unknown (RFC 5322 §3.3), taken as UTC.
        ("Fri, 13 Mar 2026 11:05:09 -0000", datetime(2026, 3, 13, 11, 5, 9, tzinfo=UTC)),
        # A zone comment, an obsolete zone name, a two-digit year: the general reader.
        ("Tue, 10 Mar 2026 09:00:03 +0100 (CET)", datetime(2026, 3, 10, 8, 0, 3, tzinfo=UTC)),
        ("Tue, 10 Mar 2026 09:00:03 EST", datetime(2026, 3, 10, 14, 0, 3, tzinfo=UTC)),
        ("10 Mar 26 09:00:03 +0000", datetime(2026, 3, 10, 9, 0, 3, tzinfo=UTC)),
    ],
)
def test_the_date_is_read_in_utc_whatever_its_form(date: str, utc: datetime) -> None:
    raw = f"From: a@example.org\nDate: {date}\n\nhello\n".encode()
    assert parse(raw).occurred_at == utc


@pytest.mark.parametrize("date", ["31 Feb 2026 10:00:00 +0000", "Sat, 5 Dec 2026 24:00:00 +0000"])
def test_an_impossible_date_is_taken_as_the_moment_of_reading(date: str) -> None:
    raw = f"From: a@example.org\nDate: {date}\n\nhello\n".encode()
    assert abs(parse(raw).occurred_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_the_recipient_is_the_mailbox_it_arrived_in_when_known() -> None:
    mail = parse(_fixture("long_headers"), recipient="support@switchboard.example")
    assert mail.recipient == "support@switchboard.example"


def test_inline_images_point_at_their_stored_copy_and_the_html_is_sanitised() -> None:
    mail = parse(_fixture("nested_multipart"))
    urls = ["/api/v1/attachments/logo", "/api/v1/attachments/pdf", None]

    event = mail.event(urls, queue="sales")

    assert event.html is not None
    assert '<img src="/api/v1/attachments/logo">' in event.html
    assert [a.url for a in event.attachments] == urls
    assert [a.size for a in event.attachments] == [70, 78, 25]
    assert event.queue == "sales"
    assert event.preview == mail.preview


def test_event_html_keeps_no_executable_markup() -> None:
    html = parse(_fixture("html_only_scripts")).event().html or ""
    for forbidden in ("<script", "onerror", "onload", "onclick", "javascript:", "<iframe", "<form"):
        assert forbidden not in html.lower()
    assert "<b>12345</b>" in html


@pytest.mark.parametrize(
    ("body", "new"),
    [
        pytest.param("Yes, thanks!\n\n> Did it work?\n", "Yes, thanks!", id="quote-below"),
        pytest.param(
            "Fine.\n\nOn Tue, 3 Mar 2026 at 10:01, Maria <\nsupport@example.com> wrote:\n> Hi\n",
            "Fine.",
            id="wrapped-attribution",
        ),
        pytest.param(
            "Passt.\n\nAm 03.03.2026 um 10:01 schrieb Maria <support@example.com>:\n> Hallo\n",
            "Passt.",
            id="german-attribution",
        ),
        pytest.param(
            "> Which model?\nThe X200.\n> And the serial?\nSN-4242\n",
            "The X200.\nSN-4242",
            id="inline-answers",
        ),
        pytest.param(
            "See below.\n\n-----Original Message-----\nFrom: Maria\nSent: Monday\n\nold text\n",
            "See below.",
            id="outlook-original-message",
        ),
        pytest.param(
            "Ok.\n\nFrom: Maria <support@example.com>\nSent: Monday, 2 March 2026 16:02\n\nold\n",
            "Ok.",
            id="outlook-header-block",
        ),
        pytest.param("No history at all.", "No history at all.", id="nothing-quoted"),
    ],
)
def test_new_text_leaves_out_the_quoted_history(body: str, new: str) -> None:
    assert new_text(body) == new


def test_html_to_text_reads_like_the_mail_and_marks_quotes() -> None:
    html = (
        "<html><head><title>t</title><style>p{}</style></head><body><p>Hi &amp; thanks,</p>"
        "<ul><li>one</li><li>two</li></ul><blockquote><p>older</p></blockquote>"
        "<script>alert(1)</script></body></html>"
    )
    assert html_to_text(html) == "Hi & thanks,\n\n- one\n- two\n\n> older"
