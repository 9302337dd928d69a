"""Agent capacity: how many open tickets an agent may hold, in total and per channel."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Capacity:
    """`total` caps all open tickets; `channels` caps each named channel on its own.

    With per-channel limits and no explicit total, the total is their sum; a channel without a
    limit of its own is capped by the total only.
    """

    total: int | None = None
    channels: Mapping[str, int] = field(default_factory=dict)

    def is_full(self, load: Mapping[str, int]) -> bool:
        """Whether the total is reached, whatever the channel."""
        total = self.total if self.total is not None else sum(self.channels.values())
        return sum(load.values()) >= total

    def allows(self, load: Mapping[str, int], channel: str) -> bool:
        """Whether one more ticket on `channel` fits beside the current `load` per channel."""
        if self.is_full(load):
            return False
        limit = self.channels.get(channel)
        return limit is None or load.get(channel, 0) + 1 <= limit

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "channels": dict(self.channels)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Capacity:
        """A stored capacity; an agent stored without one gets the default."""
        if not data or (data.get("total") is None and not data.get("channels")):
            return DEFAULT_CAPACITY
        return cls(total=data.get("total"), channels=dict(data.get("channels") or {}))

    @classmethod
    def parse(cls, text: str) -> Capacity:
        """`3` (total) or `sms=3,voice=1,email=5` (per channel), as `agent add --capacity`."""
        text = text.strip()
        if text.isdigit():
            return cls(total=int(text))
        channels: dict[str, int] = {}
        for part in text.split(","):
            name, sep, number = part.partition("=")
            if not sep or not name.strip() or not number.strip().isdigit():
                raise ValueError(f"capacity must be N or channel=N,…; got {text!r}")
            channels[name.strip().lower()] = int(number)
        return cls(channels=channels)


DEFAULT_CAPACITY = Capacity(total=3)
