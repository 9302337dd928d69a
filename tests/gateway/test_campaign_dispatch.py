"""The dispatcher on its own: two processes' dispatchers on one database hand each recipient to
the outbox once (the campaign's lease), and a campaign is materialised page by page."""

from __future__ import annotations

import asyncio
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from channels.twilio_sms import SmsAccount, TwilioSmsSender
from gateway.campaigns import CampaignDispatcher, CampaignPolicy
from timeline import campaigns, store
from timeline.db import Database
from timeline.models import Campaign, CampaignRecipient, OutboxMessage

CONTACTS = 700


class _Outbox:
    """Stands in for the outbox worker: the dispatcher only wakes it."""

    def wake(self) -> None:
        pass


def _dispatcher(database: Database, **policy: Any) -> CampaignDispatcher:
    sender = TwilioSmsSender(SmsAccount("AC" + "0" * 32, "0" * 32, from_number="+4930555716000"))
    return CampaignDispatcher(
        database,
        {"sms": sender},
        _Outbox(),  # type: ignore[arg-type]
        ZoneInfo("UTC"),
        CampaignPolicy(**policy),
    )


async def test_two_dispatchers_hand_each_recipient_to_the_outbox_once(database_url: str) -> None:
    database = Database(database_url)
    await database.upgrade()
    try:
        await database.run(
            store.create_contacts,
            [(f"C{n}", [("phone", f"+4915114{n:06d}")]) for n in range(CONTACTS)],
            tags=["x"],
        )
        campaign = await database.run(
            campaigns.add_campaign,
            name="Twice",
            channel="sms",
            filter={"tags_any": ["x"]},
            template={"body": "Hi {{ name }}"},
        )
        await database.run(campaigns.transition, campaign.id, "start")
        # Small pages and batches, and a backlog nobody drains: many rounds, side by side.
        first, second = (
            _dispatcher(database, page=50, batch=40, backlog=CONTACTS * 2) for _ in range(2)
        )

        for _ in range(40):
            await asyncio.gather(first.round(), second.round())

        async with database.reading() as session:
            outbox_rows = await session.scalar(select(func.count(OutboxMessage.id)))
            keys = await session.scalar(
                select(func.count(func.distinct(OutboxMessage.idempotency_key)))
            )
            recipients = await session.scalar(select(func.count(CampaignRecipient.id)))
            done = await session.get(Campaign, campaign.id)
        assert recipients == CONTACTS
        assert outbox_rows == keys == CONTACTS
        assert done is not None and done.materialised_at is not None
        assert done.lease_owner in (first.owner, second.owner)
    finally:
        await database.dispose()
