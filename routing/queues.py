"""Queues: what a queue asks of its agents, how it picks one, and when it is open.

Pure data and rules; the configuration is stored as JSON (`timeline.models.RoutingQueue`) and
arrives from the API or the routing settings file, always through `QueueConfig.parse`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_QUEUE = "default"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_AUTO_REPLY = (
    "Thank you for your message. We are closed now; we will answer as soon as we open again "
    "(ticket #{ticket})."
)
# How far ahead the next opening is looked for: a year of holidays is the most there can be.
_OPENING_HORIZON_DAYS = 370


class Strategy(enum.StrEnum):
    LONGEST_IDLE = "longest_idle"
    LEAST_OCCUPIED = "least_occupied"
    ROUND_ROBIN = "round_robin"


class AfterHours(enum.StrEnum):
    """What a closed queue does with a contact that enters it. In every case the ticket waits
    and is offered when the queue opens, the longest waiting first."""

    QUEUE = "queue"  # just wait
    # A call: the PBX plays its closed message or takes the voicemail, and the missed call
    # leaves a callback ticket (gateway/calls.py) that waits here.
    VOICEMAIL = "voicemail"
    CALLBACK = "callback"
    # Answer once per ticket with `auto_reply_text`, through the outbox.
    AUTO_REPLY = "auto_reply"


class InvalidQueue(ValueError):
    """A queue configuration that cannot be used, with a sentence saying why."""


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """One queue. `offer_timeout_seconds` 0 assigns without asking (the foundation's policy,
    kept for the implicit `default` queue); above 0 each agent is offered the ticket first."""

    name: str
    channels: tuple[str, ...] = ()  # empty: any channel
    skills: Mapping[str, int] = field(default_factory=dict)  # skill -> minimum level
    priority: int = 0
    sla_seconds: int = 20
    sla_percent: int = 80
    timezone: str = "UTC"
    hours: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # empty: 24/7
    holidays: tuple[str, ...] = ()  # ISO dates, in the queue's time zone
    after_hours: AfterHours = AfterHours.QUEUE
    auto_reply_text: str = DEFAULT_AUTO_REPLY  # `{ticket}` is the ticket number
    strategy: Strategy = Strategy.LEAST_OCCUPIED
    sticky_seconds: int = 0
    fallback_queue: str | None = None
    max_wait_seconds: int | None = None
    offer_timeout_seconds: int = 0
    misses_before_away: int = 3
    after_call_work_seconds: int = 30
    # Priority ageing: every this many seconds of waiting count as one more priority level.
    ageing_seconds: int = 60

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def local_day(self, now: datetime) -> date:
        return now.astimezone(self.zone).date()

    def is_open(self, now: datetime) -> bool:
        """Within the weekly hours of the queue's own time zone, and not a holiday."""
        if not self.hours and not self.holidays:
            return True
        local = now.astimezone(self.zone)
        if local.date().isoformat() in self.holidays:
            return False
        if not self.hours:
            return True
        clock = local.time()
        return any(
            time.fromisoformat(start) <= clock < _end(end)
            for start, end in self.hours.get(WEEKDAYS[local.weekday()], ())
        )

    def next_opening(self, now: datetime) -> datetime | None:
        """When a queue closed at `now` opens next (UTC); None if it never does. Openings are
        the starts of the weekly spans, or midnight after a holiday for a queue open all week."""
        local = now.astimezone(self.zone)
        for offset in range(_OPENING_HORIZON_DAYS):
            day = local.date() + timedelta(days=offset)
            spans = self.hours.get(WEEKDAYS[day.weekday()], ()) if self.hours else (("00:00", ""),)
            for start, _ in sorted(spans):
                opening = datetime.combine(day, time.fromisoformat(start), self.zone)
                if opening > now and self.is_open(opening):
                    return opening.astimezone(UTC)
        return None

    def takes(self, channel: str) -> bool:
        return not self.channels or channel in self.channels

    def offers(self) -> bool:
        return self.offer_timeout_seconds > 0

    def offer_timeout(self) -> timedelta:
        return timedelta(seconds=self.offer_timeout_seconds)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"] = list(self.channels)
        data["hours"] = {day: [list(span) for span in spans] for day, spans in self.hours.items()}
        data["holidays"] = list(self.holidays)
        return data

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> QueueConfig:
        """A configuration from JSON/TOML, checked field by field."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InvalidQueue(f"Unknown queue fields: {', '.join(sorted(unknown))}.")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            raise InvalidQueue("A queue needs a 'name' of 1 to 64 characters.")
        try:
            config = cls(
                name=name.strip(),
                channels=tuple(_strings(data.get("channels", []), "channels")),
                skills={str(k): _int(v, "skills") for k, v in dict(data.get("skills", {})).items()},
                priority=_int(data.get("priority", 0), "priority"),
                sla_seconds=_int(data.get("sla_seconds", 20), "sla_seconds", 1),
                sla_percent=_int(data.get("sla_percent", 80), "sla_percent", 0),
                timezone=str(data.get("timezone", "UTC")),
                hours=_hours(data.get("hours", {})),
                holidays=tuple(_dates(data.get("holidays", []))),
                after_hours=AfterHours(data.get("after_hours", AfterHours.QUEUE)),
                auto_reply_text=_text(data.get("auto_reply_text", DEFAULT_AUTO_REPLY)),
                strategy=Strategy(data.get("strategy", Strategy.LEAST_OCCUPIED)),
                sticky_seconds=_int(data.get("sticky_seconds", 0), "sticky_seconds", 0),
                fallback_queue=data.get("fallback_queue") or None,
                max_wait_seconds=_optional_int(data.get("max_wait_seconds"), "max_wait_seconds"),
                offer_timeout_seconds=_int(
                    data.get("offer_timeout_seconds", 0), "offer_timeout_seconds", 0
                ),
                misses_before_away=_int(data.get("misses_before_away", 3), "misses_before_away", 1),
                after_call_work_seconds=_int(
                    data.get("after_call_work_seconds", 30), "after_call_work_seconds", 0
                ),
                ageing_seconds=_int(data.get("ageing_seconds", 60), "ageing_seconds", 1),
            )
            _ = config.zone
        except ZoneInfoNotFoundError:
            raise InvalidQueue(f"Unknown time zone {data.get('timezone')!r}.") from None
        except (TypeError, ValueError) as error:
            raise InvalidQueue(str(error)) from None
        if config.fallback_queue == config.name:
            raise InvalidQueue("A queue cannot overflow into itself.")
        return config


def implicit_queue(name: str) -> QueueConfig:
    """A queue nobody configured (the foundation's `default`, a PBX's queue name): every
    channel, no skills, always open, assigned directly to the least occupied agent."""
    return QueueConfig(name=name)


def _end(text: str) -> time:
    """`24:00` closes at midnight."""
    return time.max if text in ("24:00", "24:00:00") else time.fromisoformat(text)


def _hours(raw: object) -> dict[str, tuple[tuple[str, str], ...]]:
    if not isinstance(raw, Mapping):
        raise InvalidQueue('\'hours\' maps weekdays (mon…sun) to [["09:00", "17:00"], …].')
    hours: dict[str, tuple[tuple[str, str], ...]] = {}
    for day, spans in raw.items():
        if day not in WEEKDAYS or not isinstance(spans, list):
            raise InvalidQueue(f"'hours' has a bad weekday or spans: {day!r}.")
        parsed = []
        for span in spans:
            if not isinstance(span, list | tuple) or len(span) != 2:
                raise InvalidQueue(f"Opening hours of {day} are [start, end] pairs.")
            start, end = str(span[0]), str(span[1])
            if time.fromisoformat(start) >= _end(end):
                raise InvalidQueue(f"Opening hours {start}-{end} of {day} end before they start.")
            parsed.append((start, end))
        hours[day] = tuple(parsed)
    return hours


def _text(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 2000:
        raise InvalidQueue("'auto_reply_text' must be a text of 1 to 2000 characters.")
    return raw


def _dates(raw: object) -> list[str]:
    return [date.fromisoformat(day).isoformat() for day in _strings(raw, "holidays")]


def _strings(raw: object, name: str) -> list[str]:
    if not isinstance(raw, list | tuple) or not all(isinstance(item, str) for item in raw):
        raise InvalidQueue(f"{name!r} must be a list of strings.")
    return list(raw)


def _int(raw: object, name: str, minimum: int | None = None) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise InvalidQueue(f"{name!r} must be a whole number.")
    if minimum is not None and raw < minimum:
        raise InvalidQueue(f"{name!r} must be at least {minimum}.")
    return raw


def _optional_int(raw: object, name: str) -> int | None:
    return None if raw is None else _int(raw, name, 1)
