"""Politeness rules of campaigns: quiet hours in the recipient's own time, frequency caps.

Pure functions; the campaign dispatcher (`gateway.campaigns`) applies them at send time, and
paces each sender with a token bucket (`gateway.outbox.RateLimit`).

The recipient's time zone: the contact's `timezone` attribute, else what `phonenumbers` knows
of the number, else the company's. A number whose country spans several zones (a US mobile
without a geographic prefix) gets them all, and quiet hours hold in every one of them: better
a message an hour late than one at 5 in the morning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as number_zones

# phonenumbers' answer when it knows nothing of the number's zone.
_UNKNOWN_ZONE = "Etc/Unknown"


class InvalidPacing(ValueError):
    """Pacing, quiet hours or a frequency cap that cannot be used, with a sentence why."""


@dataclass(frozen=True, slots=True)
class QuietHours:
    """Local times between which nothing is sent; `start` after `end` spans midnight."""

    start: time
    end: time

    @classmethod
    def parse(cls, data: object) -> QuietHours:
        if not isinstance(data, Mapping) or set(data) != {"start", "end"}:
            raise InvalidPacing('Quiet hours are {"start": "21:00", "end": "08:00"}.')
        return cls(_clock(data["start"]), _clock(data["end"]))

    def covers(self, local: time) -> bool:
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def to_json(self) -> dict[str, str]:
        return {"start": self.start.strftime("%H:%M"), "end": self.end.strftime("%H:%M")}


def _clock(raw: object) -> time:
    try:
        hours, minutes = str(raw).split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise InvalidPacing(f"{raw!r} is not a time of day like '21:00'.") from None


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """At most `max` campaign messages to one contact within `days`."""

    max: int
    days: float

    @classmethod
    def parse(cls, data: object) -> FrequencyCap:
        if not isinstance(data, Mapping) or set(data) != {"max", "days"}:
            raise InvalidPacing('A frequency cap is {"max": n, "days": d}.')
        limit, days = data["max"], data["days"]
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidPacing("The frequency cap's 'max' must be a whole number from 1.")
        if not isinstance(days, int | float) or isinstance(days, bool) or days <= 0:
            raise InvalidPacing("The frequency cap's 'days' must be a positive number.")
        return cls(limit, float(days))

    @property
    def window(self) -> timedelta:
        return timedelta(days=self.days)

    def allows(self, sent_in_window: int) -> bool:
        return sent_in_window < self.max

    def to_json(self) -> dict[str, Any]:
        return {"max": self.max, "days": self.days}


def parse_pacing(data: object) -> float | None:
    """`{"per_second": n}` → n messages per second per sender; None: as fast as the outbox."""
    if data is None:
        return None
    rate = data.get("per_second") if isinstance(data, Mapping) else None
    if not isinstance(rate, int | float) or isinstance(rate, bool) or rate <= 0:
        raise InvalidPacing('Pacing is {"per_second": n} with n above 0, or null.')
    return float(rate)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidPacing(f"Unknown time zone {name!r}.") from None


def recipient_zones(
    attribute: object, phone: str | None, company: ZoneInfo
) -> tuple[ZoneInfo, ...]:
    """The zones the recipient may be in (see the module's rule)."""
    if isinstance(attribute, str) and attribute.strip():
        try:
            return (ZoneInfo(attribute.strip()),)
        except (ZoneInfoNotFoundError, ValueError):
            pass  # a typo in a CRM field: fall back to what the number says
    if phone:
        names = _number_zone_names(phone)
        if names:
            return tuple(ZoneInfo(n) for n in names)
    return (company,)


def _number_zone_names(phone: str) -> tuple[str, ...]:
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return ()
    names = number_zones.time_zones_for_number(number)
    return tuple(sorted(n for n in names if n != _UNKNOWN_ZONE))


def quiet_now(now: datetime, zones: Sequence[ZoneInfo], quiet: QuietHours) -> bool:
    return any(quiet.covers(now.astimezone(z).time()) for z in zones)


def next_allowed(now: datetime, zones: Sequence[ZoneInfo], quiet: QuietHours) -> datetime:
    """The first moment from `now` outside quiet hours in every zone (`now` if it is).

    Zones so far apart that no such moment exists (quiet hours around the clock together)
    get the end of the first zone's quiet hours: a rule that cannot be met must not hold a
    message for ever.
    """
    moment = now
    for _ in range(len(zones) + 1):
        if not quiet_now(moment, zones, quiet):
            return moment
        moment = min(
            _next_local(moment, z, quiet.end)
            for z in zones
            if quiet.covers(moment.astimezone(z).time())
        )
    return _next_local(now, zones[0], quiet.end)


def _next_local(now: datetime, where: ZoneInfo, at: time) -> datetime:
    """The next `at` o'clock in `where` after `now`, as an aware datetime in `now`'s zone."""
    local = now.astimezone(where)
    moment = datetime.combine(local.date(), at, tzinfo=where)
    if moment <= local:
        moment = datetime.combine(local.date() + timedelta(days=1), at, tzinfo=where)
    return moment.astimezone(now.tzinfo)
