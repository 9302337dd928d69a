"""Opt-outs and edits in the store, and the rule for what may still be sent to someone who
opted out (routing.consent)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from routing.consent import REPLY_WINDOW, may_send
from timeline import messaging, outbox
from timeline.db import Database
from timeline.models import Contact, Identity, TimelineEvent
from timeline.outbox import OPTED_OUT, NewOutbound

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
PHONE = "+4915123456789"


async def contact_with_phone(db: Database) -> int:
    async with db.transaction() as session:
        contact = Contact(name="Anna")
        session.add(contact)
        await session.flush()
        session.add(Identity(contact_id=contact.id, kind="phone", value=PHONE))
        return contact.id


def test_without_an_opt_out_anything_may_be_sent() -> None:
    assert may_send(None, None, NOW, is_reply=False)


def test_an_opt_out_blocks_campaigns_and_replies_to_what_came_before_it() -> None:
    stop = NOW - timedelta(hours=1)

    assert not may_send(stop, None, NOW, is_reply=False)
    assert not may_send(stop, stop - timedelta(minutes=5), NOW)
    assert not may_send(stop, stop, NOW)  # the STOP message itself is no conversation


def test_a_customer_who_writes_again_after_opting_out_may_be_answered_for_24_hours() -> None:
    stop = NOW - timedelta(days=3)
    wrote = NOW - timedelta(hours=2)

    assert may_send(stop, wrote, NOW)
    assert may_send(stop, wrote, wrote + REPLY_WINDOW)
    assert not may_send(stop, wrote, wrote + REPLY_WINDOW + timedelta(seconds=1))
    assert not may_send(stop, wrote, NOW, is_reply=False)


async def test_an_opt_out_keeps_its_first_time_and_source_until_the_opt_in(db: Database) -> None:
    contact_id = await contact_with_phone(db)

    assert await db.run(messaging.set_opt_out, "phone", PHONE, "sms keyword STOP", NOW)
    assert await db.run(messaging.set_opt_out, "phone", PHONE, "sms keyword QUIT", NOW)
    opted = await db.read(messaging.opt_out_of, "phone", PHONE)
    assert opted is not None
    assert (opted.contact_id, opted.source, opted.opted_out_at) == (
        contact_id,
        "sms keyword STOP",
        NOW,
    )

    assert await db.run(messaging.clear_opt_out, "phone", PHONE)
    assert await db.read(messaging.opt_out_of, "phone", PHONE) is None
    assert not await db.run(messaging.clear_opt_out, "phone", PHONE)
    assert not await db.run(messaging.set_opt_out, "phone", "+49301111111", "x", NOW)


async def test_a_message_queued_before_the_opt_out_is_not_sent(db: Database) -> None:
    contact_id = await contact_with_phone(db)
    new = NewOutbound(
        channel="sms",
        idempotency_key="k1",
        recipient=PHONE,
        sender="+4930555716000",
        payload={"to": PHONE, "body": "Our offer"},
        external_id="sms-1",
        ticket_id=None,
        contact_id=contact_id,
    )
    enqueued = await db.run(outbox.enqueue, new, now=NOW - timedelta(minutes=1))
    await db.run(messaging.set_opt_out, "phone", PHONE, "sms keyword STOP", NOW)

    claimed = await db.run(
        outbox.claim, "sms", limit=10, lease=timedelta(minutes=5), resendable=False
    )

    assert claimed == []
    async with db.reading() as session:
        event = await session.get(TimelineEvent, enqueued.event.id if enqueued.event else 0)
    assert event is not None
    assert (event.delivery_status, event.delivery_detail) == ("failed", OPTED_OUT)


async def test_an_edit_replaces_the_text_and_keeps_the_earlier_one_once(db: Database) -> None:
    async with db.transaction() as session:
        event = TimelineEvent(
            channel="telegram", external_id="42:7", kind="message", direction="in",
            sender="42", recipient="42", body="Helo", occurred_at=NOW,
        )  # fmt: skip
        session.add(event)
        await session.flush()
        event_id = event.id
    first = NOW + timedelta(minutes=1)
    second = NOW + timedelta(minutes=2)

    edited, changed = await db.run(messaging.record_edit, "telegram", "42:7", "Hello", first, None)
    again = await db.run(messaging.record_edit, "telegram", "42:7", "Hello", first, None)
    await db.run(messaging.record_edit, "telegram", "42:7", "Hello!", second, None)
    stale = await db.run(messaging.record_edit, "telegram", "42:7", "Helo?", first, None)
    unknown = await db.run(messaging.record_edit, "telegram", "42:8", "x", first, None)

    assert edited is not None and edited.id == event_id and changed
    assert again[1] is False and stale[1] is False
    assert unknown == (None, False)
    async with db.reading() as session:
        stored = await session.get(TimelineEvent, event_id)
        history = await session.run_sync(messaging.edits_of, event_id)
    assert stored is not None and stored.body == "Hello!"
    assert [(e.previous_body, e.edited_at) for e in history] == [("Helo", first), ("Hello", second)]
