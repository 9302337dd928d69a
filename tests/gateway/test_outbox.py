"""The outbox: retries, failures, dead letters, crash recovery and several senders on one database.

Messages go to a real SMTP server (aiosmtpd); the outbox rows are written straight through the
store (the reply API is tested in test_email_replies.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from channels.email.imap import Mailbox
from channels.email.outbound import EmailSender, SentFolder
from channels.sending import Reply, Thread
from gateway.outbox import OutboxPolicy, OutboxWorker, RateLimit, backoff
from gateway.settings import Settings, SettingsError
from tests.smtp_peer import SmtpPeer, account_for
from timeline import outbox
from timeline.db import Database
from timeline.models import Contact, Identity, OutboxMessage, OutboxStatus, TimelineEvent
from timeline.outbox import INTERRUPTED, NewOutbound

FAST = OutboxPolicy(
    max_attempts=3, backoff_base=0.01, backoff_max=0.05, poll_interval=0.1, lease=30
)


@pytest.fixture
async def workers() -> AsyncIterator[list[OutboxWorker]]:
    """Workers a test started; stopped at its end."""
    started: list[OutboxWorker] = []
    yield started
    for worker in started:
        await worker.stop()


async def start(
    workers: list[OutboxWorker], db: Database, peer: SmtpPeer, policy: OutboxPolicy = FAST
) -> OutboxWorker:
    worker = OutboxWorker(db, {"email": EmailSender(account_for(peer))}, policy)
    await worker.start()
    workers.append(worker)
    return worker


def new_email(peer: SmtpPeer, key: str, to: str = "anna@example.de") -> NewOutbound:
    draft = EmailSender(account_for(peer)).draft(
        Reply(to, f"Answer {key}"), Thread(10001, "Printer broken")
    )
    return NewOutbound(
        channel="email",
        idempotency_key=key,
        recipient=to,
        sender=draft.sender,
        payload=draft.payload,
        external_id=draft.external_id,
        ticket_id=None,
        contact_id=None,
        text=draft.text,
        subject=draft.subject,
    )


async def enqueue(db: Database, new: NewOutbound) -> OutboxMessage:
    enqueued = await db.run(outbox.enqueue, new)
    return enqueued.message


async def row(db: Database, outbox_id: int) -> OutboxMessage:
    async with db.reading() as session:
        found = await session.get(OutboxMessage, outbox_id)
    assert found is not None
    return found


async def event_of(db: Database, message: OutboxMessage) -> TimelineEvent:
    async with db.reading() as session:
        found = await session.get(TimelineEvent, message.event_id)
    assert found is not None
    return found


async def settled(db: Database, outbox_id: int, within: float = 15.0) -> OutboxMessage:
    """The row once it left queued/sending."""
    async with asyncio.timeout(within):
        while (current := await row(db, outbox_id)).status in ("queued", "sending"):  # noqa: ASYNC110 - a row in another process's hands, polled
            await asyncio.sleep(0.02)
    return current


async def test_a_queued_message_is_sent_and_its_event_says_so(
    db: Database, smtp_peer: SmtpPeer, workers: list[OutboxWorker]
) -> None:
    message = await enqueue(db, new_email(smtp_peer, "k1"))
    assert (await event_of(db, message)).delivery_status == "queued"

    await start(workers, db, smtp_peer)

    sent = await settled(db, message.id)
    assert (sent.status, sent.attempts, sent.last_error) == ("sent", 1, None)
    assert sent.sent_at is not None
    [received] = await smtp_peer.wait_for(1)
    event = await event_of(db, message)
    assert received["Message-ID"] == f"<{event.external_id}>" == f"<{sent.provider_id}>"
    assert (event.direction, event.delivery_status) == ("out", "sent")


async def test_an_enqueue_wakes_a_running_worker_long_before_its_next_poll(
    db: Database, smtp_peer: SmtpPeer, workers: list[OutboxWorker]
) -> None:
    worker = await start(workers, db, smtp_peer, OutboxPolicy(poll_interval=3600))
    await asyncio.sleep(0.05)  # the worker has looked and gone to sleep

    message = await enqueue(db, new_email(smtp_peer, "k1"))
    worker.wake()

    assert (await settled(db, message.id)).status == "sent"


async def test_a_greylisted_message_is_retried_with_backoff_then_sent_once(
    db: Database, smtp_peer: SmtpPeer, workers: list[OutboxWorker]
) -> None:
    smtp_peer.refuse_next("451 4.7.1 Greylisted, please try again", times=2)
    message = await enqueue(db, new_email(smtp_peer, "k1"))

    await start(workers, db, smtp_peer)

    sent = await settled(db, message.id)
    assert (sent.status, sent.attempts) == ("sent", 3)
    assert smtp_peer.attempts == 3
    assert len(await smtp_peer.wait_for(1)) == 1


async def test_a_permanent_refusal_fails_at_once_with_the_servers_reason(
    db: Database, smtp_peer: SmtpPeer, workers: list[OutboxWorker]
) -> None:
    smtp_peer.refuse_next("550 5.1.1 <anna@example.de>: Recipient address rejected")
    message = await enqueue(db, new_email(smtp_peer, "k1"))

    await start(workers, db, smtp_peer)

    failed = await settled(db, message.id)
    assert (failed.status, failed.attempts) == ("failed", 1)
    assert failed.last_error is not None and failed.last_error.startswith("550 5.1.1")
    event = await event_of(db, message)
    assert (event.delivery_status, event.delivery_detail) == ("failed", failed.last_error)
    assert smtp_peer.attempts == 1 and smtp_peer.messages == []


async def test_after_the_last_allowed_attempt_a_message_is_dead_and_a_person_can_retry_it(
    db: Database, smtp_peer: SmtpPeer, workers: list[OutboxWorker]
) -> None:
    smtp_peer.refuse_next("421 4.3.2 System not accepting network messages", times=3)
    message = await enqueue(db, new_email(smtp_peer, "k1"))
    worker = await start(workers, db, smtp_peer)

    dead = await settled(db, message.id)
    assert (dead.status, dead.attempts) == ("dead", FAST.max_attempts)
    assert dead.last_error is not None and "421 4.3.2" in dead.last_error
    assert (await event_of(db, message)).delivery_status == "failed"
    assert [m.id for m in await db.read(outbox.listing, ["dead"], limit=10)] == [message.id]

    assert await db.run(outbox.requeue, message.id) is not None
    worker.wake()

    sent = await settled(db, message.id)
    assert (sent.status, sent.attempts) == ("sent", 1)
    assert len(await smtp_peer.wait_for(1)) == 1


async def test_only_failed_and_dead_messages_can_be_retried(
    db: Database, smtp_peer: SmtpPeer
) -> None:
    message = await enqueue(db, new_email(smtp_peer, "k1"))

    assert await db.run(outbox.requeue, message.id) is None
    assert await db.run(outbox.requeue, message.id + 1000) is None


async def test_an_idempotency_key_seen_before_answers_the_first_row_and_stores_nothing(
    db: Database, smtp_peer: SmtpPeer
) -> None:
    first = await db.run(outbox.enqueue, new_email(smtp_peer, "same"))
    again = await db.run(outbox.enqueue, new_email(smtp_peer, "same"))

    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.message.id == first.message.id
    assert again.event is not None and first.event is not None
    assert again.event.id == first.event.id
    async with db.reading() as session:
        rows = (await session.execute(select(OutboxMessage))).scalars().all()
        events = (await session.execute(select(TimelineEvent))).scalars().all()
    assert (len(rows), len(events)) == (1, 1)


async def test_an_email_cut_off_by_a_crash_is_sent_again_under_the_same_message_id(
    db: Database, smtp_peer: SmtpPeer, workers: list[OutboxWorker]
) -> None:
    message = await enqueue(db, new_email(smtp_peer, "k1"))
    # A process claimed it and died mid-send: the row is `sending` and its lease has run out.
    [claimed] = await db.run(outbox.claim, "email", limit=10, lease=timedelta(0), resendable=True)

    await start(workers, db, smtp_peer)

    sent = await settled(db, message.id)
    assert (sent.status, sent.attempts) == ("sent", 2)
    [received] = await smtp_peer.wait_for(1)
    assert received["Message-ID"] == f"<{claimed.payload['message_id']}>"
    assert claimed.payload["message_id"] == (await event_of(db, message)).external_id


async def test_a_message_of_a_channel_that_cannot_resend_safely_fails_as_interrupted(
    db: Database, smtp_peer: SmtpPeer
) -> None:
    message = await enqueue(db, new_email(smtp_peer, "k1"))
    await db.run(outbox.claim, "email", limit=10, lease=timedelta(0), resendable=False)

    again = await db.run(outbox.claim, "email", limit=10, lease=timedelta(0), resendable=False)

    assert again == []
    failed = await row(db, message.id)
    assert (failed.status, failed.last_error) == ("failed", INTERRUPTED)
    assert (await event_of(db, message)).delivery_status == "failed"


async def test_a_running_senders_lease_keeps_its_row_from_everyone_else(
    db: Database, smtp_peer: SmtpPeer
) -> None:
    await enqueue(db, new_email(smtp_peer, "k1"))
    lease = timedelta(minutes=5)
    [claimed] = await db.run(outbox.claim, "email", limit=10, lease=lease, resendable=True)

    assert await db.run(outbox.claim, "email", limit=10, lease=lease, resendable=True) == []
    assert await db.run(outbox.mark_sent, claimed, claimed.provider_id)


async def test_a_late_result_of_a_reclaimed_attempt_changes_nothing(
    db: Database, smtp_peer: SmtpPeer
) -> None:
    message = await enqueue(db, new_email(smtp_peer, "k1"))
    [first] = await db.run(outbox.claim, "email", limit=1, lease=timedelta(0), resendable=True)
    [second] = await db.run(outbox.claim, "email", limit=1, lease=timedelta(0), resendable=True)

    assert not await db.run(outbox.mark_failed, first, "550 too late")
    assert await db.run(outbox.mark_sent, second, second.provider_id)
    assert (await row(db, message.id)).status == "sent"


async def test_several_workers_on_one_database_send_each_message_exactly_once(
    database_url: str, db: Database, smtp_peer: SmtpPeer, workers: list[OutboxWorker]
) -> None:
    messages = [await enqueue(db, new_email(smtp_peer, f"k{i}")) for i in range(40)]
    databases = [Database(database_url) for _ in range(3)]
    try:
        for database in databases:
            await start(workers, database, smtp_peer, OutboxPolicy(concurrency=4))
        received = await smtp_peer.wait_for(len(messages))
        for worker in workers:
            await worker.stop()
    finally:
        for database in databases:
            await database.dispose()

    assert len(received) == 40
    assert len(set(smtp_peer.message_ids())) == 40
    rows = [await row(db, m.id) for m in messages]
    assert {(r.status, r.attempts) for r in rows} == {("sent", 1)}


async def test_a_bounce_marks_the_message_and_the_address_as_bouncing(
    db: Database, smtp_peer: SmtpPeer
) -> None:
    async with db.transaction() as session:
        contact = Contact(name="Anna")
        session.add(contact)
        await session.flush()
        session.add(Identity(contact_id=contact.id, kind="email", value="anna@example.de"))
        contact_id = contact.id
    new = new_email(smtp_peer, "k1")
    message = await enqueue(db, NewOutbound(**{**_fields(new), "contact_id": contact_id}))
    external_id = (await event_of(db, message)).external_id

    found = await db.run(
        outbox.mark_delivery, "email", external_id, "bounced", "550 5.1.1 mailbox unknown"
    )

    assert found
    event = await event_of(db, message)
    assert (event.delivery_status, event.delivery_detail) == (
        "bounced",
        "550 5.1.1 mailbox unknown",
    )
    assert (await row(db, message.id)).status == OutboxStatus.UNDELIVERED
    async with db.reading() as session:
        identity = (await session.execute(select(Identity))).scalar_one()
    assert identity.bouncing_since is not None
    assert not await db.run(outbox.mark_delivery, "email", "not-ours@example.org", "bounced", "")


def _fields(new: NewOutbound) -> dict[str, Any]:
    return {name: getattr(new, name) for name in NewOutbound.__slots__}


def test_backoff_doubles_per_attempt_with_jitter_up_to_a_cap() -> None:
    assert [backoff(n, 30, 3600, rand=lambda: 1.0) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert [backoff(n, 30, 3600, rand=lambda: 0.0) for n in (1, 2, 3, 4)] == [15, 30, 60, 120]
    assert backoff(20, 30, 3600, rand=lambda: 1.0) == 3600


def test_a_rate_limit_lets_a_burst_through_then_refills_at_its_rate() -> None:
    now = [0.0]
    limit = RateLimit(2.0, burst=4, clock=lambda: now[0])

    assert limit.available() == 4
    limit.take(4)
    assert limit.available() == 0
    assert limit.wait() == pytest.approx(0.5)
    now[0] = 1.0
    assert limit.available() == 2
    now[0] = 60.0
    assert limit.available() == 4


def test_smtp_and_outbox_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "SWITCHBOARD_SMTP_HOST": "smtp.example.com",
            "SWITCHBOARD_SMTP_TLS": "tls",
            "SWITCHBOARD_SMTP_USER": "support",
            "SWITCHBOARD_SMTP_PASSWORD": "s3cret",
            "SWITCHBOARD_SMTP_FROM": "Example Support <support@example.com>",
            "SWITCHBOARD_OUTBOX_MAX_ATTEMPTS": "4",
            "SWITCHBOARD_OUTBOX_RATE_LIMITS": "email=5, sms=0.5",
        }
    )

    assert settings.smtp is not None
    assert (settings.smtp.host, settings.smtp.port, settings.smtp.tls) == (
        "smtp.example.com",
        465,
        "tls",
    )
    assert settings.smtp.domain == "example.com"
    assert settings.outbox.max_attempts == 4
    assert settings.outbox.rate_limits == {"email": 5.0, "sms": 0.5}
    assert settings.email_auto_ack is None


@pytest.mark.parametrize(
    "env",
    [
        {"SWITCHBOARD_SMTP_HOST": "smtp.example.com"},
        {
            "SWITCHBOARD_SMTP_HOST": "h",
            "SWITCHBOARD_SMTP_FROM": "a@b.c",
            "SWITCHBOARD_SMTP_TLS": "ssl",
        },
        {"SWITCHBOARD_OUTBOX_RATE_LIMITS": "email=fast"},
    ],
)
def test_unusable_smtp_or_outbox_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_without_an_smtp_host_email_cannot_send() -> None:
    assert Settings.from_env({}).smtp is None


def test_replies_are_filed_in_the_sent_folder_of_the_mailbox_named() -> None:
    support = Mailbox("support", "imap.example.com", "support", "s3cret")
    settings = Settings(mailboxes=(support,), smtp_sent_mailbox="support")
    misnamed = Settings(mailboxes=(support,), smtp_sent_mailbox="sales")

    assert settings.sent_folder == SentFolder(support, "Sent")
    assert Settings(mailboxes=(support,)).sent_folder is None
    with pytest.raises(SettingsError, match="sales"):
        _ = misnamed.sent_folder
