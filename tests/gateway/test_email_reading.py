"""Reading mail for IMAP intake: in parser processes, and over the reading connection.

The parser processes must give what reading in place gives, in the order asked; the reading
connection must never make a message look gone that the mailbox still has (that would lose
it: intake takes a message it cannot find as deleted meanwhile).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from channels.email import inbound
from channels.email.imap import Fetched, ImapError, ImapMailbox, _fetched
from gateway.email_parsers import _SAMPLE, EmailParsers, Unreadable, read
from tests.dovecot import Dovecot
from tests.gateway.test_email_intake import mail
from timeline.attachments import AttachmentStore

POISON = b"Subject: no sender at all\r\n\r\nThis message has no From header.\r\n"


async def test_parser_processes_read_as_in_place_in_the_order_given(tmp_path: Path) -> None:
    attachments = AttachmentStore(tmp_path, 1_000_000)
    raws = [mail(message_id=f"p{n}@example.org", subject=f"Order {n}") for n in range(7)]
    raws.insert(3, POISON)
    parsers = EmailParsers(attachments, processes=2)
    await parsers.start()
    try:
        found = await parsers.read_many(raws, recipient="support@example.org", queue="sales")
    finally:
        await parsers.stop()

    assert found[3] == Unreadable("invalid_email", "The message has no usable From address.")
    good = [raw for raw in raws if raw is not POISON]
    expected = [
        read(raw, attachments, recipient="support@example.org", queue="sales") for raw in good
    ]
    assert [f for f in found if not isinstance(f, Unreadable)] == expected
    assert [f.event.external_id for f in expected] == [f"p{n}@example.org" for n in range(7)]


def test_the_warm_up_sample_takes_the_paths_real_mail_takes() -> None:
    parsed = inbound.parse(_SAMPLE)

    assert parsed.html is not None and "Grüße" in parsed.html
    assert [part.filename for part in parsed.attachments] == ["scan.pdf"]
    assert parsed.thread.references == ("root@example.invalid", "parent@example.invalid")
    assert parsed.preview == "Grüße" != parsed.text


def test_a_message_is_paired_with_its_uid_before_or_after_it() -> None:
    data = [
        (b"1 (UID 7 BODY[] {5}", b"first"),
        b")",
        (b"2 (BODY[] {6}", b"second"),
        b" UID 9)",
    ]
    assert _fetched(data) == [Fetched(7, b"first"), Fetched(9, b"second")]


async def test_what_the_reader_misses_but_the_mailbox_has_is_an_error(dovecot: Dovecot) -> None:
    await dovecot.append([mail(message_id="a@example.org"), mail(message_id="b@example.org")])
    imap = ImapMailbox(dovecot.mailbox())
    try:
        await imap.open()
        assert [f.uid for f in await imap.fetch([1, 2])] == [1, 2]

        reader = imap._reader
        assert reader is not None
        everything = reader.fetch
        reader.fetch = lambda uids: everything(uids)[:1]  # type: ignore[method-assign]
        with pytest.raises(ImapError, match="not found that are there"):
            await imap.fetch([1, 2])
    finally:
        await imap.close()


async def test_mail_that_arrived_after_the_reader_looked_is_fetched(dovecot: Dovecot) -> None:
    await dovecot.append([mail(message_id="a@example.org")])
    imap = ImapMailbox(dovecot.mailbox())
    try:
        await imap.open()
        assert [f.uid for f in await imap.fetch([1])] == [1]
        await dovecot.append([mail(message_id="b@example.org"), mail(message_id="c@example.org")])

        assert [f.uid for f in await imap.fetch([1, 2, 3])] == [1, 2, 3]
    finally:
        await imap.close()


async def test_a_message_deleted_meanwhile_is_simply_absent(dovecot: Dovecot) -> None:
    await dovecot.append([mail(message_id="a@example.org"), mail(message_id="b@example.org")])
    imap = ImapMailbox(dovecot.mailbox())
    try:
        await imap.open()
        client = await dovecot.connect()
        try:
            await client.select("INBOX")
            await client.uid("store", "2", "+FLAGS.SILENT (\\Deleted)")
            await client.expunge()
        finally:
            await client.logout()

        assert [f.uid for f in await imap.fetch([1, 2])] == [1]
    finally:
        await imap.close()
