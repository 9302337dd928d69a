"""Quiet hours in the recipient's own time zone, and the frequency cap."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from routing.pacing import (
    FrequencyCap,
    InvalidPacing,
    QuietHours,
    next_allowed,
    parse_pacing,
    quiet_now,
    recipient_zones,
)

BERLIN = ZoneInfo("Europe/Berlin")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
COMPANY = ZoneInfo("Europe/London")
NIGHT = QuietHours(time(21, 0), time(8, 0))
# 06:30 UTC on a winter day: 07:30 in Berlin (still night), 22:30 the evening before in LA.
INSTANT = datetime(2026, 1, 20, 6, 30, tzinfo=UTC)


def test_the_zone_comes_from_the_attribute_then_the_number_then_the_company() -> None:
    assert recipient_zones("Asia/Tokyo", "+4930555716000", COMPANY) == (ZoneInfo("Asia/Tokyo"),)
    assert recipient_zones(None, "+4930555716000", COMPANY) == (BERLIN,)
    assert recipient_zones("", "+12135550123", COMPANY) == (LOS_ANGELES,)
    assert recipient_zones("Not/AZone", "+4930555716000", COMPANY) == (BERLIN,)
    assert recipient_zones(None, None, COMPANY) == (COMPANY,)


def test_a_contact_in_los_angeles_and_one_in_berlin_at_the_same_instant() -> None:
    berlin = recipient_zones(None, "+4930555716000", COMPANY)
    los_angeles = recipient_zones(None, "+12135550123", COMPANY)
    late_evening = QuietHours(time(22, 0), time(23, 0))

    assert quiet_now(INSTANT, berlin, NIGHT)
    assert quiet_now(INSTANT, los_angeles, NIGHT)
    assert next_allowed(INSTANT, berlin, NIGHT) == datetime(2026, 1, 20, 7, 0, tzinfo=UTC)
    assert next_allowed(INSTANT, los_angeles, NIGHT) == datetime(2026, 1, 20, 16, 0, tzinfo=UTC)
    assert not quiet_now(INSTANT, berlin, late_evening)
    assert quiet_now(INSTANT, los_angeles, late_evening)


def test_quiet_hours_within_one_day_and_across_midnight() -> None:
    lunch = QuietHours(time(12, 0), time(13, 0))

    assert lunch.covers(time(12, 30)) and not lunch.covers(time(13, 0))
    assert NIGHT.covers(time(23, 59)) and NIGHT.covers(time(0, 0)) and NIGHT.covers(time(7, 59))
    assert not NIGHT.covers(time(8, 0)) and not NIGHT.covers(time(20, 59))


def test_outside_quiet_hours_now_is_allowed() -> None:
    noon = datetime(2026, 1, 20, 11, 0, tzinfo=UTC)

    assert next_allowed(noon, (BERLIN,), NIGHT) == noon


def test_a_number_of_several_zones_waits_for_the_last_night_to_end() -> None:
    # 14:00 UTC: 09:00 in New York, 06:00 in Los Angeles.
    morning = datetime(2026, 1, 20, 14, 0, tzinfo=UTC)
    zones = (ZoneInfo("America/New_York"), LOS_ANGELES)

    assert quiet_now(morning, zones, NIGHT)
    assert next_allowed(morning, zones, NIGHT) == datetime(2026, 1, 20, 16, 0, tzinfo=UTC)


def test_daylight_saving_moves_the_morning() -> None:
    # The night of the change to summer time in Europe (29 March 2026): 08:00 is 06:00 UTC.
    night = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)

    assert next_allowed(night, (BERLIN,), NIGHT) == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)


def test_the_frequency_cap() -> None:
    cap = FrequencyCap.parse({"max": 2, "days": 7})

    assert cap.allows(0) and cap.allows(1) and not cap.allows(2)
    assert cap.window.days == 7


@pytest.mark.parametrize(
    "raw",
    [{"max": 0, "days": 7}, {"max": 1}, {"max": 1.5, "days": 1}, {"max": 1, "days": -1}],
)
def test_a_bad_frequency_cap_says_why(raw: object) -> None:
    with pytest.raises(InvalidPacing):
        FrequencyCap.parse(raw)


@pytest.mark.parametrize("raw", [{"start": "25:00", "end": "08:00"}, {"start": "21:00"}, "21-8"])
def test_bad_quiet_hours_say_why(raw: object) -> None:
    with pytest.raises(InvalidPacing):
        QuietHours.parse(raw)


def test_pacing() -> None:
    assert parse_pacing(None) is None
    assert parse_pacing({"per_second": 5}) == 5.0
    with pytest.raises(InvalidPacing):
        parse_pacing({"per_second": 0})
