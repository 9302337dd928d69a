"""IMAP intake against a real Dovecot: IDLE, polling, order, poison, restarts, UIDVALIDITY.

The gateway runs with a mailbox configured (SWITCHBOARD_MAILBOXES); the tests put mail into
Dovecot with APPEND, as a delivering MTA would, and watch the timeline and the mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from channels.email.imap import AfterIntake, ImapMailbox, Mailbox
from gateway.app import create_app
from gateway.keys import DATABASE
from gateway.mailboxes import POSITION_EVERY, _Position
from gateway.settings import Settings, SettingsError
from tests.dovecot import Dovecot
from tests.gateway.test_email_intake import mail
from timeline.models import InboundJournal, MailboxState, Ticket, TimelineEvent

WITHIN_SECONDS = 30.0
POLL_SECONDS = 0.05


async def gateway(aiohttp_client: Any, settings: Settings, mailbox: Mailbox) -> TestClient:
    client: TestClient = await aiohttp_client(
        create_app(dataclasses.replace(settings, mailboxes=(mailbox,)))
    )
    return client


async def email_events(client: TestClient) -> list[TimelineEvent]:
    async with client.server.app[DATABASE].reading() as session:
        query = select(TimelineEvent).where(TimelineEvent.channel == "email")
        return list((await session.execute(query.order_by(TimelineEvent.id))).scalars())


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until `check()` holds; the workers run on their own, so the test polls."""
    for _ in range(int(WITHIN_SECONDS / POLL_SECONDS)):
        if await check():
            return
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"not within {WITHIN_SECONDS} s: {what}")


async def have_events(client: TestClient, n: int) -> None:
    async def enough() -> bool:
        return len(await email_events(client)) >= n

    await eventually(enough, f"{n} e-mail events on the timeline")


async def test_idle_delivers_new_mail_to_the_mailboxs_queue(
    dovecot: Dovecot, aiohttp_client: Any, settings: Settings
) -> None:
    # Polling once an hour: only IDLE can bring the second message in time.
    mailbox = dovecot.mailbox(queue="sales", poll_seconds=3600)
    client = await gateway(aiohttp_client, settings, mailbox)
    await dovecot.append([mail(message_id="first@example.org")])
    await have_events(client, 1)

    await dovecot.append([mail(sender="bob@example.org", message_id="second@example.org")])
    await have_events(client, 2)

    events = await email_events(client)
    assert [e.external_id for e in events] == ["first@example.org", "second@example.org"]
    assert {e.recipient for e in events} == {"support@switchboard.example"}
    async with client.server.app[DATABASE].reading() as session:
        queues = (await session.execute(select(Ticket.queue))).scalars().all()
    assert queues == ["sales", "sales"]

    async def flagged() -> bool:
        return await dovecot.uids(criteria="SEEN") == [1, 2]

    await eventually(flagged, "both messages flagged \\Seen after the commit")


async def test_without_idle_the_mailbox_is_polled(
    dovecot: Dovecot, aiohttp_client: Any, settings: Settings
) -> None:
    client = await gateway(aiohttp_client, settings, dovecot.mailbox(idle=False, poll_seconds=0.1))
    await dovecot.append([mail(message_id="polled-1@example.org")])
    await have_events(client, 1)

    await dovecot.append([mail(message_id="polled-2@example.org")])

    await have_events(client, 2)


async def test_messages_are_taken_in_uid_order_so_a_thread_stays_one_ticket(
    dovecot: Dovecot, aiohttp_client: Any, settings: Settings
) -> None:
    # Already waiting when the gateway starts: one batch, a reply right behind its original.
    question = mail(message_id="q@example.org")
    answer = mail(
        sender="bob@example.org", message_id="a1@example.org", In_Reply_To="<q@example.org>"
    )
    another = mail(
        sender="eve@example.org",
        message_id="a2@example.org",
        References="<q@example.org> <a1@example.org>",
    )
    await dovecot.append([question, answer, another])

    client = await gateway(aiohttp_client, settings, dovecot.mailbox())
    await have_events(client, 3)

    events = await email_events(client)
    assert [e.external_id for e in events] == ["q@example.org", "a1@example.org", "a2@example.org"]
    assert len({e.ticket_id for e in events}) == 1
    assert len({e.contact_id for e in events}) == 3


async def test_a_poison_message_is_journaled_as_rejected_and_passed_over(
    dovecot: Dovecot, aiohttp_client: Any, settings: Settings
) -> None:
    poison = b"Subject: no sender at all\r\n\r\nThis message has no From header.\r\n"
    await dovecot.append(
        [mail(message_id="good-1@example.org"), poison, mail(message_id="good-2@example.org")]
    )

    client = await gateway(aiohttp_client, settings, dovecot.mailbox())
    await have_events(client, 2)
    await dovecot.append([mail(message_id="good-3@example.org")])
    await have_events(client, 3)

    assert [e.external_id for e in await email_events(client)] == [
        "good-1@example.org",
        "good-2@example.org",
        "good-3@example.org",
    ]
    async with client.server.app[DATABASE].reading() as session:
        rejected = (
            await session.execute(select(InboundJournal).where(InboundJournal.status == "rejected"))
        ).scalar_one()
        state = await session.get(MailboxState, "support")
    assert rejected.reason == "The message has no usable From address."
    assert rejected.payload == poison
    assert state is not None

    async def all_taken() -> bool:
        return await dovecot.uids(criteria="SEEN") == [1, 2, 3, 4]

    await eventually(all_taken, "every message, the poison too, flagged")


async def journal_accepted(client: TestClient) -> int:
    async with client.server.app[DATABASE].reading() as session:
        query = select(func.count()).where(InboundJournal.status == "accepted")
        return int((await session.execute(query)).scalar_one())


async def test_a_crash_between_commit_and_move_neither_loses_nor_duplicates(
    dovecot: Dovecot, aiohttp_client: Any, settings: Settings
) -> None:
    messages = [mail(message_id=f"batch-{n}@example.org") for n in range(5)]
    await dovecot.append(messages)
    # The folder to move to does not exist yet: every move after the commit fails.
    mailbox = dovecot.mailbox(after=AfterIntake.MOVE, move_to="Processed")
    first = await gateway(aiohttp_client, settings, mailbox)
    await have_events(first, 5)
    assert await dovecot.uids("INBOX") == [1, 2, 3, 4, 5], "committed, never moved"
    await first.close()  # the gateway goes down with the batch on the timeline, unmoved

    await dovecot.command("CREATE", "Processed")
    second = await gateway(aiohttp_client, settings, mailbox)

    async def moved() -> bool:
        return len(await dovecot.uids("Processed")) == 5

    await eventually(moved, "all five moved after the restart")
    assert await dovecot.uids("INBOX") == []
    events = await email_events(second)
    assert sorted(e.external_id for e in events) == sorted(
        f"batch-{n}@example.org" for n in range(5)
    )
    assert await journal_accepted(second) == 5


async def test_a_new_uidvalidity_reads_the_mailbox_again_without_duplicates(
    dovecot: Dovecot, aiohttp_client: Any, settings: Settings
) -> None:
    await dovecot.command("CREATE", "Support")
    old = [mail(message_id="old-1@example.org"), mail(message_id="old-2@example.org")]
    await dovecot.append(old, folder="Support")
    mailbox = dovecot.mailbox(folder="Support", idle=False, poll_seconds=0.1)
    client = await gateway(aiohttp_client, settings, mailbox)
    await have_events(client, 2)
    before = await _uidvalidity(client)

    # The mailbox is recreated (a restore, a migration): same mail, new UIDs, new UIDVALIDITY.
    await recreate(dovecot, "Support", [*old, mail(message_id="new@example.org")])
    await have_events(client, 3)

    async def restarted() -> bool:
        return await _uidvalidity(client) != before

    await eventually(restarted, "the new UIDVALIDITY is recorded")
    events = await email_events(client)
    assert sorted(e.external_id for e in events) == [
        "new@example.org",
        "old-1@example.org",
        "old-2@example.org",
    ]


async def recreate(dovecot: Dovecot, folder: str, messages: list[bytes]) -> None:
    """Delete `folder` and create it anew with `messages`.

    While the gateway's session still has the old folder selected, Dovecot may refuse an
    APPEND right after the CREATE ("Mailbox was deleted under us"): then all over again.
    """
    await dovecot.command("DELETE", folder)
    for _ in range(5):
        await dovecot.command("CREATE", folder)
        try:
            await dovecot.append(messages, folder=folder)
            return
        except AssertionError as error:
            if "deleted under us" not in str(error):
                raise
        await asyncio.sleep(0.2)
        with contextlib.suppress(AssertionError):  # unless it is gone already
            await dovecot.command("DELETE", folder)
    raise AssertionError(f"Dovecot kept refusing mail for the new {folder}")


async def _uidvalidity(client: TestClient) -> int | None:
    async with client.server.app[DATABASE].reading() as session:
        state = await session.get(MailboxState, "support")
        return state.uidvalidity if state else None


def test_mailboxes_are_configured_as_a_json_list() -> None:
    settings = Settings.from_env(
        {
            "SWITCHBOARD_MAILBOXES": """[
                {"name": "support", "host": "imap.example.com", "username": "support@example.com",
                 "password": "s3cret", "queue": "support"},
                {"name": "billing", "host": "imap.example.com", "port": 143, "tls": false,
                 "username": "billing", "password": "x", "after": "move", "move_to": "Done",
                 "idle": false, "poll_seconds": 30}
            ]"""
        }
    )

    support, billing = settings.mailboxes
    assert (support.server_port, support.tls, support.folder) == (993, True, "INBOX")
    assert (support.queue, support.after, support.flag) == ("support", AfterIntake.FLAG, "\\Seen")
    assert (billing.server_port, billing.after, billing.move_to) == (143, AfterIntake.MOVE, "Done")
    assert (billing.idle, billing.poll_seconds, billing.queue) == (False, 30, "default")


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        '{"name": "support"}',
        '[{"name": "a", "host": "h", "username": "u"}]',
        '[{"name": "a", "host": "h", "username": "u", "password": "p", "colour": "red"}]',
        '[{"name": "a", "host": "h", "username": "u", "password": "p", "after": "move"}]',
        '[{"name": "a", "host": "h", "username": "u", "password": "p", "after": "burn"}]',
        '[{"name": "a", "host": "h", "username": "u", "password": "p"},'
        ' {"name": "a", "host": "h2", "username": "u", "password": "p"}]',
    ],
)
def test_unusable_mailbox_settings_are_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match="SWITCHBOARD_MAILBOXES"):
        Settings.from_env({"SWITCHBOARD_MAILBOXES": raw})


async def test_a_mailbox_is_read_over_tls_trusting_the_ca_it_is_given(
    dovecot_tls: Dovecot, aiohttp_client: Any, settings: Settings
) -> None:
    mailbox = dovecot_tls.mailbox()
    assert mailbox.tls and mailbox.ca_file
    await dovecot_tls.append([mail(message_id="secret@example.org")])

    client = await gateway(aiohttp_client, settings, mailbox)

    await have_events(client, 1)


async def test_a_certificate_nobody_vouched_for_is_refused(
    dovecot_tls: Dovecot, aiohttp_client: Any, settings: Settings
) -> None:
    await dovecot_tls.append([mail(message_id="never@example.org")])
    untrusted = dovecot_tls.mailbox(ca_file=None)

    imap = ImapMailbox(untrusted)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await imap.open()
    finally:
        await imap.close()


async def test_a_pass_writes_its_position_every_few_batches_and_at_its_end() -> None:
    written: list[tuple[str, int, int]] = []

    class Writer:
        async def run(self, work: object, name: str, uidvalidity: int, uid: int) -> None:
            await asyncio.sleep(0)
            written.append((name, uidvalidity, uid))

    position = _Position(Writer(), "support", 7)  # type: ignore[arg-type]
    last = 2 * POSITION_EVERY + 5
    for uid in range(1, last + 1):
        position.advance(uid)
        await asyncio.sleep(0)
    await position.settle()

    assert [uid for _, _, uid in written] == [POSITION_EVERY, 2 * POSITION_EVERY, last]
    assert {(name, validity) for name, validity, _ in written} == {("support", 7)}
