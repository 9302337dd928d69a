"""Queues' business hours (their own time zone, holidays) and the routing rules that pick a
queue: pure functions, checked against a calendar worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from routing.queues import InvalidQueue, QueueConfig
from routing.rules import Facts, InvalidRule, Rule, choose_queue

BERLIN_OFFICE = QueueConfig.parse(
    {
        "name": "berlin",
        "timezone": "Europe/Berlin",
        "hours": {day: [["09:00", "17:00"]] for day in ("mon", "tue", "wed", "thu", "fri")},
        "holidays": ["2026-12-25"],
    }
)
NEW_YORK_LATE = QueueConfig.parse(
    {
        "name": "new-york",
        "timezone": "America/New_York",
        "hours": {"mon": [["08:00", "12:00"], ["13:00", "24:00"]]},
    }
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("queue", "moment", "is_open"),
    [
        # Winter: Berlin is UTC+1. Wed 25 Nov 2026, 07:59 UTC = 08:59 local.
        pytest.param(BERLIN_OFFICE, "2026-11-25T07:59:00", False, id="berlin-before-nine"),
        pytest.param(BERLIN_OFFICE, "2026-11-25T08:00:00", True, id="berlin-nine-sharp"),
        pytest.param(BERLIN_OFFICE, "2026-11-25T15:59:59", True, id="berlin-last-second"),
        pytest.param(BERLIN_OFFICE, "2026-11-25T16:00:00", False, id="berlin-five-closes"),
        # Summer: UTC+2. Wed 1 Jul 2026, 07:30 UTC = 09:30 local.
        pytest.param(BERLIN_OFFICE, "2026-07-01T07:30:00", True, id="berlin-summer-time"),
        pytest.param(BERLIN_OFFICE, "2026-11-28T10:00:00", False, id="berlin-saturday"),
        # Fri 25 Dec 2026 is a holiday, though a weekday.
        pytest.param(BERLIN_OFFICE, "2026-12-25T10:00:00", False, id="berlin-holiday"),
        # The holiday is a local date: 23:30 UTC on the 24th is already the 25th in Berlin.
        pytest.param(BERLIN_OFFICE, "2026-12-24T23:30:00", False, id="berlin-holiday-local"),
        # New York, UTC-5 in winter: Mon 30 Nov 2026 12:30 local = 17:30 UTC (lunch break).
        pytest.param(NEW_YORK_LATE, "2026-11-30T17:30:00", False, id="ny-lunch-break"),
        pytest.param(NEW_YORK_LATE, "2026-11-30T18:00:00", True, id="ny-afternoon"),
        # 23:59 local Monday = 04:59 UTC Tuesday: still Monday's hours, "24:00" closes.
        pytest.param(NEW_YORK_LATE, "2026-12-01T04:59:00", True, id="ny-until-midnight"),
        pytest.param(NEW_YORK_LATE, "2026-12-01T05:00:00", False, id="ny-tuesday-closed"),
    ],
)
def test_business_hours_are_the_queues_own_local_time(
    queue: QueueConfig, moment: str, is_open: bool
) -> None:
    assert queue.is_open(utc(moment)) is is_open


def test_a_queue_without_hours_is_always_open() -> None:
    assert QueueConfig.parse({"name": "always"}).is_open(utc("2026-12-25T03:00:00"))


CLOSED_ON_HOLIDAYS = QueueConfig.parse(
    {"name": "24-7", "timezone": "Europe/Berlin", "holidays": ["2026-12-25", "2026-12-26"]}
)
NEVER_OPEN = QueueConfig.parse({"name": "never", "hours": {"mon": []}})


@pytest.mark.parametrize(
    ("queue", "moment", "opening"),
    [
        # Wed 25 Nov 2026, 08:59 Berlin (UTC+1): nine o'clock local the same morning.
        pytest.param(BERLIN_OFFICE, "2026-11-25T07:59:00", "2026-11-25T08:00:00", id="morning"),
        # Friday 17:00 local: Monday nine o'clock.
        pytest.param(BERLIN_OFFICE, "2026-11-27T16:00:00", "2026-11-30T08:00:00", id="weekend"),
        # Thu 24 Dec after closing: Fri 25 is a holiday, the weekend follows: Mon 28.
        pytest.param(BERLIN_OFFICE, "2026-12-24T17:00:00", "2026-12-28T08:00:00", id="holiday"),
        # Sat 28 Mar 2026: Berlin changes to summer time (UTC+2) on Sunday; Monday nine o'clock
        # is 07:00 UTC.
        pytest.param(BERLIN_OFFICE, "2026-03-28T10:00:00", "2026-03-30T07:00:00", id="dst"),
        # New York's lunch break: the afternoon span, 13:00 local = 18:00 UTC.
        pytest.param(NEW_YORK_LATE, "2026-11-30T17:30:00", "2026-11-30T18:00:00", id="lunch"),
        # Open all week but on holidays: midnight local after the last one.
        pytest.param(
            CLOSED_ON_HOLIDAYS, "2026-12-25T12:00:00", "2026-12-26T23:00:00", id="24-7-holidays"
        ),
    ],
)
def test_a_closed_queue_knows_when_it_opens_next(
    queue: QueueConfig, moment: str, opening: str
) -> None:
    assert not queue.is_open(utc(moment))
    assert queue.next_opening(utc(moment)) == utc(opening)


def test_a_queue_without_opening_hours_on_any_day_never_opens() -> None:
    assert NEVER_OPEN.next_opening(utc("2026-11-30T10:00:00")) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": ""}, "name"),
        ({"name": "q", "timezone": "Mars/Olympus"}, "time zone"),
        ({"name": "q", "strategy": "random"}, "random"),
        ({"name": "q", "hours": {"monday": [["09:00", "17:00"]]}}, "weekday"),
        ({"name": "q", "hours": {"mon": [["17:00", "09:00"]]}}, "end before"),
        ({"name": "q", "fallback_queue": "q"}, "itself"),
        ({"name": "q", "offer_timeout_seconds": -1}, "at least 0"),
        ({"name": "q", "colour": "red"}, "Unknown queue fields"),
        ({"name": "q", "after_hours": "auto_reply", "auto_reply_text": " "}, "auto_reply_text"),
    ],
)
def test_unusable_queue_configurations_are_refused(data: dict, message: str) -> None:
    with pytest.raises(InvalidQueue, match=message):
        QueueConfig.parse(data)


RULES = [
    Rule.parse({"name": "vip", "queue": "vip", "when": {"tags_any": ["VIP"]}}),
    Rule.parse(
        {"queue": "billing", "when": {"channel": ["email", "sms"], "keywords": ["invoice"]}}
    ),
    Rule.parse({"queue": "german", "when": {"language": "de"}}),
    Rule.parse({"queue": "a-class", "when": {"attributes": {"abc_class": ["A", "B"]}}}),
    Rule.parse({"queue": "hotline", "when": {"recipient": "+4930123456"}}),
    Rule.parse({"queue": "key-accounts", "when": {"tags_all": ["Gold", "partner"]}}),
    Rule.parse({"queue": "outage", "when": {"keywords": ["Outage", "down"]}}),
    Rule.parse(
        {
            "queue": "voicemail",
            "when": {"channel": "voice", "business_hours": "closed", "hours_of": "berlin"},
        }
    ),
]
MONDAY_NOON = utc("2026-11-30T11:00:00")
SUNDAY = utc("2026-11-29T11:00:00")


@pytest.mark.parametrize(
    ("facts", "now", "queue"),
    [
        pytest.param(Facts("sms", tags=frozenset({"vip"})), MONDAY_NOON, "vip", id="tag-any-case"),
        pytest.param(
            Facts("email", subject="Your INVOICE 4711", tags=frozenset({"vip"})),
            MONDAY_NOON,
            "vip",
            id="first-rule-wins",
        ),
        pytest.param(Facts("email", body="about my invoice"), MONDAY_NOON, "billing", id="kw"),
        pytest.param(Facts("webchat", body="invoice"), MONDAY_NOON, "default", id="kw-channel"),
        pytest.param(Facts("sms", attributes={"language": "DE"}), MONDAY_NOON, "german", id="de"),
        pytest.param(Facts("sms", attributes={"abc_class": "B"}), MONDAY_NOON, "a-class", id="abc"),
        pytest.param(Facts("voice", recipient="+4930123456"), SUNDAY, "hotline", id="recipient"),
        pytest.param(
            Facts("sms", tags=frozenset({"PARTNER", "gold"})), SUNDAY, "key-accounts", id="tags-all"
        ),
        pytest.param(Facts("sms", tags=frozenset({"gold"})), SUNDAY, "default", id="tags-not-all"),
        pytest.param(Facts("sms", subject="Site DOWN?"), SUNDAY, "outage", id="second-keyword"),
        pytest.param(Facts("voice"), SUNDAY, "voicemail", id="closed-goes-to-voicemail"),
        pytest.param(Facts("voice"), MONDAY_NOON, "default", id="open-no-rule"),
    ],
)
def test_the_first_rule_that_holds_picks_the_queue(facts: Facts, now: datetime, queue: str) -> None:
    assert choose_queue(RULES, facts, {"berlin": BERLIN_OFFICE}, now) == queue


def test_without_a_matching_rule_the_events_own_queue_stays() -> None:
    assert choose_queue(RULES, Facts("email"), {}, MONDAY_NOON, fallback="sales") == "sales"


@pytest.mark.parametrize(
    "data",
    [{"when": {}}, {"queue": "q", "when": {"colour": "red"}},
     {"queue": "q", "when": {"business_hours": "sometimes"}}],
)  # fmt: skip
def test_unusable_rules_are_refused(data: dict) -> None:
    with pytest.raises(InvalidRule):
        Rule.parse(data)
