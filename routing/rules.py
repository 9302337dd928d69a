"""Routing rules: data, evaluated in order, that pick the queue a new ticket waits in.

A rule is `{"name", "queue", "when": {...}}`; every condition it names must hold, the first
rule that holds wins, and nothing matching leaves the event's own queue (an e-mail mailbox
has one) or `default`. Conditions:

- `channel`, `recipient`, `language`: one value or a list (case does not matter)
- `tags_any`, `tags_all`: the contact's tags (VIP, …)
- `attributes`: `{"abc_class": "A"}` or `{"abc_class": ["A", "B"]}` on the contact
- `keywords`: any of these words in the subject or body
- `business_hours`: `"open"` or `"closed"`, of the rule's queue or of `"hours_of"`
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from routing.queues import DEFAULT_QUEUE, QueueConfig, implicit_queue

CONDITIONS = frozenset(
    {
        "channel",
        "recipient",
        "language",
        "tags_any",
        "tags_all",
        "attributes",
        "keywords",
        "business_hours",
        "hours_of",
    }
)


class InvalidRule(ValueError):
    """A rule that cannot be used, with a sentence saying why."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What rules may look at: the inbound and its contact."""

    channel: str
    recipient: str = ""
    subject: str = ""
    body: str = ""
    tags: frozenset[str] = frozenset()
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def language(self) -> str:
        return str(self.attributes.get("language", "")).lower()


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    queue: str
    when: Mapping[str, Any]
    # The conditions on the facts as checks of their lower-cased form, worked out once: a
    # centre's hundreds of rules are tried in turn for every new ticket.
    holds: Callable[[_Lowered], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks = [_CHECKS[name](wanted) for name, wanted in self.when.items() if name in _CHECKS]
        object.__setattr__(self, "holds", _all(checks))

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Rule:
        queue, when = data.get("queue"), data.get("when", {})
        if not isinstance(queue, str) or not queue.strip():
            raise InvalidRule("A rule needs the 'queue' it sends to.")
        if not isinstance(when, Mapping):
            raise InvalidRule("'when' must be an object of conditions.")
        unknown = set(when) - CONDITIONS
        if unknown:
            raise InvalidRule(f"Unknown rule conditions: {', '.join(sorted(unknown))}.")
        if when.get("business_hours") not in (None, "open", "closed"):
            raise InvalidRule("'business_hours' is 'open' or 'closed'.")
        if not isinstance(when.get("attributes", {}), Mapping):
            raise InvalidRule("'attributes' must be an object.")
        return cls(str(data.get("name") or queue), queue.strip(), dict(when))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "queue": self.queue, "when": dict(self.when)}


@dataclass(frozen=True, slots=True)
class _Lowered:
    """The facts as the rules compare them (case does not matter), lower-cased once per ticket."""

    channel: str
    recipient: str
    language: str
    text: str  # subject and body
    tags: frozenset[str]
    attributes: Mapping[str, Any]

    @classmethod
    def of(cls, facts: Facts) -> _Lowered:
        return cls(
            facts.channel.lower(),
            facts.recipient.lower(),
            facts.language,
            f"{facts.subject}\n{facts.body}".lower(),
            frozenset(t.lower() for t in facts.tags),
            facts.attributes,
        )


def choose_queue(
    rules: Sequence[Rule],
    facts: Facts,
    queues: Mapping[str, QueueConfig],
    now: datetime,
    fallback: str | None = None,
) -> str:
    """The queue of the first rule whose conditions all hold."""
    lowered = _Lowered.of(facts)
    for rule in rules:
        if matches(rule, lowered, queues, now):
            return rule.queue
    return fallback or DEFAULT_QUEUE


def matches(rule: Rule, facts: _Lowered, queues: Mapping[str, QueueConfig], now: datetime) -> bool:
    if not rule.holds(facts):
        return False
    hours = rule.when.get("business_hours")
    if hours is not None:
        owner = str(rule.when.get("hours_of") or rule.queue)
        is_open = queues.get(owner, implicit_queue(owner)).is_open(now)
        if is_open != (hours == "open"):
            return False
    return True


def _lowered(values: object) -> frozenset[str]:
    return frozenset(
        str(v).lower() for v in (values if isinstance(values, list | tuple) else [values])
    )


def _all(checks: Sequence[Callable[[_Lowered], bool]]) -> Callable[[_Lowered], bool]:
    if len(checks) == 1:
        return checks[0]
    return lambda facts: all(check(facts) for check in checks)


def _one_of(field_name: str) -> Callable[[object], Callable[[_Lowered], bool]]:
    """A condition that the fact `field_name` is one of the wanted values."""

    def compile_(wanted: object) -> Callable[[_Lowered], bool]:
        values = _lowered(wanted)
        return lambda facts: getattr(facts, field_name) in values

    return compile_


def _tags_any(wanted: object) -> Callable[[_Lowered], bool]:
    tags = _lowered(wanted)
    return lambda facts: not tags.isdisjoint(facts.tags)


def _tags_all(wanted: object) -> Callable[[_Lowered], bool]:
    tags = _lowered(wanted)
    return lambda facts: tags <= facts.tags


def _attributes(wanted: Mapping[str, Any]) -> Callable[[_Lowered], bool]:
    values = [(key, _lowered(value)) for key, value in wanted.items()]
    return lambda facts: all(
        key in facts.attributes and str(facts.attributes[key]).lower() in allowed
        for key, allowed in values
    )


def _keywords(wanted: object) -> Callable[[_Lowered], bool]:
    words = tuple(_lowered(wanted))
    if len(words) == 1:
        (word,) = words
        return lambda facts: word in facts.text
    return lambda facts: any(word in facts.text for word in words)


# Each condition, compiled from what a rule wants to a check of the lower-cased facts.
_CHECKS: dict[str, Callable[[Any], Callable[[_Lowered], bool]]] = {
    "channel": _one_of("channel"),
    "recipient": _one_of("recipient"),
    "language": _one_of("language"),
    "tags_any": _tags_any,
    "tags_all": _tags_all,
    "attributes": _attributes,
    "keywords": _keywords,
}
