"""Campaigns through the gateway: the API, and dispatch through the outbox to the local Twilio
stub (the real `twilio` client), with consent, frequency caps, duplicates, pause and replies."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.app import create_app
from gateway.campaigns import CAMPAIGN_POLICY, CampaignPolicy, RunningCounts
from gateway.keys import DATABASE
from gateway.settings import Settings
from tests.helpers import Agents, bearer
from tests.stubs.twilio_api import TwilioApiStub
from tests.twilio_sms import form, post_signed, sms_settings
from timeline import messaging, store
from timeline.models import Campaign, CampaignRecipient, OutboxMessage, Role, utcnow

FAST = CampaignPolicy(poll_interval=0.05)
SMS_TEMPLATE = {"body": "Hi {{ first_name | default('there') }}, your {{ attributes.plan }} plan."}


@pytest.fixture
async def gateway(
    aiohttp_client: Any, settings: Settings, twilio: tuple[TwilioApiStub, str]
) -> TestClient:
    app = create_app(sms_settings(settings, twilio[1]))
    app[CAMPAIGN_POLICY] = FAST
    return await aiohttp_client(app)


@pytest.fixture
def stub(twilio: tuple[TwilioApiStub, str]) -> TwilioApiStub:
    return twilio[0]


@pytest.fixture
async def boss(gateway: TestClient) -> dict[str, str]:
    return bearer(await Agents(gateway.server.app).add("Sue", role=Role.SUPERVISOR))


async def contacts(
    client: TestClient, people: Sequence[tuple[str, Sequence[tuple[str, str]]]], **fields: Any
) -> list[int]:
    """Contacts made straight in the database: `(name, [(kind, value)])` each."""
    async with client.server.app[DATABASE].transaction() as session:
        return await session.run_sync(
            lambda s: store.create_contacts(s, [(n, list(i)) for n, i in people], **fields)
        )


def phone(n: int) -> str:
    return f"+4915112{n:06d}"


async def create(client: TestClient, boss: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {
        "name": "Spring sale",
        "channel": "sms",
        "filter": {"tags_any": ["spring"]},
        "template": SMS_TEMPLATE,
        **fields,
    }
    response = await client.post("/api/v1/campaigns", json=body, headers=boss)
    assert response.status == 201, await response.text()
    return dict(await response.json())


async def act(client: TestClient, boss: dict[str, str], campaign_id: int, action: str) -> Any:
    return await client.post(f"/api/v1/campaigns/{campaign_id}/{action}", headers=boss)


async def campaign(client: TestClient, boss: dict[str, str], campaign_id: int) -> dict[str, Any]:
    response = await client.get(f"/api/v1/campaigns/{campaign_id}", headers=boss)
    assert response.status == 200
    return dict(await response.json())


async def finished(
    client: TestClient, boss: dict[str, str], campaign_id: int, within: float = 30.0
) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while (found := await campaign(client, boss, campaign_id))["status"] != "completed":  # noqa: ASYNC110 - the dispatcher's progress, polled
            await asyncio.sleep(0.05)
    return found


def received(stub: TwilioApiStub) -> Counter[str]:
    return Counter(m["To"] for m in stub.messages)


# --- the API --------------------------------------------------------------------------------


async def test_agents_may_not_see_campaigns(gateway: TestClient) -> None:
    agent = bearer(await Agents(gateway.server.app).add("Al"))

    response = await gateway.get("/api/v1/campaigns", headers=agent)

    assert response.status == 403
    assert (await response.json())["error"] == "forbidden"


async def test_a_saved_segment_and_its_preview(gateway: TestClient, boss: dict[str, str]) -> None:
    await contacts(
        gateway, [(f"Spring {n}", [("phone", phone(n))]) for n in range(3)], tags=["spring"]
    )
    await contacts(gateway, [("Winter", [("phone", phone(9))])], tags=["winter"])

    saved = await gateway.post(
        "/api/v1/segments",
        json={"name": "Spring people", "filter": {"tags_any": ["spring"]}},
        headers=boss,
    )
    preview = await gateway.post(
        "/api/v1/segments/preview",
        json={"filter": {"tags_any": ["spring"]}, "sample": 2},
        headers=boss,
    )

    assert saved.status == 201
    segment = await saved.json()
    assert segment["filter"] == {"tags_any": ["spring"]}
    listed = await (await gateway.get("/api/v1/segments", headers=boss)).json()
    assert [s["id"] for s in listed["segments"]] == [segment["id"]]
    body = await preview.json()
    assert body["count"] == 3
    assert [s["name"] for s in body["sample"]] == ["Spring 0", "Spring 1"]
    assert body["sample"][0]["identities"] == [{"kind": "phone", "value": phone(0)}]


async def test_an_unknown_filter_key_is_refused(gateway: TestClient, boss: dict[str, str]) -> None:
    response = await gateway.post(
        "/api/v1/segments/preview", json={"filter": {"colour": ["red"]}}, headers=boss
    )

    assert response.status == 400
    assert (await response.json())["error"] == "invalid_filter"


async def test_a_template_that_does_not_compile_is_refused_at_create_with_its_line(
    gateway: TestClient, boss: dict[str, str]
) -> None:
    body = {
        "name": "Broken",
        "channel": "email",
        "filter": {},
        "template": {"subject": "Hello", "text": "Dear {{ name }},\n\nYour {{ plan | }} plan"},
    }

    response = await gateway.post("/api/v1/campaigns", json=body, headers=boss)

    assert response.status == 400
    error = await response.json()
    assert error["error"] == "template_error"
    assert error["part"] == "text"
    assert error["line"] == 3


async def test_preview_renders_samples_lists_render_errors_and_costs_the_sms(
    gateway: TestClient, boss: dict[str, str]
) -> None:
    [anna] = await contacts(
        gateway, [("Anna Adler", [("phone", phone(1))])], tags=["spring"], attributes={"d": 0}
    )
    [bert] = await contacts(
        gateway, [("Bert", [("phone", phone(2))])], tags=["spring"], attributes={"d": 5}
    )
    created = await create(
        gateway, boss, template={"body": "Hi {{ first_name }} 😀 {{ 10 // attributes.d }}"}
    )

    response = await gateway.post(
        f"/api/v1/campaigns/{created['id']}/preview", json={"sample": 5}, headers=boss
    )

    body = await response.json()
    assert body["count"] == 2
    assert body["samples"] == [
        {"contact_id": bert, "name": "Bert", "rendered": {"body": "Hi Bert 😀 2"}}
    ]
    assert [e["contact_id"] for e in body["errors"]] == [anna]
    assert "ZeroDivisionError" in body["errors"][0]["error"]
    assert body["sms"] == {"encoding": "UCS-2", "segments": 1, "characters": 11}


async def test_a_missing_value_renders_its_default(
    gateway: TestClient, boss: dict[str, str]
) -> None:
    await contacts(gateway, [("", [("phone", phone(1))])], tags=["spring"])
    created = await create(gateway, boss)

    response = await gateway.post(
        f"/api/v1/campaigns/{created['id']}/preview", json={"sample": 1}, headers=boss
    )

    body = await response.json()
    assert body["errors"] == []
    assert body["samples"][0]["rendered"] == {"body": "Hi there, your  plan."}
    assert body["sms"] == {"encoding": "GSM-7", "segments": 1, "characters": 21}


async def test_illegal_transitions_are_409(gateway: TestClient, boss: dict[str, str]) -> None:
    created = await create(gateway, boss)

    paused = await act(gateway, boss, created["id"], "pause")
    cancelled = await act(gateway, boss, created["id"], "cancel")
    restarted = await act(gateway, boss, created["id"], "start")

    assert paused.status == 409
    assert (await paused.json())["error"] == "invalid_transition"
    assert cancelled.status == 200
    assert (await cancelled.json())["status"] == "cancelled"
    assert restarted.status == 409


async def test_a_campaign_in_the_future_is_scheduled(
    gateway: TestClient, boss: dict[str, str]
) -> None:
    created = await create(gateway, boss, scheduled_at="2099-01-01T09:00:00+01:00")

    started = await act(gateway, boss, created["id"], "start")
    paused = await act(gateway, boss, created["id"], "pause")
    resumed = await act(gateway, boss, created["id"], "resume")

    assert (await started.json())["status"] == "scheduled"
    assert (await paused.json())["status"] == "paused"
    assert (await resumed.json())["status"] == "scheduled"


# --- dispatch -------------------------------------------------------------------------------


async def test_every_recipient_gets_one_message_even_with_several_identities(
    gateway: TestClient, boss: dict[str, str], stub: TwilioApiStub
) -> None:
    people = [
        (f"Person {n}", [("phone", phone(n)), ("email", f"p{n}@example.com")]) for n in range(20)
    ]
    people.append(("Two Phones", [("phone", phone(100)), ("phone", phone(101))]))
    await contacts(gateway, people, tags=["spring"], attributes={"plan": "Gold"})
    created = await create(gateway, boss)

    await act(gateway, boss, created["id"], "start")
    done = await finished(gateway, boss, created["id"])

    got = received(stub)
    assert sum(got.values()) == 21
    assert set(got.values()) == {1}
    assert got[phone(100)] + got[phone(101)] == 1
    assert stub.messages[0]["Body"] == "Hi Person, your Gold plan."
    assert done["counts"]["targeted"] == 21
    assert done["counts"]["sent"] == 21
    assert done["counts"]["queued"] == 0


async def test_opted_out_and_capped_contacts_are_skipped_at_send_time(
    gateway: TestClient, boss: dict[str, str], stub: TwilioApiStub
) -> None:
    ids = await contacts(
        gateway, [(f"P{n}", [("phone", phone(n))]) for n in range(4)], tags=["spring"]
    )
    first = await create(gateway, boss, filter={"tags_any": ["spring"]}, name="First")
    second = await create(
        gateway,
        boss,
        name="Second",
        frequency_cap={"max": 1, "days": 7},
        scheduled_at="2099-01-01T00:00:00Z",
    )
    await act(gateway, boss, second["id"], "start")  # scheduled: the audience is not sent yet
    await act(gateway, boss, first["id"], "start")
    await finished(gateway, boss, first["id"])
    # Between scheduling and sending, one contact says STOP.
    db = gateway.server.app[DATABASE]
    fresh = await contacts(gateway, [("New", [("phone", phone(50))])], tags=["spring"])
    await db.run(messaging.set_opt_out, "phone", phone(50), "test", utcnow())

    async with db.transaction() as session:
        await session.run_sync(_reschedule_now, second["id"])
    done = await finished(gateway, boss, second["id"])

    assert sum(received(stub).values()) == 4  # the first campaign only
    assert done["counts"]["skipped"] == {"frequency_cap": 4, "opted_out": 1}
    assert len(ids) + len(fresh) == done["counts"]["targeted"]


def _reschedule_now(session: Session, campaign_id: int) -> None:
    found = session.get(Campaign, campaign_id)
    assert found is not None
    found.scheduled_at = utcnow()


async def test_pause_stops_sending_and_resume_sends_the_rest_once(
    gateway: TestClient, boss: dict[str, str], stub: TwilioApiStub
) -> None:
    await contacts(gateway, [(f"P{n}", [("phone", phone(n))]) for n in range(30)], tags=["spring"])
    created = await create(gateway, boss, pacing={"per_second": 10})
    await act(gateway, boss, created["id"], "start")
    async with asyncio.timeout(10):
        while not stub.messages:  # noqa: ASYNC110 - the dispatcher's progress, polled
            await asyncio.sleep(0.01)

    paused = await act(gateway, boss, created["id"], "pause")
    assert (await paused.json())["status"] == "paused"
    await _outbox_drained(gateway)
    after_pause = len(stub.messages)
    await asyncio.sleep(0.5)

    assert len(stub.messages) == after_pause < 30
    await act(gateway, boss, created["id"], "resume")
    await finished(gateway, boss, created["id"], within=60)
    assert sorted(received(stub)) == sorted(phone(n) for n in range(30))
    assert set(received(stub).values()) == {1}


async def _outbox_drained(client: TestClient) -> None:
    async with asyncio.timeout(10):
        while True:
            async with client.server.app[DATABASE].reading() as session:
                waiting = (
                    await session.execute(
                        select(OutboxMessage.id).where(
                            OutboxMessage.status.in_(["queued", "sending"])
                        )
                    )
                ).first()
            if waiting is None:
                return
            await asyncio.sleep(0.02)


async def test_a_reply_is_linked_to_the_campaign_and_stop_counts_as_opted_out(
    gateway: TestClient, boss: dict[str, str], stub: TwilioApiStub
) -> None:
    customer = "+4915123456789"
    other = "+4915123456780"
    await contacts(
        gateway,
        [("Replier", [("phone", customer)]), ("Stopper", [("phone", other)])],
        tags=["spring"],
    )
    created = await create(gateway, boss)
    await act(gateway, boss, created["id"], "start")
    await finished(gateway, boss, created["id"])

    answer = await post_signed(
        gateway, "/webhooks/twilio/sms", form("text.json", From=customer, Body="Yes please")
    )
    stop = await post_signed(
        gateway,
        "/webhooks/twilio/sms",
        form("text.json", From=other, Body="STOP", MessageSid="SM" + "1" * 32),
    )
    assert answer.status == stop.status == 200

    counts = await _counted(gateway, boss, created["id"], "replied", "opted_out")
    async with gateway.server.app[DATABASE].reading() as session:
        rows = (
            (await session.execute(select(CampaignRecipient).order_by(CampaignRecipient.id)))
            .scalars()
            .all()
        )
    assert rows[0].reply_event_id is not None
    assert rows[1].reply_event_id is None
    assert counts["replied"] == 1
    assert counts["opted_out"] == 1
    timeline = await gateway.get(f"/api/v1/contacts/{rows[0].contact_id}/timeline", headers=boss)
    answered, sent = (await timeline.json())["events"]
    assert (answered["direction"], answered["body"]) == ("in", "Yes please")
    assert answered["campaign_id"] == sent["campaign_id"] == created["id"]
    assert answered["ticket_id"] is not None, "an answer opens a ticket"
    other_timeline = await gateway.get(
        f"/api/v1/contacts/{rows[1].contact_id}/timeline", headers=boss
    )
    stopped, _ = (await other_timeline.json())["events"]
    assert (stopped["body"], stopped["ticket_id"]) == ("STOP", None)


async def _counted(
    client: TestClient, boss: dict[str, str], campaign_id: int, *names: str
) -> dict[str, Any]:
    """The campaign's counts once each of `names` is at least 1."""
    async with asyncio.timeout(10):
        while True:
            counts = (await campaign(client, boss, campaign_id))["counts"]
            if all(counts[name] for name in names):
                return dict(counts)
            await asyncio.sleep(0.05)


async def test_quiet_hours_hold_berlin_while_los_angeles_is_sent_at_the_same_instant(
    gateway: TestClient, boss: dict[str, str], stub: TwilioApiStub
) -> None:
    berlin_phone, los_angeles_phone = "+4930555716001", "+12135550123"
    await contacts(
        gateway,
        [("Berliner", [("phone", berlin_phone)]), ("Angeleno", [("phone", los_angeles_phone)])],
        tags=["spring"],
    )
    # Quiet hours around Berlin's present minute; Los Angeles is nine hours behind.
    berlin_now = datetime.now(ZoneInfo("Europe/Berlin")).replace(second=0, microsecond=0)
    start, end = berlin_now - timedelta(hours=1), berlin_now + timedelta(hours=1)
    quiet = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}
    created = await create(gateway, boss, quiet_hours=quiet)

    await act(gateway, boss, created["id"], "start")
    async with asyncio.timeout(10):
        while not stub.messages:  # noqa: ASYNC110 - the dispatcher's progress, polled
            await asyncio.sleep(0.02)

    rows = await _recipients(gateway)
    assert [m["To"] for m in stub.messages] == [los_angeles_phone]
    assert rows[0].status == "pending"
    assert rows[0].not_before == end.astimezone(UTC)
    counts = await _counted(gateway, boss, created["id"], "sent")
    assert counts["queued"] == 1
    assert counts["sent"] == 1


async def _recipients(client: TestClient) -> list[CampaignRecipient]:
    async with client.server.app[DATABASE].reading() as session:
        found = await session.execute(select(CampaignRecipient).order_by(CampaignRecipient.id))
        return list(found.scalars())


async def test_a_campaign_from_a_saved_segment_copies_its_filter(
    gateway: TestClient, boss: dict[str, str]
) -> None:
    saved = await gateway.post(
        "/api/v1/segments", json={"name": "VIPs", "filter": {"vip": True}}, headers=boss
    )
    segment = await saved.json()
    body = {"name": "For VIPs", "channel": "telegram", "template": {"body": "Hello"}}

    created = await gateway.post(
        "/api/v1/campaigns", json={**body, "segment_id": segment["id"]}, headers=boss
    )
    unknown = await gateway.post(
        "/api/v1/campaigns", json={**body, "segment_id": segment["id"] + 1}, headers=boss
    )
    both = await gateway.post(
        "/api/v1/campaigns",
        json={**body, "segment_id": segment["id"], "filter": {}},
        headers=boss,
    )

    assert created.status == 201
    campaign_body = await created.json()
    assert campaign_body["segment_id"] == segment["id"]
    assert campaign_body["filter"] == {"vip": True}
    assert campaign_body["status"] == "draft"
    assert campaign_body["counts"]["targeted"] == 0
    assert unknown.status == 422
    assert both.status == 400
    listed = await (await gateway.get("/api/v1/campaigns", headers=boss)).json()
    assert [c["id"] for c in listed["campaigns"]] == [campaign_body["id"]]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"channel": "fax"}, "invalid_payload"),
        ({"pacing": {"per_second": 0}}, "invalid_pacing"),
        ({"quiet_hours": {"start": "21:00"}}, "invalid_pacing"),
        ({"frequency_cap": {"max": 0, "days": 1}}, "invalid_pacing"),
        ({"scheduled_at": "tomorrow"}, "invalid_payload"),
        ({"template": {"body": "x", "subject": "y"}}, "template_error"),
        ({"colour": "red"}, "invalid_payload"),
    ],
)
async def test_a_bad_campaign_is_400_with_a_reason(
    gateway: TestClient, boss: dict[str, str], change: dict[str, Any], error: str
) -> None:
    body = {"name": "Bad", "channel": "sms", "filter": {}, "template": {"body": "x"}, **change}

    response = await gateway.post("/api/v1/campaigns", json=body, headers=boss)

    assert response.status == 400
    assert (await response.json())["error"] == error


async def edit(client: TestClient, boss: dict[str, str], campaign_id: int, **changes: Any) -> Any:
    return await client.patch(f"/api/v1/campaigns/{campaign_id}", json=changes, headers=boss)


async def test_a_draft_is_edited_and_sends_what_it_says_then(
    gateway: TestClient, boss: dict[str, str], stub: TwilioApiStub
) -> None:
    await contacts(gateway, [("Ann", [("phone", phone(1))])], tags=["spring"])
    await contacts(gateway, [("Bob", [("phone", phone(2))])], tags=["autumn"])
    created = await create(gateway, boss)

    edited = await edit(
        gateway,
        boss,
        created["id"],
        name="Autumn sale",
        filter={"tags_any": ["autumn"]},
        template={"body": "Autumn is here, {{ first_name }}."},
    )
    assert edited.status == 200, await edited.text()
    await act(gateway, boss, created["id"], "start")
    done = await finished(gateway, boss, created["id"])

    assert done["name"] == "Autumn sale"
    assert done["filter"] == {"tags_any": ["autumn"]}
    assert done["channel"] == "sms"  # what the edit did not name is kept
    assert [(m["To"], m["Body"]) for m in stub.messages] == [(phone(2), "Autumn is here, Bob.")]


async def test_an_edit_is_checked_as_a_new_campaign_and_a_bad_one_changes_nothing(
    gateway: TestClient, boss: dict[str, str]
) -> None:
    created = await create(gateway, boss)

    bad_template = await edit(gateway, boss, created["id"], template={"body": "{{ oops"})
    other_channel = await edit(gateway, boss, created["id"], channel="email")
    unknown_field = await edit(gateway, boss, created["id"], colour="red")
    missing = await edit(gateway, boss, created["id"] + 1, name="Nobody")

    assert bad_template.status == 400
    assert (await bad_template.json())["error"] == "template_error"
    assert other_channel.status == 400  # an SMS body is no e-mail template
    assert (await other_channel.json())["error"] == "template_error"
    assert unknown_field.status == 400
    assert missing.status == 404
    assert await campaign(gateway, boss, created["id"]) == created


async def test_a_campaign_that_has_begun_cannot_be_edited(
    gateway: TestClient, boss: dict[str, str]
) -> None:
    created = await create(gateway, boss)
    await act(gateway, boss, created["id"], "start")
    await finished(gateway, boss, created["id"])

    refused = await edit(gateway, boss, created["id"], name="Too late")

    assert refused.status == 409
    assert (await refused.json())["error"] == "not_editable"
    assert (await campaign(gateway, boss, created["id"]))["name"] == "Spring sale"


async def test_a_scheduled_campaign_is_moved_and_without_a_time_is_a_draft_again(
    gateway: TestClient, boss: dict[str, str]
) -> None:
    created = await create(gateway, boss, scheduled_at="2099-01-01T09:00:00+01:00")
    await act(gateway, boss, created["id"], "start")

    moved = await edit(gateway, boss, created["id"], scheduled_at="2099-06-01T09:00:00+02:00")
    unscheduled = await edit(gateway, boss, created["id"], scheduled_at=None)

    assert (await moved.json())["status"] == "scheduled"
    moved_to = datetime.fromisoformat((await moved.json())["scheduled_at"])
    assert moved_to == datetime(2099, 6, 1, 7, 0, tzinfo=UTC)
    assert (await unscheduled.json())["status"] == "draft"
    assert (await unscheduled.json())["scheduled_at"] is None


async def test_a_draft_moves_from_a_filter_to_a_saved_segment(
    gateway: TestClient, boss: dict[str, str]
) -> None:
    saved = await gateway.post(
        "/api/v1/segments", json={"name": "VIPs", "filter": {"vip": True}}, headers=boss
    )
    segment = await saved.json()
    created = await create(gateway, boss)

    to_segment = await (await edit(gateway, boss, created["id"], segment_id=segment["id"])).json()
    to_filter = await (await edit(gateway, boss, created["id"], filter={"tags_any": ["x"]})).json()

    assert (to_segment["segment_id"], to_segment["filter"]) == (segment["id"], {"vip": True})
    assert (to_filter["segment_id"], to_filter["filter"]) == (None, {"tags_any": ["x"]})


class _Counting:
    """`campaigns.counts` as a clock sees it: each count takes `seconds` and is numbered."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.now = 0.0
        self.made = 0

    def clock(self) -> float:
        return self.now

    def count(self, _session: Session, campaign_id: int) -> dict[str, Any]:
        self.now += self.seconds
        self.made += 1
        return {"campaign": campaign_id, "count": self.made}


def test_a_running_campaign_is_counted_at_most_once_per_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counting = _Counting(seconds=0.01)
    monkeypatch.setattr("gateway.campaigns.campaigns.counts", counting.count)
    counts = RunningCounts(ttl=2.0, clock=counting.clock)
    session: Any = None
    assert counts.get(session, 7)["count"] == 1
    counting.now += 1.0
    assert counts.get(session, 7)["count"] == 1  # within the ttl: the same figures
    assert counts.get(session, 8)["count"] == 2  # another campaign has its own
    counting.now += 1.5
    assert counts.get(session, 7)["count"] == 3


def test_an_audience_that_is_slow_to_count_is_counted_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A count of 0.5 s may take 5% of a core at most: one every 10 s, not every 2 s.
    counting = _Counting(seconds=0.5)
    monkeypatch.setattr("gateway.campaigns.campaigns.counts", counting.count)
    counts = RunningCounts(ttl=2.0, share=0.05, clock=counting.clock)
    session: Any = None
    assert counts.get(session, 7)["count"] == 1
    counting.now += 5.0
    assert counts.get(session, 7)["count"] == 1
    counting.now += 5.0
    assert counts.get(session, 7)["count"] == 2
