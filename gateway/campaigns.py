"""The campaign dispatcher: turns running campaigns into outbox messages, politely, once each.

One worker per gateway process (a `cleanup_ctx` of the app, like the outbox sender). Each
round, for every running campaign it holds the lease of (`timeline.campaigns.lease`: one
process at a time, so pacing holds), it

1. materialises the next keyset page of the audience (`routing.segments.page`) into recipient
   rows, the page and the campaign's cursor in one transaction, so a crash resumes after the
   last committed page: no contact twice, none skipped;
2. hands due recipients to the outbox, as many as the sender's token bucket and a small
   outbox backlog allow, in one transaction per batch: each recipient's outbox row (keyed by
   the recipient's idempotency key) and its `queued` mark commit together, so a crash leaves
   either both or neither. Consent, opt-outs and the frequency cap are checked here, at send
   time; quiet hours move a recipient to the first allowed moment in its time zone;
3. finishes campaigns that have nothing left.

It also follows replies: an inbound on a campaign's channel from a contact it was sent to
marks that recipient `replied` (an opt-out keyword: `opted_out`), with the reply's event.

Pause: the dispatcher checks the campaign's status in each batch's transaction, and the outbox
backlog it leaves is at most `backlog` messages, which the outbox sends in well under a second
at full speed; with pacing on, the backlog is what one second's tokens allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from sqlalchemy.orm import Session

from channels import InvalidPayload
from channels.sending import Reply, Sender, Thread
from channels.twilio_sms import Keyword, keyword_of
from gateway.keys import DATABASE, OUTBOX, REPLIES, SETTINGS
from gateway.outbox import OutboxWorker, RateLimit
from routing import pacing, segments
from routing.identity import PHONE
from routing.pacing import FrequencyCap, QuietHours
from routing.segments import CHANNEL_KINDS, Member
from routing.templates import CampaignTemplate, compile_template, contact_context, try_render
from timeline import campaigns, outbox
from timeline.campaigns import DueRecipient, Queued
from timeline.db import Database
from timeline.models import Campaign, utcnow
from timeline.outbox import NewOutbound

log = logging.getLogger(__name__)

# Why a recipient was not sent the campaign (the `skipped` counts).
NO_ADDRESS = "no_address"
OPTED_OUT = "opted_out"
NO_CONSENT = "no_consent"
FREQUENCY_CAP = "frequency_cap"
RENDER_ERROR = "render_error"
UNDELIVERABLE = "undeliverable"


@dataclass(frozen=True, slots=True)
class CampaignPolicy:
    """How the dispatcher works (not per campaign: per process)."""

    page: int = 1000  # contacts materialised per transaction
    batch: int = 250  # recipients handed to the outbox per transaction at most
    # Campaign messages queued in the outbox and not yet taken, per channel, at most.
    backlog: int = 250
    poll_interval: float = 0.5
    lease: float = 10.0
    # How long after its message an inbound counts as a reply to the campaign.
    reply_window: timedelta = timedelta(days=7)


# Tests and benchmarks may set the dispatcher's policy on the app before it starts.
CAMPAIGN_POLICY = web.AppKey("campaign_policy", CampaignPolicy)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one round decided for one campaign's batch."""

    queued: int
    more: bool  # due recipients are left (stopped by tokens or the backlog)
    ours: bool = True  # False: another process holds the campaign's lease


class CampaignDispatcher:
    """Dispatches every running campaign it can lease (see the module's doc)."""

    def __init__(
        self,
        db: Database,
        senders: Mapping[str, Sender],
        outbox_worker: OutboxWorker,
        company_zone: ZoneInfo,
        policy: CampaignPolicy | None = None,
    ) -> None:
        self.db = db
        self.senders = senders
        self.outbox = outbox_worker
        self.company_zone = company_zone
        self.policy = policy or CampaignPolicy()
        self.owner = f"{os.uname().nodename[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._buckets: dict[str, RateLimit] = {}
        self._templates: dict[int, CampaignTemplate] = {}
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self._replies_checked = 0.0
        self.running_counts = RunningCounts()

    def wake(self) -> None:
        """A campaign started or resumed: look now."""
        self._wake.set()

    async def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="campaigns")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            await self._runner

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                pause = await self.round()
            except Exception:
                log.exception("campaigns: a dispatch round failed; trying again shortly")
                pause = self.policy.poll_interval
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)

    async def round(self) -> float:
        """One pass over the running campaigns; how long to sleep before the next."""
        now = utcnow()
        look = await self.db.read(_look, now)
        if look.to_start:
            await self.db.run(campaigns.start_due, now)
            look = await self.db.read(_look, now)
        pause = self.policy.poll_interval
        for campaign in look.running:
            pause = min(pause, await self._advance(campaign, look.backlog))
        loop_time = asyncio.get_running_loop().time()
        if loop_time - self._replies_checked >= 1.0:
            self._replies_checked = loop_time
            await self.db.run(self._follow_replies, utcnow())
        return pause

    async def _advance(self, campaign: Campaign, backlog: dict[str, int]) -> float:
        """Materialise and dispatch what `campaign` may now; `backlog` (the outbox's, per
        channel, as the round began) counts in what this round queues."""
        if campaign.channel not in self.senders:
            # A channel this process cannot send on is left to a process that can.
            return self.policy.poll_interval
        materialising = campaign.materialised_at is None and await self.db.run(
            self._materialise, campaign.id, utcnow()
        )
        allowed, bucket = self._room(campaign, backlog[campaign.channel])
        if bucket is not None and allowed <= 0:
            return max(bucket.wait(), 0.05)
        if bucket is None and allowed < self.policy.batch // 2:
            # The backlog drains in moments; refilled by half batches, not a few rows at a time.
            return 0.05
        plan = await self.db.run(self._dispatch, campaign.id, allowed, utcnow())
        if not plan.ours:
            return self.policy.poll_interval
        backlog[campaign.channel] += plan.queued
        if bucket is not None:
            bucket.take(plan.queued)
        if plan.queued:
            self.outbox.wake()
        if plan.more or materialising:
            return 0.0
        return await self._until_due(campaign.id)

    def _room(self, campaign: Campaign, backlog: int) -> tuple[int, RateLimit | None]:
        """How many recipients may go now: the batch, less the outbox backlog, within the
        sender's tokens when the campaign is paced (its bucket is returned, to take from)."""
        allowed = min(self.policy.batch, self.policy.backlog - backlog)
        rate = pacing.parse_pacing(campaign.pacing)
        if rate is None:
            return allowed, None
        bucket = self._bucket(campaign, rate)
        return min(allowed, bucket.available()), bucket

    def _bucket(self, campaign: Campaign, rate: float) -> RateLimit:
        """One bucket per sender (number, mailbox, bot): campaigns from one sender share it."""
        key = f"{campaign.channel}:{campaign.sender or ''}"
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[key] = RateLimit(rate)
        return bucket

    async def _until_due(self, campaign_id: int) -> float:
        due = await self.db.read(campaigns.next_pending, campaign_id)
        if due is None:
            return self.policy.poll_interval
        return min(self.policy.poll_interval, max(0.0, (due - utcnow()).total_seconds()))

    # --- units of work (one transaction each) -----------------------------------------------

    def _materialise(self, session: Session, campaign_id: int, now: datetime) -> bool:
        """The next page of the audience; True while pages are left."""
        campaign = campaigns.lease(
            session, campaign_id, self.owner, timedelta(seconds=self.policy.lease), now
        )
        if campaign is None or campaign.materialised_at is not None:
            return False
        audience = segments.parse_filter(campaign.filter)
        contact_ids, cursor = segments.page_ids(
            session, audience, campaign.cursor_contact_id, self.policy.page
        )
        campaigns.add_recipients(session, campaign.id, contact_ids, now)
        if cursor is None:
            campaign.materialised_at = now
            return False
        campaign.cursor_contact_id = cursor
        return True

    def _dispatch(self, session: Session, campaign_id: int, limit: int, now: datetime) -> _Plan:
        campaign = campaigns.lease(
            session, campaign_id, self.owner, timedelta(seconds=self.policy.lease), now
        )
        if campaign is None:
            return _Plan(0, False, ours=False)
        due = campaigns.due_recipients(session, campaign.id, now, limit)
        if not due:
            if campaigns.finish_if_done(session, campaign, now):
                self._templates.pop(campaign.id, None)
                log.info("campaigns: campaign %s completed", campaign.id)
            return _Plan(0, False)
        batch = _Batch(self, session, campaign, now)
        batch.load(due)
        for recipient in due:
            batch.decide(recipient)
        batch.record()
        return _Plan(len(batch.queued), len(due) == limit)

    def template(self, campaign: Campaign) -> CampaignTemplate:
        template = self._templates.get(campaign.id)
        if template is None:
            template = self._templates[campaign.id] = compile_template(
                campaign.channel, campaign.template
            )
        return template

    def _follow_replies(self, session: Session, now: datetime) -> None:
        for campaign in campaigns.reply_watch(session, now - self.policy.reply_window):
            _follow(session, campaign, self.policy.reply_window)


class RunningCounts:
    """Counts of running campaigns, counted at most once per `ttl` seconds each, and less
    often for an audience so large that counting it costs more than `share` of a core.

    Every open campaign page polls its campaign once a second, and counting a large audience
    joins each recipient with its outbox row (0.1 to 0.2 s for 100,000 on SQLite): several
    pages, or one page beside a busy dispatcher, would cost a good part of a core, which the
    sends need. A campaign that is not running is counted afresh each time.
    """

    def __init__(
        self, ttl: float = 2.0, share: float = 0.05, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.share = share
        self._clock = clock
        self._counted: dict[int, tuple[float, dict[str, Any]]] = {}  # until, counts

    def get(self, session: Session, campaign_id: int) -> dict[str, Any]:
        started = self._clock()
        cached = self._counted.get(campaign_id)
        if cached is not None and started < cached[0]:
            return cached[1]
        counts = campaigns.counts(session, campaign_id)
        if len(self._counted) > 1000:
            self._counted.clear()
        took = self._clock() - started
        self._counted[campaign_id] = (started + max(self.ttl, took / self.share), counts)
        return counts


@dataclass(frozen=True, slots=True)
class _Look:
    """Where a round starts, read in one transaction: while a campaign sends, a round comes
    every 50 ms, and each read is a hand-off to a database thread and back."""

    to_start: bool  # a scheduled campaign's time has come
    running: list[Campaign]
    backlog: dict[str, int]  # `campaigns.waiting_in_outbox`, per channel of a running campaign


def _look(session: Session, now: datetime) -> _Look:
    running = campaigns.running(session)
    channels = {campaign.channel for campaign in running}
    return _Look(
        to_start=campaigns.due_to_start(session, now),
        running=running,
        backlog={channel: campaigns.waiting_in_outbox(session, channel) for channel in channels},
    )


class _Batch:
    """One dispatch transaction's recipients: what each gets, then written together."""

    def __init__(
        self, dispatcher: CampaignDispatcher, session: Session, campaign: Campaign, now: datetime
    ) -> None:
        self.session = session
        self.campaign = campaign
        self.now = now
        self.sender = dispatcher.senders[campaign.channel]
        self.template = dispatcher.template(campaign)
        self.company_zone = dispatcher.company_zone
        self.kind = CHANNEL_KINDS[campaign.channel]
        self.quiet = QuietHours.parse(campaign.quiet_hours) if campaign.quiet_hours else None
        self.cap = FrequencyCap.parse(campaign.frequency_cap) if campaign.frequency_cap else None
        self.wants_opt_in = campaign.filter.get("consent") == "opted_in"
        self.queued: list[Queued] = []
        self._outgoing: list[tuple[int, NewOutbound]] = []
        self.skipped: list[tuple[int, str]] = []
        self.deferred: list[tuple[int, datetime]] = []
        self._members: dict[int, Member] = {}
        self._opted_out: set[int] = set()
        self._recent: dict[int, int] = {}

    def load(self, due: list[DueRecipient]) -> None:
        campaigns.hold_frequency_cap(self.session, counting=self.cap is not None)
        ids = [r.contact_id for r in due]
        self._members = {m.contact_id: m for m in segments.members_of(self.session, ids)}
        # Campaigns are not replies: `routing.consent`'s reply exception never applies.
        self._opted_out = campaigns.opted_out_contacts(self.session, ids, self.kind)
        if self.cap is not None:
            self._recent = campaigns.campaign_messages_since(
                self.session, ids, self.now - self.cap.window, self.campaign.id
            )

    def decide(self, recipient: DueRecipient) -> None:
        member = self._members.get(recipient.contact_id)
        reason = self._refusal(member)
        if reason is not None or member is None:
            self.skipped.append((recipient.id, reason or NO_ADDRESS))
            return
        if self.quiet is not None:
            phones = member.addresses(PHONE)
            zones = pacing.recipient_zones(
                member.attributes.get("timezone"), phones[0] if phones else None, self.company_zone
            )
            if pacing.quiet_now(self.now, zones, self.quiet):
                self.deferred.append(
                    (recipient.id, pacing.next_allowed(self.now, zones, self.quiet))
                )
                return
        self._enqueue(recipient, member)

    def _refusal(self, member: Member | None) -> str | None:
        """Why this contact must not be sent the campaign now; None when it may."""
        if member is None or not member.addresses(self.kind):
            return NO_ADDRESS
        if member.contact_id in self._opted_out:
            return OPTED_OUT
        if self.wants_opt_in and member.attributes.get("consent") != "opted_in":
            return NO_CONSENT
        if self.cap is not None and not self.cap.allows(self._recent.get(member.contact_id, 0)):
            return FREQUENCY_CAP
        return None

    def _enqueue(self, recipient: DueRecipient, member: Member) -> None:
        context = contact_context(member.name, member.attributes, member.tags, self.campaign.name)
        rendered, error = try_render(self.template, context)
        if rendered is None:
            # The error may quote the contact's data: its text only at DEBUG.
            log.info("campaigns: campaign %s: a message could not be rendered", self.campaign.id)
            log.debug("campaigns: campaign %s: %s", self.campaign.id, error)
            self.skipped.append((recipient.id, RENDER_ERROR))
            return
        address = member.addresses(self.kind)[0]
        text = rendered.get("body") or rendered.get("text", "")
        reply = Reply(address, text, html=rendered.get("html"), subject=rendered.get("subject"))
        try:
            draft = self.sender.draft(reply, Thread(ticket_number=None))
        except InvalidPayload:
            self.skipped.append((recipient.id, UNDELIVERABLE))
            return
        self._outgoing.append(
            (
                recipient.id,
                NewOutbound(
                    channel=self.campaign.channel,
                    idempotency_key=recipient.idempotency_key,
                    recipient=address,
                    sender=draft.sender,
                    payload=draft.payload,
                    external_id=draft.external_id,
                    ticket_id=None,
                    contact_id=member.contact_id,
                    text=draft.text,
                    subject=draft.subject,
                    html=draft.html,
                ),
            )
        )

    def record(self) -> None:
        """The outbox rows and the recipients' marks, in this one transaction."""
        news = [new for _, new in self._outgoing]
        outbox_ids = outbox.enqueue_many(self.session, news, self.now)
        self.queued = [
            Queued(rid, new.recipient, oid)
            for (rid, new), oid in zip(self._outgoing, outbox_ids, strict=True)
        ]
        campaigns.mark_queued(self.session, self.queued, self.now)
        campaigns.mark_skipped(self.session, self.skipped)
        campaigns.defer(self.session, self.deferred)


def _follow(session: Session, campaign: Campaign, window: timedelta) -> None:
    """Link the inbounds since the campaign's watermark to its recipients (see module doc)."""
    events, upto = campaigns.reply_candidates(session, campaign, limit=1000)
    campaign.replies_seen_event_id = upto
    if not events:
        return
    recipients = campaigns.awaiting_reply(session, campaign.id, {e[1] for e in events})
    for event_id, contact_id, body, occurred_at in events:
        recipient = recipients.get(contact_id)
        if recipient is None or recipient.queued_at is None:
            continue
        if not recipient.queued_at < occurred_at <= recipient.queued_at + window:
            continue
        if keyword_of(body) is Keyword.OPT_OUT:
            recipient.opted_out_at = recipient.opted_out_at or occurred_at
        elif recipient.replied_at is None:
            recipient.replied_at = occurred_at
            recipient.reply_event_id = event_id


DISPATCHER_KEY = web.AppKey("campaigns", CampaignDispatcher)


async def dispatching(app: web.Application) -> AsyncIterator[None]:
    """The dispatcher's lifetime (a `cleanup_ctx`, after the outbox's: it feeds that worker)."""
    settings = app[SETTINGS]
    dispatcher = CampaignDispatcher(
        app[DATABASE],
        app[REPLIES].senders,
        app[OUTBOX],
        pacing.zone(settings.timezone),
        app.get(CAMPAIGN_POLICY) or CampaignPolicy(),
    )
    app[DISPATCHER_KEY] = dispatcher
    await dispatcher.start()
    yield
    await dispatcher.stop()
